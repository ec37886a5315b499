package heal

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cring-dev/cring/internal/cluster"
	"github.com/cring-dev/cring/internal/stamp"
	"github.com/cring-dev/cring/internal/tombstone"
)

// Which copy wins is decided by stamps alone (docs/design.md, "Versions"):
//   - a cring node lists every copy's stamp;
//   - a stock node's copy takes the stamp of the key's version record when
//     its size and SHA-256 match the record, and is unstamped otherwise (it
//     loses to every stamped version: a late, abandoned or stale write);
//   - a tombstone's and a version record's stamp is in its body.
// Modification times only identify a copy's bytes on one node, for the
// facts cache; they never order versions.

// corruptMark prefixes the hash of a copy its cring node found not to
// match the checksum it recorded at write time: such a copy never wins.
const corruptMark = "corrupt:"

// versionRecord is a version record seen for a key, or an intent record
// (pending: an upload whose checksum is not known yet).
type versionRecord struct {
	path    string // the key's, from the body; empty when only the name was read
	stamp   stamp.Stamp
	size    int64
	sum     string
	pending bool
}

// factKey names one node's bytes of a path: rewriting them changes the
// size or the modification time, so a fact learned once holds until then.
type factKey struct {
	node, user, path string
	size             int64
	mtime            int64
}

// facts caches what was read from copies (SHA-256 of data, the body of a
// tombstone or version record), so scans read each copy once, not once
// per pass. Bounded: it starts over past maxFacts.
type facts struct {
	mu sync.Mutex
	m  map[factKey]string
}

const maxFacts = 200_000

func (f *facts) get(k factKey) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.m[k]
	return v, ok
}

func (f *facts) put(k factKey, v string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil || len(f.m) >= maxFacts {
		f.m = map[factKey]string{}
	}
	f.m[k] = v
}

// body returns the content of a small cring file (tombstone, version
// record) on node i, from the cache when its size and mtime are known.
func (h *Healer) body(ctx context.Context, m *cluster.Membership, i int, user, p string, size int64, mtime time.Time) ([]byte, error) {
	k := factKey{node: m.Nodes[i].Name, user: user, path: p, size: size, mtime: mtime.UnixNano()}
	if !mtime.IsZero() {
		if v, ok := h.facts.get(k); ok {
			return []byte(v), nil
		}
	}
	b, err := h.api.small(ctx, m.Nodes[i].API(), user, p)
	if err != nil {
		return nil, err
	}
	if !mtime.IsZero() && int64(len(b)) == size {
		h.facts.put(k, string(b))
	}
	return b, nil
}

// recordStamp is the stamp of a reserved file's own content: a tombstone's
// or a version record's. Such files are versions of themselves, so the
// newest content wins when they are repaired.
func recordStamp(p string, b []byte) stamp.Stamp {
	switch {
	case isUnder(p, tombstone.Dir):
		if _, s, err := tombstone.ParseBody(b); err == nil {
			return s
		}
	case isUnder(p, tombstone.Versions):
		if _, s, err := tombstone.ParseVersion(b); err == nil {
			return s
		}
	}
	return stamp.Stamp{}
}

// tombstoneOn reads, on node i, the newest tombstone covering p (p or a
// directory above it); zero when there is none.
func (h *Healer) tombstoneOn(ctx context.Context, m *cluster.Membership, i int, user, p string) (stamp.Stamp, error) {
	var newest stamp.Stamp
	for _, c := range tombstone.Covering(p) {
		b, err := h.api.small(ctx, m.Nodes[i].API(), user, tombstone.Path(c))
		if errors.Is(err, errNotFound) {
			continue
		}
		if err != nil {
			return stamp.Stamp{}, fmt.Errorf("tombstone of %s: %w", c, err)
		}
		_, s, err := tombstone.ParseBody(b)
		if err != nil {
			return stamp.Stamp{}, fmt.Errorf("tombstone of %s on %s: %w", c, m.Nodes[i].Name, err)
		}
		newest = stamp.Max(newest, s)
	}
	return newest, nil
}

// recordsOn reads p's version records on node i.
func (h *Healer) recordsOn(ctx context.Context, m *cluster.Membership, i int, user, p string) ([]*versionRecord, error) {
	dir := tombstone.VersionDir(p)
	d, err := h.api.list(ctx, m.Nodes[i].API(), user, dir)
	if errors.Is(err, errNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("version records of %s: %w", p, err)
	}
	var out []*versionRecord
	for _, f := range d.Files {
		b, err := h.body(ctx, m, i, user, dir+"/"+f.Name, f.Size, f.ModTime)
		if errors.Is(err, errNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("version records of %s: %w", p, err)
		}
		if r, err := parseRecord(f.Name, b); err == nil {
			out = append(out, r)
		}
	}
	return out, nil
}

// parseRecord decodes the version or intent record in file name.
func parseRecord(name string, b []byte) (*versionRecord, error) {
	v, s, err := tombstone.ParseVersion(b)
	if err != nil {
		return nil, err
	}
	return &versionRecord{path: v.Path, stamp: s, size: v.Size, sum: v.SHA256, pending: tombstone.IsPending(name)}, nil
}

// addRecords merges version records into a set, once per stamp and kind.
func addRecords(set []*versionRecord, rs ...*versionRecord) []*versionRecord {
	for _, r := range rs {
		if !slices.ContainsFunc(set, func(o *versionRecord) bool { return o.stamp == r.stamp && o.pending == r.pending }) {
			set = append(set, r)
		}
	}
	return set
}

// stampStockCopies gives every unstamped copy the stamp of the newest
// recorded version whose size and checksum it matches (hashing it, once per
// copy's bytes). A copy matching no record stays unstamped: a late or
// stale write, or data from before stamps.
func (h *Healer) stampStockCopies(ctx context.Context, v *view) error {
	for i, c := range v.copies {
		if !c.stamp.IsZero() {
			continue
		}
		for _, r := range v.records {
			if r.pending || r.size != c.size || !r.stamp.After(c.stamp) {
				continue
			}
			sum, err := h.sum(ctx, v, c, false)
			if err != nil {
				return err
			}
			if sum == r.sum {
				c.stamp, c.sum = r.stamp, sum
			}
		}
		v.copies[i] = c
	}
	return nil
}

// recordFor is the version record of stamp s, nil if none.
func (v *view) recordFor(s stamp.Stamp) *versionRecord {
	for _, r := range v.records {
		if r.stamp == s && !r.pending {
			return r
		}
	}
	return nil
}

// sum is a copy's SHA-256, from the facts cache or hashed now; fresh
// always hashes (a deep scan: rot keeps size and mtime).
func (h *Healer) sum(ctx context.Context, v *view, c replicaCopy, fresh bool) (string, error) {
	if c.sum != "" && !fresh {
		return c.sum, nil
	}
	k := factKey{node: v.m.Nodes[c.node].Name, user: v.user, path: v.path, size: c.size, mtime: c.mtime.UnixNano()}
	if s, ok := h.facts.get(k); ok && !fresh {
		c.sum = s
		v.copies[c.node] = c
		return s, nil
	}
	s, err := h.hash(ctx, v, c.node)
	if err != nil {
		return "", fmt.Errorf("hash %s on %s: %w", v.path, v.m.Nodes[c.node].Name, err)
	}
	h.facts.put(k, s)
	c.sum = s
	v.copies[c.node] = c
	return s, nil
}

// A streamed upload's checksum is known only at its end, so its version
// record follows its data; an intent record (stamp, no checksum) goes
// before. While an intent newer than what the healer would write is fresh
// and not yet followed by its record, a stock copy matching no record may be
// that upload: it is not written over or removed. An intent whose upload
// failed is removed by its proxy, or expires after the pending grace.

// PendingGrace is how long an intent protects copies: long enough for
// ordinary streamed uploads; longer ones lose the protection (docs/design.md,
// "What stock nodes can't guarantee").
const PendingGrace = time.Hour

// settling reports whether c may be an upload whose version record is not
// written yet: a stock copy matching no record, with a fresh intent of a
// version newer than than and than the key's tombstone. Fresh is by the
// intent's stamp, which the proxies' clocks issue.
func (v *view) settling(c replicaCopy, than stamp.Stamp) bool {
	if !c.stamp.IsZero() {
		return false
	}
	for _, r := range v.records {
		if r.pending && r.stamp.After(than) && r.stamp.After(v.tomb) &&
			time.Since(r.stamp.Time()) < PendingGrace && v.recordFor(r.stamp) == nil {
			return true
		}
	}
	return false
}

// errSettling says why a copy was left for a later pass.
func errSettling(v *view, node int) string {
	return fmt.Sprintf("%s on %s matches no version record, and an upload of it is in flight; left for a later pass",
		v.path, v.m.Nodes[node].Name)
}

// A stock node can't refuse an older copy: a repair copy that lands after
// a newer write on that node replaces it. The re-check of the node's copy
// right before copying (unchanged) leaves a window of a round trip, and of
// a whole transfer for a copy read from another node while it is written;
// seconds under latency. A newer write records its version (or its intent)
// on W nodes before any of its data is sent, so the key's records, read
// right before every copy on enough nodes to meet any W of them, close
// most of that window and bound the rest: no copy is made while a newer
// version is recorded or in flight, and after a copy that a newer write
// raced, the next copy's re-check finds its record and the pass copies
// onto no further node, so the newer write keeps its other copies
// (docs/design.md, "Acting on what is still true").

// guarded reports whether a copy of v's key onto node i needs the records
// re-read right before it: a cring node refuses a copy older than what it
// holds, and cring's own files are versions of themselves.
func (h *Healer) guarded(v *view, i int) bool {
	return v.m.Nodes[i].Stock() && !tombstone.Reserved(v.path)
}

// inFlightWindow is how long after its stamp a write known when the key
// was judged (a version record with no copy yet, or an intent) still counts
// as on its way to a node: its data goes out right after its record or
// intent, and a write still streaming after that lands after any copy
// made meanwhile (so it wins on that node). One older than that is a write
// that failed, or whose proxy died: blocking copies for it would keep the
// key off its N replicas (an intent's own grace, PendingGrace, keeps
// protecting the copies that may be its upload).
const inFlightWindow = 30 * time.Second

// errNewerVersion: a version newer than the one a repair would copy is
// recorded or in flight.
var errNewerVersion = errors.New("a newer version is being written")

// newerVersion reads the key's version records on enough nodes to meet
// every W of them (dst first) and reports a version newer than win and
// than the key's tombstone that a copy of win could write over: one the
// view did not know of, or a write or upload still in flight.
func (h *Healer) newerVersion(ctx context.Context, v *view, dst int, win stamp.Stamp) error {
	found, err := h.quorumRecords(ctx, v, dst)
	if err != nil {
		return fmt.Errorf("re-check %s before copying: %w", v.path, err)
	}
	all := addRecords(slices.Clone(v.records), found...)
	for _, r := range found {
		if !r.stamp.After(win) || !r.stamp.After(v.tomb) {
			continue
		}
		if !slices.ContainsFunc(v.records, func(o *versionRecord) bool { return o.stamp == r.stamp && o.pending == r.pending }) {
			return fmt.Errorf("%s: %w (%s, recorded since it was judged)", v.path, errNewerVersion, r.stamp)
		}
		inFlight := time.Since(r.stamp.Time()) < inFlightWindow
		if r.pending {
			inFlight = inFlight && !slices.ContainsFunc(all, func(o *versionRecord) bool { return o.stamp == r.stamp && !o.pending })
		}
		if inFlight {
			return fmt.Errorf("%s: %w (%s, in flight)", v.path, errNewerVersion, r.stamp)
		}
	}
	return nil
}

// quorumRecords lists the key's version records by name on nodes - W + 1
// nodes (any record stored at W is on one of them), asked at once, dst
// first; a node that fails is replaced by the next.
func (h *Healer) quorumRecords(ctx context.Context, v *view, dst int) ([]*versionRecord, error) {
	order := []int{dst}
	for i := range v.m.Nodes {
		if i != dst && !v.unknown[i] && v.m.Health.Healthy(i) {
			order = append(order, i)
		}
	}
	need := len(v.m.Nodes) - v.m.W + 1
	var found []*versionRecord
	var errs []error
	for need > 0 && len(order) > 0 {
		ask := order[:min(need, len(order))]
		order = order[len(ask):]
		recs := make([][]*versionRecord, len(ask))
		errsOf := make([]error, len(ask))
		var wg sync.WaitGroup
		for k, i := range ask {
			wg.Go(func() { recs[k], errsOf[k] = h.recordNames(ctx, v, i) })
		}
		wg.Wait()
		for k := range ask {
			if errsOf[k] != nil {
				errs = append(errs, errsOf[k])
				continue
			}
			found = append(found, recs[k]...)
			need--
		}
	}
	if need > 0 {
		return nil, fmt.Errorf("%d more nodes must answer: %w", need, errors.Join(errs...))
	}
	return found, nil
}

// recordNames lists the key's version records on node i by name (a
// record's name is its stamp; no body is read).
func (h *Healer) recordNames(ctx context.Context, v *view, i int) ([]*versionRecord, error) {
	d, err := h.api.list(ctx, v.m.Nodes[i].API(), v.user, tombstone.VersionDir(v.path))
	if errors.Is(err, errNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("version records on %s: %w", v.m.Nodes[i].Name, err)
	}
	var out []*versionRecord
	for _, f := range d.Files {
		s, pending, err := tombstone.RecordName(f.Name)
		if err != nil || f.IsDir {
			continue
		}
		out = append(out, &versionRecord{stamp: s, pending: pending})
	}
	return out, nil
}
