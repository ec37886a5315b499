package heal

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cring-dev/cring/internal/stall"
	"github.com/cring-dev/cring/internal/tombstone"
)

// sameWriteWindow: copies from one fan-out write land within this of each
// other; copies further apart are compared by content.
const sameWriteWindow = 2 * time.Second

// replicaCopy is what one node holds for a key.
type replicaCopy struct {
	node  int
	size  int64
	mtime time.Time
	sum   string // sha256, when it had to be compared
}

// Result says what a repair did (or, dry, would do).
type Result struct {
	User    string   `json:"user"`
	Path    string   `json:"path"`
	Problem string   `json:"problem,omitempty"`
	Copied  []string `json:"copied,omitempty"`  // nodes given the winning copy
	Removed []string `json:"removed,omitempty"` // nodes whose copy was deleted
	Pending []string `json:"pending,omitempty"` // replicas that could not be reached
	Err     string   `json:"error,omitempty"`
}

// changed reports whether the repair acted (or would).
func (r *Result) changed() bool { return len(r.Copied)+len(r.Removed) > 0 }

// view is everything known about one key across the cluster.
type view struct {
	m          *membership
	user, path string
	replicas   []int
	copies     map[int]replicaCopy
	unknown    map[int]bool // nodes that could not be asked
	tomb       time.Time    // newest tombstone, zero if none
}

// gather asks every healthy node for the key's metadata (via its parent
// directory listing) and the tombstones for it.
func (h *Healer) gather(ctx context.Context, user, p string) *view {
	m := h.mem.Load()
	v := &view{m: m, user: user, path: p, copies: map[int]replicaCopy{}, unknown: map[int]bool{}}
	v.replicas = m.ring.Preference(user + "/" + p)[:m.ring.Replicas()]
	dir, name := path.Split(p)
	dir = strings.TrimSuffix(dir, "/")
	for i, n := range m.nodes {
		if !m.health.Healthy(i) {
			v.unknown[i] = true
			continue
		}
		d, err := h.api.list(ctx, n.URL, user, dir)
		if errors.Is(err, errNotFound) {
			continue
		}
		if err != nil {
			v.unknown[i] = true
			continue
		}
		for _, f := range d.Files {
			if f.Name == name && !f.IsDir {
				v.copies[i] = replicaCopy{node: i, size: f.Size, mtime: f.ModTime}
			}
		}
		if !tombstone.Reserved(p) {
			t, err := h.api.list(ctx, n.URL, user, tombstone.Dir)
			if err != nil && !errors.Is(err, errNotFound) {
				// Its tombstones unread, a copy elsewhere might be one
				// this node knows was deleted: count it unasked, its own
				// copy included, as scans do.
				delete(v.copies, i)
				v.unknown[i] = true
				continue
			}
			if err == nil {
				for _, f := range t.Files {
					if f.Name == tombstone.Name(p) && f.ModTime.After(v.tomb) {
						v.tomb = f.ModTime
					}
				}
			}
		}
	}
	return v
}

// dead reports whether a copy is covered by the key's tombstone.
func (v *view) dead(c replicaCopy) bool { return !v.tomb.IsZero() && !c.mtime.After(v.tomb) }

// healthy is the cheap check used by scans: every replica holds a live copy,
// no other node does, and the copies look like one write.
func (h *Healer) healthy(v *view) bool {
	if len(v.unknown) > 0 {
		return true // can't judge; hints cover down nodes
	}
	isReplica := map[int]bool{}
	for _, i := range v.replicas {
		isReplica[i] = true
	}
	for i, c := range v.copies {
		if !isReplica[i] || v.dead(c) {
			return false
		}
	}
	if len(v.copies) == 0 {
		return true // deleted everywhere
	}
	var lo, hi time.Time
	for k, i := range v.replicas {
		c, ok := v.copies[i]
		if !ok || c.size != v.copies[v.replicas[0]].size {
			return false
		}
		if k == 0 || c.mtime.Before(lo) {
			lo = c.mtime
		}
		if k == 0 || c.mtime.After(hi) {
			hi = c.mtime
		}
	}
	return hi.Sub(lo) <= sameWriteWindow || h.state.isVerified(v.user+"/"+v.path, fingerprint(v))
}

// fingerprint identifies the replicas' current copies (node, size, mtime).
func fingerprint(v *view) uint64 {
	f := fnv.New64a()
	for _, i := range v.replicas {
		c := v.copies[i]
		fmt.Fprintf(f, "%d/%d/%d;", i, c.size, c.mtime.UnixNano())
	}
	return f.Sum64()
}

// RepairKey brings one key to its N replicas with the winning copy, or to
// nowhere when a tombstone covers every copy. Old copies elsewhere are
// removed only once every replica is confirmed.
func (h *Healer) RepairKey(ctx context.Context, user, p string, dry bool) Result {
	p = tombstone.Clean(p)
	v := h.gather(ctx, user, p)
	return h.repair(ctx, v, dry, false)
}

func (h *Healer) repair(ctx context.Context, v *view, dry, deep bool) Result {
	res := Result{User: v.user, Path: v.path}
	isReplica := map[int]bool{}
	for _, i := range v.replicas {
		isReplica[i] = true
		if v.unknown[i] {
			res.Pending = append(res.Pending, v.m.nodes[i].Name)
		}
	}
	var live, dead []replicaCopy
	for _, c := range v.copies {
		if v.dead(c) {
			dead = append(dead, c)
		} else {
			live = append(live, c)
		}
	}
	sortCopies(live)
	sortCopies(dead)

	if len(live) == 0 {
		if len(dead) > 0 {
			res.Problem = "deleted, but copies remain"
		}
		for _, c := range dead {
			h.remove(ctx, v, c.node, dry, &res)
		}
		return res
	}

	if len(v.unknown) >= v.m.w {
		// A delete acknowledged at W may have left its tombstone only on
		// the nodes not asked, and a copy made now would be newer than
		// that tombstone: the file would be back for good.
		res.Err = fmt.Sprintf("%d nodes unreachable, a delete may be known only to them", len(v.unknown))
		return res
	}
	if err := h.hashIfNeeded(ctx, v, live, deep); err != nil {
		res.Err = err.Error()
		return res
	}
	win := winner(live, v.m.w)

	for _, i := range v.replicas {
		if v.unknown[i] {
			continue
		}
		c, ok := v.copies[i]
		if ok && !v.dead(c) && c.size == win.size && (win.sum == "" || c.sum == win.sum) {
			continue
		}
		switch {
		case !ok:
			res.Problem = "missing replica"
		case v.dead(c):
			res.Problem = "deleted, but copies remain"
		default:
			res.Problem = "replicas differ"
		}
		if dry {
			res.Copied = append(res.Copied, v.m.nodes[i].Name)
			continue
		}
		if err := h.copy(ctx, v, win, i); err != nil {
			res.Err = err.Error()
			res.Pending = append(res.Pending, v.m.nodes[i].Name)
			continue
		}
		res.Copied = append(res.Copied, v.m.nodes[i].Name)
	}
	if len(res.Pending) > 0 {
		return res // keep every other copy until the replicas are confirmed
	}
	for i, c := range v.copies {
		if !isReplica[i] {
			if res.Problem == "" {
				res.Problem = "copy outside its replicas"
			}
			h.remove(ctx, v, c.node, dry, &res)
		}
	}
	if !dry && res.Err == "" {
		// Confirm and remember the replicas' state, so scans skip it.
		if after := h.gather(ctx, v.user, v.path); len(after.unknown) == 0 {
			h.state.setVerified(v.user+"/"+v.path, fingerprint(after))
		}
	}
	return res
}

func sortCopies(cs []replicaCopy) {
	sort.Slice(cs, func(a, b int) bool { return cs[a].node < cs[b].node })
}

// winner picks the copy every replica should hold: among versions stored on
// at least W nodes (an acknowledged write) if there are any, the newest;
// ties go to the version more nodes hold, then to the smaller hash so every
// proxy picks the same one.
func winner(live []replicaCopy, w int) replicaCopy {
	type version struct {
		c     replicaCopy
		count int
	}
	byID := map[string]*version{}
	var order []string
	for _, c := range live {
		id := c.sum
		if id == "" {
			id = strconv.FormatInt(c.size, 10) // unhashed: one version per size
		}
		v, ok := byID[id]
		if !ok {
			v = &version{c: c}
			byID[id] = v
			order = append(order, id)
		}
		v.count++
		if c.mtime.After(v.c.mtime) {
			v.c.mtime = c.mtime
			v.c.node = c.node
		}
	}
	var pool []*version
	for _, id := range order {
		if byID[id].count >= w {
			pool = append(pool, byID[id])
		}
	}
	if len(pool) == 0 {
		for _, id := range order {
			pool = append(pool, byID[id])
		}
	}
	sort.Slice(pool, func(a, b int) bool {
		x, y := pool[a], pool[b]
		if !x.c.mtime.Equal(y.c.mtime) {
			return x.c.mtime.After(y.c.mtime)
		}
		if x.count != y.count {
			return x.count > y.count
		}
		return x.c.sum < y.c.sum
	})
	return pool[0].c
}

// hashIfNeeded reads and hashes every live copy when their sizes differ,
// when they look like different writes, or on a deep scan.
func (h *Healer) hashIfNeeded(ctx context.Context, v *view, live []replicaCopy, deep bool) error {
	need := deep
	for _, c := range live[1:] {
		if c.size != live[0].size {
			need = true
		}
		d := c.mtime.Sub(live[0].mtime)
		if d > sameWriteWindow || d < -sameWriteWindow {
			need = true
		}
	}
	if !need || len(live) < 2 {
		return nil
	}
	for k := range live {
		sum, err := h.hash(ctx, v, live[k].node)
		if err != nil {
			return fmt.Errorf("hash %s on %s: %w", v.path, v.m.nodes[live[k].node].Name, err)
		}
		live[k].sum = sum
		c := v.copies[live[k].node]
		c.sum = sum
		v.copies[live[k].node] = c
	}
	return nil
}

func (h *Healer) hash(ctx context.Context, v *view, node int) (string, error) {
	if m := v.m.nodes[node].Meta; m != nil {
		meta, err := h.api.meta(ctx, m, v.user, v.path)
		if err == nil {
			h.counts.add("hashed_on_node")
			return meta.SHA256, nil
		}
		h.log.Warn("metadata endpoint failed; hashing the copy", "node", v.m.nodes[node].Name, "err", err)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	resp, err := h.api.open(ctx, v.m.nodes[node].URL, v.user, v.path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	sum := sha256.New()
	if _, err := io.Copy(sum, h.idle(resp.Body, cancel)); err != nil {
		return "", err
	}
	return hex.EncodeToString(sum.Sum(nil)), nil
}

// copy streams the winning copy from its node to node dst.
func (h *Healer) copy(ctx context.Context, v *view, from replicaCopy, dst int) error {
	if h.limiter != nil {
		h.limiter(ctx)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	resp, err := h.api.open(ctx, v.m.nodes[from.node].URL, v.user, v.path)
	if err != nil {
		return fmt.Errorf("read %s from %s: %w", v.path, v.m.nodes[from.node].Name, err)
	}
	defer resp.Body.Close()
	mode, err := strconv.ParseUint(resp.Header.Get("X-File-Mode"), 10, 32)
	if err != nil {
		mode = 0o600
	}
	if err := h.api.put(ctx, v.m.nodes[dst].URL, v.user, v.path, uint32(mode), h.idle(resp.Body, cancel)); err != nil {
		return fmt.Errorf("copy %s from %s to %s: %w", v.path, v.m.nodes[from.node].Name, v.m.nodes[dst].Name, err)
	}
	h.log.Info("repaired replica", "user", v.user, "path", v.path, "from", v.m.nodes[from.node].Name, "to", v.m.nodes[dst].Name)
	h.counts.add("copied")
	return nil
}

func (h *Healer) remove(ctx context.Context, v *view, node int, dry bool, res *Result) {
	if !dry {
		if err := h.api.remove(ctx, v.m.nodes[node].URL, v.user, v.path); err != nil {
			res.Err = err.Error()
			return
		}
		h.log.Info("removed copy", "user", v.user, "path", v.path, "node", v.m.nodes[node].Name)
		h.counts.add("removed")
	}
	res.Removed = append(res.Removed, v.m.nodes[node].Name)
}

// idle cancels a transfer when the node sends nothing for the stall timeout.
func (h *Healer) idle(r io.Reader, cancel context.CancelCauseFunc) io.Reader {
	return stall.NewReader(r, h.stall, cancel, errors.New("node stalled"))
}
