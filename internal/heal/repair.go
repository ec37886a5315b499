package heal

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cring-dev/cring/internal/cluster"
	"github.com/cring-dev/cring/internal/stall"
	"github.com/cring-dev/cring/internal/stamp"
	"github.com/cring-dev/cring/internal/tombstone"
)

// sameWriteWindow: copies from one fan-out write land within this of each
// other; copies further apart are compared by content.
const sameWriteWindow = 2 * time.Second

// replicaCopy is what one node holds for a key.
type replicaCopy struct {
	node  int
	size  int64
	mtime time.Time   // identifies the bytes on that node; never orders versions
	stamp stamp.Stamp // the version's stamp; zero when unknown (see versions.go)
	sum   string      // sha256, when it had to be compared
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
	m          *cluster.Membership
	user, path string
	replicas   []int
	copies     map[int]replicaCopy
	unknown    map[int]bool      // nodes that could not be asked
	dirOn      []int             // nodes where the path is a directory
	tomb       stamp.Stamp       // newest tombstone covering the path, zero if none
	records    []*versionRecord  // the path's version records (stock nodes)
	corrupt    int               // copies a deep check found not matching their version
	batch      *dirView          // replay: the batch v was judged in (re-checks and confirmation go through it)
	held       map[int]*heldCopy // small copies' bytes as hashed, by node
}

// heldCopy is a small copy's bytes as they were hashed: a repair copies
// these very bytes instead of reading the copy again (a request fewer, and
// what is written is exactly what was judged).
type heldCopy struct {
	b    []byte
	mode uint32
	sum  string
}

// holdCopies: copies up to this size are held when hashed.
const holdCopies = 64 << 10

// gather asks every healthy node for the key's copy (via its parent
// directory listing), the tombstones covering it and its version record.
func (h *Healer) gather(ctx context.Context, user, p string) *view {
	m := h.mem.Load()
	v := &view{m: m, user: user, path: p, copies: map[int]replicaCopy{}, unknown: map[int]bool{}}
	v.replicas = m.Ring.Preference(user + "/" + p)[:m.Ring.Replicas()]
	for i := range m.Nodes {
		if !m.Health.Healthy(i) {
			v.unknown[i] = true
			continue
		}
		if err := h.gatherOn(ctx, v, i); err != nil {
			// Its tombstones or records unread, a copy elsewhere might be
			// one this node knows was deleted or replaced: count it
			// unasked, its own copy included, as scans do.
			h.log.Debug("gather: node unasked", "node", m.Nodes[i].Name, "path", p, "err", err)
			delete(v.copies, i)
			v.unknown[i] = true
		}
	}
	return v
}

// gatherOn reads what node i holds of v's key.
func (h *Healer) gatherOn(ctx context.Context, v *view, i int) error {
	n := &v.m.Nodes[i]
	dir, name := path.Split(v.path)
	dir = strings.TrimSuffix(dir, "/")
	d, err := h.api.list(ctx, n.API(), v.user, dir)
	if err != nil && !errors.Is(err, errNotFound) {
		return err
	}
	if d != nil {
		for _, f := range d.Files {
			switch {
			case f.Name != name:
			case f.IsDir:
				v.dirOn = append(v.dirOn, i)
			default:
				c := replicaCopy{node: i, size: f.Size, mtime: f.ModTime}
				c.stamp, _ = stamp.Parse(f.Stamp)
				v.copies[i] = c
			}
		}
	}
	if tombstone.Reserved(v.path) {
		c, ok := v.copies[i]
		if !ok {
			return nil
		}
		b, err := h.body(ctx, v.m, i, v.user, v.path, c.size, c.mtime)
		if err != nil && !errors.Is(err, errNotFound) {
			return err
		}
		c.stamp = recordStamp(v.path, b)
		v.copies[i] = c
		return nil
	}
	t, err := h.tombstoneOn(ctx, v.m, i, v.user, v.path)
	if err != nil {
		return err
	}
	v.tomb = stamp.Max(v.tomb, t)
	recs, err := h.recordsOn(ctx, v.m, i, v.user, v.path)
	if err != nil {
		return err
	}
	v.records = addRecords(v.records, recs...)
	return nil
}

// dead reports whether a copy is covered by a tombstone: its version is no
// newer than the delete. A tombstone from before stamps is compared with
// an unstamped copy's modification time, as it was then.
func (v *view) dead(c replicaCopy) bool {
	if v.tomb.IsZero() {
		return false
	}
	if c.stamp.IsZero() && v.tomb.Proxy == "legacy" {
		return !c.mtime.After(v.tomb.Time())
	}
	return !c.stamp.After(v.tomb)
}

// stamped reports whether any live copy has a stamp: versions are then
// decided by stamps alone; otherwise (data from before stamps) as before.
func (v *view) stamped() bool {
	for _, c := range v.copies {
		if !c.stamp.IsZero() && !v.dead(c) {
			return true
		}
	}
	return false
}

// healthy is the cheap check used by scans: every replica holds a live copy,
// no other node does, and the copies are one version.
func (h *Healer) healthy(ctx context.Context, v *view) bool {
	if len(v.unknown) > 0 {
		return true // can't judge; hints cover down nodes
	}
	if err := h.stampStockCopies(ctx, v); err != nil {
		return false // let the repair say what failed
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
	if v.stamped() {
		first := v.copies[v.replicas[0]].stamp
		for _, i := range v.replicas {
			c, ok := v.copies[i]
			if !ok || c.stamp != first {
				return false
			}
		}
		return true
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
// A path that is a directory on some node (a directory delete's hint) is
// repaired file by file, so the tree a node kept while it missed the delete
// goes at once, not at the next scan.
func (h *Healer) RepairKey(ctx context.Context, user, p string, dry bool) Result {
	p = tombstone.Clean(p)
	v := h.gather(ctx, user, p)
	res := h.repair(ctx, v, dry, false)
	if len(v.dirOn) == 0 || tombstone.Reserved(p) {
		return res
	}
	files := map[string]bool{}
	for _, i := range v.dirOn {
		tree := map[string]nodeFile{}
		if err := h.walk(ctx, v.m, i, user, p, tree); err != nil {
			res.Err = err.Error()
			res.Pending = append(res.Pending, v.m.Nodes[i].Name)
			continue
		}
		for f := range tree {
			files[f] = true
		}
	}
	for f := range files {
		sub := h.repair(ctx, h.gather(ctx, user, f), dry, false)
		res.Copied = append(res.Copied, sub.Copied...)
		res.Removed = append(res.Removed, sub.Removed...)
		res.Pending = append(res.Pending, sub.Pending...)
		if sub.Err != "" {
			res.Err = sub.Err
		}
		if res.Problem == "" {
			res.Problem = sub.Problem
		}
	}
	return res
}

func (h *Healer) repair(ctx context.Context, v *view, dry, deep bool) Result {
	res := Result{User: v.user, Path: v.path}
	isReplica := map[int]bool{}
	for _, i := range v.replicas {
		isReplica[i] = true
		if v.unknown[i] {
			res.Pending = append(res.Pending, v.m.Nodes[i].Name)
		}
	}
	if err := h.stampStockCopies(ctx, v); err != nil {
		res.Err = err.Error()
		return res
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
			h.removeChecked(ctx, v, c.node, dry, &res)
		}
		if len(v.unknown) >= v.m.W {
			// An acknowledged write may live only on the nodes not asked:
			// nothing here says the key is settled.
			res.Err = fmt.Sprintf("%d nodes unreachable, the key's newest version may be known only to them", len(v.unknown))
		}
		return res
	}

	if len(v.unknown) >= v.m.W {
		// A delete acknowledged at W may have left its tombstone only on
		// the nodes not asked: a copy made now could outlive it.
		res.Err = fmt.Sprintf("%d nodes unreachable, a delete may be known only to them", len(v.unknown))
		return res
	}
	win, err := h.pick(ctx, v, live, deep)
	if err != nil {
		res.Err = err.Error()
		return res
	}

	for _, i := range v.replicas {
		if v.unknown[i] {
			continue
		}
		c, ok := v.copies[i]
		if ok && !v.dead(c) && sameVersion(c, win) {
			continue
		}
		if ok && v.settling(c, win.stamp) {
			res.Err = errSettling(v, i)
			res.Pending = append(res.Pending, v.m.Nodes[i].Name)
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
			res.Copied = append(res.Copied, v.m.Nodes[i].Name)
			continue
		}
		h.pace(ctx, win.size) // before the re-check: the copy follows it at once
		if !h.unchanged(ctx, v, i) {
			res.Err = fmt.Sprintf("%s on %s changed since it was judged; left for the next pass", v.path, v.m.Nodes[i].Name)
			res.Pending = append(res.Pending, v.m.Nodes[i].Name)
			continue
		}
		if err := h.copy(ctx, v, win, i); err != nil {
			res.Err = err.Error()
			res.Pending = append(res.Pending, v.m.Nodes[i].Name)
			if errors.Is(err, errNewerVersion) {
				// An earlier copy of this pass may have written over it:
				// copy onto no other node, so it keeps the copies it has.
				break
			}
			continue
		}
		res.Copied = append(res.Copied, v.m.Nodes[i].Name)
	}
	if len(res.Pending) > 0 {
		return res // keep every other copy until the replicas are confirmed
	}
	for i, c := range v.copies {
		if !isReplica[i] {
			if res.Problem == "" {
				res.Problem = "copy outside its replicas"
			}
			h.removeChecked(ctx, v, c.node, dry, &res)
		}
	}
	if !dry && res.Err == "" {
		// Confirm and remember the replicas' state, so scans skip it.
		if v.batch != nil {
			v.batch.confirmLater(v.path) // one read for the whole batch
		} else if after := h.gather(ctx, v.user, v.path); len(after.unknown) == 0 {
			h.state.setVerified(v.user+"/"+v.path, fingerprint(after))
		}
	}
	return res
}

// unchanged reports whether node i still holds what v says of the key,
// asked right before a copy is written over it: a stock node can't refuse
// an older copy, so a write that landed since v was read must not be
// written over (docs/design.md, "Acting on what is still true").
func (h *Healer) unchanged(ctx context.Context, v *view, i int) bool {
	if v.batch != nil {
		return v.batch.unchanged(ctx, v, i)
	}
	dir, name := path.Split(v.path)
	d, err := h.api.list(ctx, v.m.Nodes[i].API(), v.user, strings.TrimSuffix(dir, "/"))
	if err != nil && !errors.Is(err, errNotFound) {
		return false
	}
	was, had := v.copies[i]
	if d != nil {
		for _, f := range d.Files {
			if f.Name == name && !f.IsDir {
				return had && f.Size == was.size && f.ModTime.Equal(was.mtime)
			}
		}
	}
	return !had
}

// sameVersion reports whether c holds win's version.
func sameVersion(c, win replicaCopy) bool {
	if !win.stamp.IsZero() {
		return c.stamp == win.stamp && (win.sum == "" || c.sum == "" || c.sum == win.sum)
	}
	return c.stamp.IsZero() && c.size == win.size && (win.sum == "" || c.sum == win.sum)
}

// pick chooses the copy every replica should hold: the newest stamp; for
// keys written before stamps, the old rule (winner). On a deep scan, copies
// of the winning stamp are hashed and the content most of them hold wins,
// so a copy that rotted is replaced.
func (h *Healer) pick(ctx context.Context, v *view, live []replicaCopy, deep bool) (replicaCopy, error) {
	if !v.stamped() {
		if err := h.hashIfNeeded(ctx, v, live, deep); err != nil {
			return replicaCopy{}, err
		}
		return winner(live, v.m.W), nil
	}
	win := live[0]
	for _, c := range live[1:] {
		if c.stamp.After(win.stamp) {
			win = c
		}
	}
	if !deep {
		return win, nil
	}
	count := map[string]int{}
	for _, c := range live {
		if c.stamp.IsZero() && len(v.records) > 0 {
			v.corrupt++ // a stock copy matching no recorded version
		}
		if c.stamp != win.stamp {
			continue
		}
		sum, err := h.sum(ctx, v, c, true)
		if err != nil {
			return replicaCopy{}, err
		}
		if !strings.HasPrefix(sum, corruptMark) {
			count[sum]++
		}
	}
	best := ""
	for sum, n := range count {
		if best == "" || n > count[best] || n == count[best] && sum < best {
			best = sum
		}
	}
	if r := v.recordFor(win.stamp); r != nil {
		best = r.sum // the checksum recorded at write time
	}
	var good *replicaCopy
	for _, c := range live {
		c = v.copies[c.node]
		switch {
		case c.stamp != win.stamp:
		case c.sum != best:
			v.corrupt++ // rotted since it was written
		case good == nil:
			good = &c
		}
	}
	if good != nil {
		return *good, nil
	}
	return replicaCopy{}, fmt.Errorf("no copy of %s version %s matches its checksum", v.path, win.stamp)
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
			return fmt.Errorf("hash %s on %s: %w", v.path, v.m.Nodes[live[k].node].Name, err)
		}
		live[k].sum = sum
		c := v.copies[live[k].node]
		c.sum = sum
		v.copies[live[k].node] = c
	}
	return nil
}

func (h *Healer) hash(ctx context.Context, v *view, node int) (string, error) {
	if m := v.m.Nodes[node].MetaAPI(); m != nil {
		meta, err := h.api.meta(ctx, m, v.user, v.path)
		if err == nil {
			h.counts.add("hashed_on_node")
			if meta.Corrupt {
				// The node's own checksum, recorded at write time, says
				// so: this copy can't be the good one, however many
				// copies rotted the same way.
				return corruptMark + meta.SHA256, nil
			}
			return meta.SHA256, nil
		}
		h.log.Warn("metadata endpoint failed; hashing the copy", "node", v.m.Nodes[node].Name, "err", err)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	resp, err := h.api.open(ctx, v.m.Nodes[node].API(), v.user, v.path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	sum := sha256.New()
	if c, ok := v.copies[node]; ok && c.size <= holdCopies {
		b, err := io.ReadAll(io.LimitReader(h.idle(resp.Body, cancel), holdCopies+1))
		if err != nil {
			return "", err
		}
		sum.Write(b)
		s := hex.EncodeToString(sum.Sum(nil))
		if int64(len(b)) == c.size {
			if v.held == nil {
				v.held = map[int]*heldCopy{}
			}
			v.held[node] = &heldCopy{b: b, mode: fileMode(resp.Header), sum: s}
		}
		return s, nil
	}
	if _, err := io.Copy(sum, h.idle(resp.Body, cancel)); err != nil {
		return "", err
	}
	return hex.EncodeToString(sum.Sum(nil)), nil
}

// copy streams the winning copy from its node to node dst, with its stamp:
// copying never renews a version, and a cring node holding something newer
// keeps it (errNewer).
func (h *Healer) copy(ctx context.Context, v *view, from replicaCopy, dst int) error {
	if from.node == dst {
		return fmt.Errorf("copy %s: %s holds the winning copy already", v.path, v.m.Nodes[dst].Name)
	}
	var body io.Reader
	var mode uint32
	if hc := v.held[from.node]; hc != nil && int64(len(hc.b)) == from.size && (from.sum == "" || from.sum == hc.sum) {
		body, mode = bytes.NewReader(hc.b), hc.mode
	} else {
		ctx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		resp, err := h.api.open(ctx, v.m.Nodes[from.node].API(), v.user, v.path)
		if err != nil {
			return fmt.Errorf("read %s from %s: %w", v.path, v.m.Nodes[from.node].Name, err)
		}
		defer resp.Body.Close()
		body, mode = h.idle(resp.Body, cancel), fileMode(resp.Header)
	}
	if h.guarded(v, dst) {
		// Last, right before the copy lands: a stock node can't refuse it.
		if err := h.newerVersion(ctx, v, dst, from.stamp); err != nil {
			return err
		}
	}
	if err := h.api.put(ctx, v.m.Nodes[dst].API(), v.user, v.path, mode, from.stamp, body); err != nil {
		return fmt.Errorf("copy %s from %s to %s: %w", v.path, v.m.Nodes[from.node].Name, v.m.Nodes[dst].Name, err)
	}
	h.log.Info("repaired replica", "user", v.user, "path", v.path, "from", v.m.Nodes[from.node].Name, "to", v.m.Nodes[dst].Name)
	h.counts.add("copied")
	return nil
}

// fileMode is the mode a node answered a file with (0600 if it didn't say).
func fileMode(h http.Header) uint32 {
	mode, err := strconv.ParseUint(h.Get("X-File-Mode"), 10, 32)
	if err != nil {
		return 0o600
	}
	return uint32(mode)
}

// removeChecked deletes node's copy of v's key after asking the cluster
// again, right before acting: a write may have landed since v was read, and
// only a copy still dead, or still outside its replicas while every replica
// holds the same or a newer version, is removed. A cring node is sent the
// tombstone's stamp, so it keeps anything newer whatever happened since.
func (h *Healer) removeChecked(ctx context.Context, v *view, node int, dry bool, res *Result) {
	name := v.m.Nodes[node].Name
	if dry {
		res.Removed = append(res.Removed, name)
		return
	}
	now := h.regather(ctx, v)
	if err := h.stampStockCopies(ctx, now); err != nil {
		res.Err = err.Error()
		return
	}
	c, ok := now.copies[node]
	if !ok {
		return // gone already
	}
	if now.settling(c, newestOn(now, now.replicas)) {
		res.Err = errSettling(now, node)
		return
	}
	var with stamp.Stamp
	switch {
	case now.dead(c):
		with = now.tomb
	case h.safeToMove(now, c):
	default:
		res.Err = fmt.Sprintf("%s on %s changed since it was judged; left for the next pass", v.path, name)
		return
	}
	if err := h.api.remove(ctx, v.m.Nodes[node].API(), v.user, v.path, with); err != nil {
		res.Err = err.Error()
		return
	}
	h.log.Info("removed copy", "user", v.user, "path", v.path, "node", name, "tombstone", with.String())
	h.counts.add("removed")
	res.Removed = append(res.Removed, name)
}

// regather reads v's key again, right before acting on it: from every
// node, or for a replayed key from its directory re-read at most
// recheckAge ago (after v was judged) and its own tombstone and records
// read now.
func (h *Healer) regather(ctx context.Context, v *view) *view {
	if v.batch != nil {
		_, name := splitKey(v.path)
		return v.batch.recheck(ctx).keyView(ctx, name)
	}
	return h.gather(ctx, v.user, v.path)
}

// newestOn is the newest stamp the given nodes hold of v's key.
func newestOn(v *view, nodes []int) stamp.Stamp {
	var s stamp.Stamp
	for _, i := range nodes {
		s = stamp.Max(s, v.copies[i].stamp)
	}
	return s
}

// safeToMove reports whether a copy outside the key's replicas can go:
// every replica answered and holds a version at least as new.
func (h *Healer) safeToMove(v *view, c replicaCopy) bool {
	if slices.Contains(v.replicas, c.node) || len(v.unknown) > 0 {
		return false
	}
	for _, i := range v.replicas {
		r, ok := v.copies[i]
		if !ok || v.dead(r) {
			return false
		}
		if c.stamp.IsZero() && r.stamp.IsZero() {
			if r.size != c.size {
				return false
			}
			continue
		}
		if c.stamp.After(r.stamp) {
			return false
		}
	}
	return true
}

// idle cancels a transfer when the node sends nothing for the stall timeout.
func (h *Healer) idle(r io.Reader, cancel context.CancelCauseFunc) io.Reader {
	return stall.NewReader(r, h.stall, cancel, errors.New("node stalled"))
}
