package heal

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/cring-dev/cring/internal/cluster"
	"github.com/cring-dev/cring/internal/stamp"
	"github.com/cring-dev/cring/internal/tombstone"
)

// Hint replay costs what the missed writes weigh, not hints × directory
// size (docs/design.md, "Hints and repairs"): due hints are taken by
// (user, directory), every node owed one there together; each batch of up
// to batchKeys keys is judged from one listing of the directory per node
// (and one of the user's tombstones), and a key whose copies already agree
// costs nothing more. Only keys that need a repair read their version
// records, and every repair keeps the rules of repair.go: stamps decide,
// nothing is done while W or more nodes are unasked, a copy is written over
// or removed only after a re-check, and a hint is settled only once its key
// is really repaired on its node.
const (
	// batchKeys: keys judged from one listing of their directory. A
	// batch costs two listings of the directory per node whatever its
	// size, so batches are large; re-checks before acting keep them safe
	// however long ago the batch was read.
	batchKeys     = 10_000
	replayDirs    = 4  // directories replayed at once
	replayWorkers = 16 // keys repaired at once, across them: copies wait on the nodes (fsync), not on the proxy
	// recheckAge: re-checks before acting share a listing of the
	// directory at most this old (always newer than what the key was
	// judged from); a key absent on a node is re-checked on its own.
	recheckAge = 250 * time.Millisecond
)

// replayGroup is the due hints of one directory of one user, all nodes.
type replayGroup struct {
	batchKey
	batches []*dueBatch
	owed    map[string][]string    // name → nodes whose due batch holds it
	claims  map[string][]*dueBatch // name → the claims (shared store) holding it
	oldest  time.Time
}

// replay repairs the keys of due batches and puts the batches back.
func (h *Healer) replay(ctx context.Context, m *cluster.Membership, due []*dueBatch) {
	if len(due) == 0 {
		return
	}
	groups := map[batchKey]*replayGroup{}
	var order []*replayGroup
	for _, d := range due {
		g := groups[d.key()]
		if g == nil {
			g = &replayGroup{batchKey: d.key(), owed: map[string][]string{}, claims: map[string][]*dueBatch{}, oldest: d.oldest()}
			groups[d.key()] = g
			order = append(order, g)
		}
		g.batches = append(g.batches, d)
		g.oldest = minTime(g.oldest, d.oldest())
		for _, n := range d.names {
			if !slices.Contains(g.owed[n], d.node()) {
				g.owed[n] = append(g.owed[n], d.node())
			}
			if d.claim != nil {
				g.claims[n] = append(g.claims[n], d)
			}
		}
	}
	// Clients' keys first (reads skip a node while it is owed one), then
	// the oldest.
	sort.SliceStable(order, func(a, b int) bool {
		ra, rb := tombstone.Reserved(order[a].dir), tombstone.Reserved(order[b].dir)
		if ra != rb {
			return !ra
		}
		return order[a].oldest.Before(order[b].oldest)
	})
	keys := make(chan struct{}, replayWorkers)
	dirs := make(chan struct{}, replayDirs)
	var wg sync.WaitGroup
	for _, g := range order {
		dirs <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-dirs }()
			h.replayDir(ctx, m, g, keys)
		}()
	}
	wg.Wait()
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// replayDir replays one directory's due hints, batchKeys keys at a time.
func (h *Healer) replayDir(ctx context.Context, m *cluster.Membership, g *replayGroup, keys chan struct{}) {
	names := slices.Sorted(maps.Keys(g.owed))
	failed := map[string]bool{}
	for start := 0; start < len(names); start += batchKeys {
		if ctx.Err() != nil {
			break
		}
		chunk := names[start:min(start+batchKeys, len(names))]
		for node := range h.replayChunk(ctx, m, g, chunk, keys) {
			failed[node] = true
		}
	}
	for _, d := range g.batches {
		if d.claim != nil {
			h.releaseClaim(ctx, d, failed[d.node()] || ctx.Err() != nil)
			continue
		}
		h.state.release(d, failed[d.node()] || ctx.Err() != nil)
	}
}

// replayChunk repairs chunk's keys from one read of their directory and
// settles, as each key is done, the hints of every node its repair reached.
// It returns the owed nodes some key could not be repaired on.
func (h *Healer) replayChunk(ctx context.Context, m *cluster.Membership, g *replayGroup, chunk []string, keys chan struct{}) map[string]bool {
	// Hints recorded after this may be for writes the listings below
	// don't show: they are not settled by this pass.
	seq := h.state.seqNow()
	dv := h.readDir(ctx, m, g.user, g.dir, h.newBatch(g.user, g.dir, chunk), false)
	h.counts.add("replay_batches")
	var mu sync.Mutex
	failed := map[string]bool{}
	var wg sync.WaitGroup
	for _, name := range chunk {
		keys <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-keys }()
			res, p := h.replayKey(ctx, dv, name), joinKey(g.dir, name)
			if res.Err == "" {
				// Every node whose hint this repair covers, owed by this
				// batch or not (each key once, however many nodes owe it).
				for _, node := range h.state.hintedNodes(g.user, p) {
					if !slices.Contains(res.Pending, node) && h.state.settle(node, g.user, p, seq) {
						h.counts.add("hints_replayed")
					}
				}
				// Claimed from the shared store: deleted there when the
				// claim is released (unless published again meanwhile).
				for _, d := range g.claims[name] {
					if !slices.Contains(res.Pending, d.node()) {
						d.settle(name)
						h.counts.add("hints_replayed")
					}
				}
			}
			for _, node := range g.owed[name] {
				if res.Err != "" || slices.Contains(res.Pending, node) {
					mu.Lock()
					failed[node] = true
					mu.Unlock()
					h.counts.add("hints_retried")
				}
			}
		}()
	}
	wg.Wait()
	dv.confirm(ctx)
	return failed
}

// replayKey repairs one key from its directory's batch view.
func (h *Healer) replayKey(ctx context.Context, dv *dirView, name string) Result {
	p := joinKey(dv.dir, name)
	if ctx.Err() != nil {
		return Result{User: dv.user, Path: p, Err: ctx.Err().Error()}
	}
	v := dv.keyView(ctx, name)
	if len(v.dirOn) > 0 {
		// A directory delete's hint: file by file, as RepairKey does.
		return h.RepairKey(ctx, dv.user, p, false)
	}
	if res, ok := h.alreadyRight(v); ok {
		h.counts.add("replay_already_right")
		return res
	}
	return h.repair(ctx, v, false, false)
}

// alreadyRight reports whether a repair of v would find nothing to do,
// judged without version records: every copy on a replica, every replica
// asked holds one, and all of them one version by their listed stamps
// (cring nodes), or the same bytes by checksums already known (stock
// nodes, no tombstone). Fewer than W nodes unasked, as repair needs.
func (h *Healer) alreadyRight(v *view) (Result, bool) {
	res := Result{User: v.user, Path: v.path}
	if len(v.dirOn) > 0 || len(v.unknown) >= v.m.W {
		return res, false
	}
	for i := range v.copies {
		if !slices.Contains(v.replicas, i) {
			return res, false
		}
	}
	for _, i := range v.replicas {
		if v.unknown[i] {
			res.Pending = append(res.Pending, v.m.Nodes[i].Name)
			continue
		}
		if _, ok := v.copies[i]; !ok && len(v.copies) > 0 {
			return res, false
		}
	}
	var first *replicaCopy
	for _, c := range v.copies {
		if c.stamp.IsZero() {
			if !v.tomb.IsZero() {
				return res, false // dead or not is for the records to say
			}
			sum, ok := h.facts.get(factKey{node: v.m.Nodes[c.node].Name, user: v.user, path: v.path, size: c.size, mtime: c.mtime.UnixNano()})
			if !ok {
				return res, false
			}
			c.sum = sum
		} else if v.dead(c) {
			return res, false
		}
		if first == nil {
			first = &c
			continue
		}
		if c.stamp != first.stamp || c.stamp.IsZero() && c.sum != first.sum {
			return res, false
		}
	}
	return res, true
}

// replayOwns reports whether a pending hint for v's key is owed to a node
// that is up: its replay repairs the key, so a scan leaves it alone rather
// than repair it twice.
func (h *Healer) replayOwns(v *view) bool {
	for _, node := range h.state.hintedNodes(v.user, v.path) {
		if i := v.m.Index(node); i >= 0 && v.m.Health.Healthy(i) {
			return true
		}
	}
	return false
}

// dirView is one directory of one user as every node listed it, read once
// for a batch of keys, with the tombstones covering the directory. Only the
// batch's entries are kept.
type dirView struct {
	h         *Healer
	m         *cluster.Membership
	user, dir string
	batch     *dirBatch
	unknown   map[int]bool               // nodes that could not be asked
	files     map[int]map[string]listing // node → name → entry (the batch's names)
	tombs     map[int]map[string]listing // node → the tombstones the batch needs, as listed
	dirTomb   stamp.Stamp                // newest tombstone covering the directory

	mu       sync.Mutex
	fresh    *dirView // the latest re-read, for re-checks
	freshAt  time.Time
	repaired []string // keys repaired, confirmed together after the batch
}

// dirBatch is what a batch reads of its directory: the names it judges,
// and how it learns their tombstones.
type dirBatch struct {
	names map[string]bool
	// tombs: the user's tombstone directory is listed once per read
	// (want: the names it needs) when it is small next to the batch;
	// otherwise each key's own is read (one request per key and node).
	listTombs bool
	want      map[string]bool
}

func (h *Healer) newBatch(user, dir string, names []string) *dirBatch {
	b := &dirBatch{names: make(map[string]bool, len(names))}
	for _, n := range names {
		b.names[n] = true
	}
	if tombstone.Reserved(dir) || h.tombs.get(user) > 4*len(names)+64 {
		return b
	}
	b.listTombs = true
	b.want = map[string]bool{}
	for _, c := range tombstone.Covering(dir) {
		b.want[tombstone.Name(c)] = true
	}
	for _, n := range names {
		b.want[tombstone.Name(joinKey(dir, n))] = true
	}
	return b
}

// readDir lists dir on every healthy node, at once, with the tombstones
// the batch needs (none when listingOnly).
func (h *Healer) readDir(ctx context.Context, m *cluster.Membership, user, dir string, b *dirBatch, listingOnly bool) *dirView {
	dv := &dirView{h: h, m: m, user: user, dir: dir, batch: b, unknown: map[int]bool{},
		files: map[int]map[string]listing{}, tombs: map[int]map[string]listing{}}
	needTombs := !listingOnly && !tombstone.Reserved(dir)
	type read struct {
		files, tombs map[string]listing
		listed       int // tombstones listed
		tomb         stamp.Stamp
		err          error
	}
	reads := make([]read, len(m.Nodes))
	var wg sync.WaitGroup
	for i := range m.Nodes {
		if !m.Health.Healthy(i) {
			dv.unknown[i] = true
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &reads[i]
			if r.files, _, r.err = h.listNames(ctx, m, i, user, dir, b.names); r.err != nil || !needTombs {
				return
			}
			if b.listTombs {
				if r.tombs, r.listed, r.err = h.listNames(ctx, m, i, user, tombstone.Dir, b.want); r.err != nil {
					return
				}
				r.tomb, r.err = h.listedTombstone(ctx, m, i, user, r.tombs, tombstone.Covering(dir)...)
				return
			}
			r.tomb, r.err = h.tombstoneOn(ctx, m, i, user, dir)
		}()
	}
	wg.Wait()
	most := 0
	for i, r := range reads {
		if dv.unknown[i] {
			continue
		}
		if r.err != nil {
			h.log.Debug("replay: node unasked", "node", m.Nodes[i].Name, "user", user, "dir", dir, "err", r.err)
			dv.unknown[i] = true
			continue
		}
		dv.files[i] = r.files
		dv.tombs[i] = r.tombs
		dv.dirTomb = stamp.Max(dv.dirTomb, r.tomb)
		most = max(most, r.listed)
	}
	if needTombs && b.listTombs {
		h.tombs.set(user, most)
	}
	return dv
}

// listNames is node i's listing of dir, the entries named in keep; empty
// when the directory doesn't exist. It also says how many entries the
// listing had.
func (h *Healer) listNames(ctx context.Context, m *cluster.Membership, i int, user, dir string, keep map[string]bool) (map[string]listing, int, error) {
	d, err := h.api.list(ctx, m.Nodes[i].API(), user, dir)
	if errors.Is(err, errNotFound) {
		return map[string]listing{}, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	out := map[string]listing{}
	for _, f := range d.Files {
		if keep[f.Name] {
			out[f.Name] = f
		}
	}
	return out, len(d.Files), nil
}

// listedTombstone is the newest of the tombstones of paths that node i
// listed (bodies from the facts cache when known).
func (h *Healer) listedTombstone(ctx context.Context, m *cluster.Membership, i int, user string, tombs map[string]listing, paths ...string) (stamp.Stamp, error) {
	var newest stamp.Stamp
	for _, c := range paths {
		name := tombstone.Name(c)
		f, ok := tombs[name]
		if !ok {
			continue
		}
		b, err := h.body(ctx, m, i, user, tombstone.Dir+"/"+name, f.Size, f.ModTime)
		if errors.Is(err, errNotFound) {
			continue // removed since it was listed
		}
		if err != nil {
			return stamp.Stamp{}, err
		}
		_, s, err := tombstone.ParseBody(b)
		if err != nil {
			return stamp.Stamp{}, err
		}
		newest = stamp.Max(newest, s)
	}
	return newest, nil
}

// keyView is what the batch says of one key, completed with what it needs
// of its own: its tombstone, and its version records when a copy has no
// listed stamp. A node that can't say is unasked for this key, its copy
// included, as in gather.
func (dv *dirView) keyView(ctx context.Context, name string) *view {
	h, m := dv.h, dv.m
	p := joinKey(dv.dir, name)
	v := &view{m: m, user: dv.user, path: p, copies: map[int]replicaCopy{}, unknown: maps.Clone(dv.unknown),
		tomb: dv.dirTomb, batch: dv}
	v.replicas = m.Ring.Preference(dv.user + "/" + p)[:m.Ring.Replicas()]
	asked := slices.Sorted(maps.Keys(dv.files))
	for _, i := range asked {
		f, ok := dv.files[i][name]
		switch {
		case !ok:
		case f.IsDir:
			v.dirOn = append(v.dirOn, i)
		default:
			c := replicaCopy{node: i, size: f.Size, mtime: f.ModTime}
			c.stamp, _ = stamp.Parse(f.Stamp)
			v.copies[i] = c
		}
	}
	unask := func(i int, err error) {
		h.log.Debug("replay: node unasked", "node", m.Nodes[i].Name, "path", p, "err", err)
		delete(v.copies, i)
		v.unknown[i] = true
	}
	if tombstone.Reserved(p) {
		for _, i := range asked {
			c, ok := v.copies[i]
			if !ok {
				continue
			}
			b, err := h.body(ctx, m, i, v.user, p, c.size, c.mtime)
			if err != nil && !errors.Is(err, errNotFound) {
				unask(i, err)
				continue
			}
			c.stamp = recordStamp(p, b)
			v.copies[i] = c
		}
		return v
	}
	for _, i := range asked {
		var t stamp.Stamp
		var err error
		if dv.batch.listTombs {
			t, err = h.listedTombstone(ctx, m, i, v.user, dv.tombs[i], p)
		} else {
			t, err = h.ownTombstone(ctx, m, i, v.user, p)
		}
		if err != nil {
			unask(i, err)
			continue
		}
		v.tomb = stamp.Max(v.tomb, t)
	}
	if !slices.ContainsFunc(slices.Collect(maps.Values(v.copies)), func(c replicaCopy) bool { return c.stamp.IsZero() }) {
		return v // every copy listed with its stamp: records decide nothing
	}
	for _, i := range asked {
		if v.unknown[i] {
			continue
		}
		recs, err := h.recordsOn(ctx, m, i, v.user, p)
		if err != nil {
			unask(i, err)
			continue
		}
		v.records = addRecords(v.records, recs...)
	}
	return v
}

// ownTombstone reads p's own tombstone on node i (not its directories').
func (h *Healer) ownTombstone(ctx context.Context, m *cluster.Membership, i int, user, p string) (stamp.Stamp, error) {
	b, err := h.api.small(ctx, m.Nodes[i].API(), user, tombstone.Path(p))
	if errors.Is(err, errNotFound) {
		return stamp.Stamp{}, nil
	}
	if err != nil {
		return stamp.Stamp{}, err
	}
	_, s, err := tombstone.ParseBody(b)
	return s, err
}

// unchanged is repair's re-check right before a copy onto node i: a key
// absent there when judged is asked for on its own (one request); one
// present is compared with a re-read listing at most recheckAge old.
func (dv *dirView) unchanged(ctx context.Context, v *view, i int) bool {
	was, had := v.copies[i]
	if !had {
		return dv.h.api.absent(ctx, v.m.Nodes[i].API(), v.user, v.path)
	}
	f := dv.recheck(ctx)
	if f.unknown[i] {
		return false
	}
	_, name := splitKey(v.path)
	e, ok := f.files[i][name]
	return ok && !e.IsDir && e.Size == was.size && e.ModTime.Equal(was.mtime)
}

// recheck is the directory read again, at most recheckAge ago and after
// the batch was judged; concurrent re-checks share one re-read.
func (dv *dirView) recheck(ctx context.Context) *dirView {
	dv.mu.Lock()
	defer dv.mu.Unlock()
	if dv.fresh == nil || time.Since(dv.freshAt) > recheckAge {
		dv.fresh = dv.h.readDir(ctx, dv.m, dv.user, dv.dir, dv.batch, false)
		dv.freshAt = time.Now()
	}
	return dv.fresh
}

// confirmLater notes a key repaired; confirm checks them all at once.
func (dv *dirView) confirmLater(p string) {
	dv.mu.Lock()
	dv.repaired = append(dv.repaired, p)
	dv.mu.Unlock()
}

// confirm reads the directory once more on every node and remembers the
// replicas of every key repaired in the batch, so scans skip them (what
// repair does key by key).
func (dv *dirView) confirm(ctx context.Context) {
	if len(dv.repaired) == 0 || ctx.Err() != nil {
		return
	}
	after := dv.h.readDir(ctx, dv.m, dv.user, dv.dir, dv.batch, true)
	if len(after.unknown) > 0 {
		return
	}
	for _, p := range dv.repaired {
		_, name := splitKey(p)
		v := &view{user: dv.user, path: p, copies: map[int]replicaCopy{},
			replicas: dv.m.Ring.Preference(dv.user + "/" + p)[:dv.m.Ring.Replicas()]}
		for i, files := range after.files {
			if f, ok := files[name]; ok && !f.IsDir {
				v.copies[i] = replicaCopy{node: i, size: f.Size, mtime: f.ModTime}
			}
		}
		dv.h.state.setVerified(dv.user+"/"+p, fingerprint(v))
	}
}

// tombCounts remembers how many tombstones each user had when last listed:
// replay lists them once per batch while that is cheaper than reading each
// key's own.
type tombCounts struct {
	mu sync.Mutex
	m  map[string]int
}

func (t *tombCounts) get(user string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.m[user]
}

func (t *tombCounts) set(user string, n int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil || len(t.m) > 100_000 {
		t.m = map[string]int{}
	}
	t.m[user] = n
}
