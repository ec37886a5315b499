package chaos

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"net/http"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	membership "github.com/cring-dev/cring/internal/cluster"
	"github.com/cring-dev/cring/internal/tombstone"
)

// copies is what every node holds: path → node index → bytes.
type copies map[string]map[int][]byte

// snapshot reads every file of the user on every node, directly (not
// through the fronts), except cring's own .cring/ files.
func (c *cluster) snapshot(ctx context.Context, a *api) (copies, error) {
	out := copies{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make([]error, len(c.nodes))
	for i, n := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			files := map[string][]byte{}
			errs[i] = walk(ctx, a, n.httpURL, "", files)
			mu.Lock()
			defer mu.Unlock()
			for p, b := range files {
				if out[p] == nil {
					out[p] = map[int][]byte{}
				}
				out[p][i] = b
			}
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("%s: %w", c.nodes[i].name, err)
		}
	}
	return out, nil
}

// walk reads dir on one node recursively into files.
func walk(ctx context.Context, a *api, base, dir string, files map[string][]byte) error {
	status, _, body, err := a.do(ctx, http.MethodGet, base, dir, nil)
	if err != nil {
		return fmt.Errorf("list %q: %w", dir, err)
	}
	if status == http.StatusNotFound {
		return nil
	}
	if status != http.StatusOK {
		return fmt.Errorf("list %q: %d %s", dir, status, errMessage(body))
	}
	names, err := listing(body)
	if err != nil {
		return fmt.Errorf("list %q: %w", dir, err)
	}
	for _, name := range names {
		p := path.Join(dir, strings.TrimSuffix(name, "/"))
		if tombstone.Reserved(p) {
			continue
		}
		if strings.HasSuffix(name, "/") {
			if err := walk(ctx, a, base, p, files); err != nil {
				return err
			}
			continue
		}
		status, _, b, err := a.do(ctx, http.MethodGet, base, p, nil)
		switch {
		case err != nil:
			return fmt.Errorf("read %q: %w", p, err)
		case status == http.StatusNotFound:
			continue // deleted since the listing
		case status != http.StatusOK:
			return fmt.Errorf("read %q: %d %s", p, status, errMessage(b))
		}
		files[p] = b
	}
	return nil
}

// placement is each key's replicas, as every proxy computes them.
type placement struct {
	ring *membership.Ring
	user string
	n    int
}

func newPlacement(names []string, replicas int, user string) (*placement, error) {
	nodes := make([]membership.Node, len(names))
	for i, n := range names {
		nodes[i] = membership.Node{Name: n}
	}
	r, err := membership.NewRing(nodes, replicas)
	if err != nil {
		return nil, err
	}
	return &placement{ring: r, user: user, n: r.Replicas()}, nil
}

// replicas are the node indexes that must hold p, sorted.
func (pl *placement) replicas(p string) []int {
	// docs/design.md, invariant 1: charmID + "/" + cleaned path.
	reps := slices.Clone(pl.ring.Preference(pl.user + "/" + tombstone.Clean(p))[:pl.n])
	slices.Sort(reps)
	return reps
}

// misplaced lists every file not on exactly its N replicas with identical
// bytes (a file nowhere is fine), with what is wrong.
func (pl *placement) misplaced(cs copies, names []string) []Finding {
	var out []Finding
	paths := make([]string, 0, len(cs))
	for p := range cs {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		holders := cs[p]
		want := pl.replicas(p)
		var have []int
		for i := range holders {
			have = append(have, i)
		}
		slices.Sort(have)
		var problems []string
		if !slices.Equal(have, want) {
			problems = append(problems, fmt.Sprintf("on %s, want %s", nodeNames(have, names), nodeNames(want, names)))
		}
		if v := versions(holders, names); len(v) > 1 {
			problems = append(problems, "copies differ: "+strings.Join(v, ", "))
		}
		if len(problems) > 0 {
			out = append(out, Finding{Class: NotN, Key: p, Detail: strings.Join(problems, "; ")})
		}
	}
	return out
}

// versions describes the distinct contents among holders ("op 12 on
// node1,node3"), one entry per content.
func versions(holders map[int][]byte, names []string) []string {
	var distinct [][]byte
	on := map[int][]int{}
	for i := range names {
		b, ok := holders[i]
		if !ok {
			continue
		}
		k := slices.IndexFunc(distinct, func(d []byte) bool { return bytes.Equal(d, b) })
		if k < 0 {
			k = len(distinct)
			distinct = append(distinct, b)
		}
		on[k] = append(on[k], i)
	}
	out := make([]string, len(distinct))
	for k, b := range distinct {
		out[k] = fmt.Sprintf("op %d on %s", contentOp(b), nodeNames(on[k], names))
	}
	return out
}

func nodeNames(idx []int, names []string) string {
	if len(idx) == 0 {
		return "no node"
	}
	s := make([]string, len(idx))
	for i, x := range idx {
		s[i] = names[x]
	}
	return strings.Join(s, ",")
}

// converge polls the nodes directly until every file is on exactly its N
// replicas with identical bytes and nowhere else, and stays so for
// o.Settle (a healer that still moves or removes copies afterwards must
// not escape the final reads). Convergence must come within
// o.ConvergeTimeout of healed; the report gets the time it took, and the
// files still misplaced come back as findings.
func (c *cluster) converge(ctx context.Context, a *api, o Options, healed time.Time, rep *Report) ([]Finding, error) {
	names := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		names[i] = n.name
	}
	pl, err := newPlacement(names, o.Replicas, c.user)
	if err != nil {
		return nil, fmt.Errorf("chaos: placement: %w", err)
	}
	o.logf("waiting up to %s for every key to be on exactly its %d replicas, then %s without change", o.ConvergeTimeout, o.Replicas, o.Settle)
	var (
		last    []Finding
		lastErr error
		stable  copies    // the converged state
		since   time.Time // when it was first seen
	)
	perr := poll(ctx, time.Until(healed.Add(o.ConvergeTimeout+o.Settle)), time.Second, func(ctx context.Context) (bool, error) {
		cs, err := c.snapshot(ctx, a)
		if err != nil {
			lastErr, stable = err, nil
			return false, nil
		}
		lastErr = nil
		if last = pl.misplaced(cs, names); len(last) > 0 {
			if stable != nil {
				o.logf("converged state broke after %.1fs: %d files misplaced", time.Since(since).Seconds(), len(last))
			}
			stable = nil
			return false, nil
		}
		if stable == nil || !cs.equal(stable) {
			if stable != nil {
				o.logf("converged state changed after %.1fs", time.Since(since).Seconds())
			}
			stable, since = cs, time.Now()
		}
		return time.Since(since) >= o.Settle, nil
	})
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if stable != nil {
		rep.ConvergeTime = since.Sub(healed)
	} else {
		rep.ConvergeTime = time.Since(healed)
	}
	rep.Converged = perr == nil && rep.ConvergeTime <= o.ConvergeTimeout
	switch {
	case rep.Converged:
		o.logf("converged %.1fs after the faults ended, unchanged for %s", rep.ConvergeTime.Seconds(), o.Settle)
		return nil, nil
	case lastErr != nil:
		return []Finding{{Class: NotN, Key: "(cluster)", Detail: "could not read every node: " + lastErr.Error()}}, nil
	case len(last) == 0:
		return []Finding{{Class: NotN, Key: "(cluster)", Detail: fmt.Sprintf("copies still changing %.0fs after the faults ended", time.Since(healed).Seconds())}}, nil
	}
	o.logf("not converged after %s: %d files misplaced", o.ConvergeTimeout, len(last))
	return last, nil
}

// equal reports whether two snapshots hold the same files on the same
// nodes with the same bytes.
func (cs copies) equal(other copies) bool {
	return maps.EqualFunc(cs, other, func(a, b map[int][]byte) bool { return maps.EqualFunc(a, b, bytes.Equal) })
}
