package heal

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/cring-dev/cring/internal/stamp"
	"github.com/cring-dev/cring/internal/tombstone"
)

// Version and intent records are written once per upload and never
// changed, so a key's records grow with its history, and every upload and
// repair copy onto a stock node lists them. A scan collects the ones the
// key's state has made useless (docs/design.md, "Collecting records"):
//   - a live key whose one version is on every replica, with its record:
//     the records and intents older than that version (and its own intent);
//   - a deleted key no node holds a copy of: the records and intents no
//     newer than the tombstone covering it (when that tombstone is on its N
//     replicas), and any older than the tombstone grace.
// A record newer than what the key holds (a write in flight, or one that
// failed) is kept, and so is any record younger than inFlightWindow: a write
// still on its way keeps its record. Without its record an old copy (a node
// that was away, a late write) matches none and is unstamped: it loses to
// the stamped version every replica holds, as it lost to it before.

// collectable reports whether record r may go once win is the key's
// settled version (or its tombstone): a version record older than win, an
// intent no newer than it (win's own intent is done once its record is
// written), past the in-flight window either way.
func (h *Healer) collectable(r *versionRecord, win stamp.Stamp) bool {
	older := win.After(r.stamp) || r.pending && r.stamp == win
	return older && h.pastFlight(r)
}

// pastFlight reports whether r's write is older than the in-flight window:
// a write still on its way keeps its record and intent.
func (h *Healer) pastFlight(r *versionRecord) bool {
	return h.now().Sub(r.stamp.Time()) >= inFlightWindow
}

// settledVersion is the version every replica of v's key holds when the
// key is settled: every node answered, every replica and no other node holds
// a live copy of one stamped version, and that version's record is there (it
// stays: reads of stock copies verify against it, and an upload older than it
// is refused for it). ok is false otherwise.
func (h *Healer) settledVersion(ctx context.Context, v *view) (win stamp.Stamp, ok bool) {
	if len(v.unknown) > 0 || len(v.copies) != len(v.replicas) {
		return stamp.Stamp{}, false
	}
	for i := range v.m.Nodes {
		if h.Owed(v.user, v.path, v.m.Nodes[i].Name) {
			return stamp.Stamp{}, false // a hint's replay will judge it first
		}
	}
	if err := h.stampStockCopies(ctx, v); err != nil {
		return stamp.Stamp{}, false
	}
	for k, i := range v.replicas {
		c, ok := v.copies[i]
		if !ok || c.stamp.IsZero() || v.dead(c) || k > 0 && c.stamp != win {
			return stamp.Stamp{}, false
		}
		win = c.stamp
	}
	if v.recordFor(win) == nil {
		return stamp.Stamp{}, false // a cring node's version, or records from before this one
	}
	return win, true
}

// gcKey is a key judged settled, its records to collect once re-checked.
type gcKey struct {
	v     *view
	win   stamp.Stamp
	files map[string]map[int]replicaCopy // its record files by name, as read
}

// oldRecords reports whether v holds a record win makes collectable.
func (h *Healer) oldRecords(v *view, win stamp.Stamp) bool {
	for _, r := range v.records {
		if h.collectable(r, win) {
			return true
		}
	}
	return false
}

// collectDir collects the records of the settled keys of one directory,
// after re-reading the directory on every node (at most recheckAge before
// each key's removals; every node must answer) and finding each key's
// replicas unchanged since it was judged. It returns the record files
// removed, by key.
func (s *userScan) collectDir(ctx context.Context, dir string, keys []gcKey) map[string]map[string]bool {
	h := s.h
	out := map[string]map[string]bool{}
	var fresh map[int]map[string]listing
	var at time.Time
	for _, k := range keys {
		if ctx.Err() != nil || len(s.unknown) > 0 {
			return out
		}
		if h.limiter != nil {
			h.limiter(ctx) // the key's deletes count as one repair
		}
		if fresh == nil || time.Since(at) > recheckAge {
			var err error
			if fresh, err = s.listEverywhere(ctx, dir); err != nil {
				h.log.Warn("scan: records not collected", "user", s.user, "dir", dir, "err", err)
				return out
			}
			at = time.Now()
		}
		_, name := path.Split(k.v.path)
		if !unchangedEverywhere(k.v, fresh, name) {
			continue // judged on what is no longer there: the next scan judges it again
		}
		out[k.v.path] = s.collectKey(ctx, k.v, k.win, func(r *versionRecord) bool { return h.collectable(r, k.win) })
	}
	return out
}

// listEverywhere lists dir on every node; any node failing fails it.
func (s *userScan) listEverywhere(ctx context.Context, dir string) (map[int]map[string]listing, error) {
	out := map[int]map[string]listing{}
	for i := range s.m.Nodes {
		d, err := s.h.api.list(ctx, s.m.Nodes[i].API(), s.user, dir)
		if errors.Is(err, errNotFound) {
			out[i] = nil
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("re-read %s on %s: %w", dir, s.m.Nodes[i].Name, err)
		}
		files := make(map[string]listing, len(d.Files))
		for _, f := range d.Files {
			f.Files = nil
			files[f.Name] = f
		}
		out[i] = files
	}
	return out, nil
}

// unchangedEverywhere reports whether every node still lists what v says
// of the key: the same bytes (size and modification time, and the stamp a
// cring node lists) on each node that held a copy, nothing on the others.
func unchangedEverywhere(v *view, fresh map[int]map[string]listing, name string) bool {
	for i := range v.m.Nodes {
		f, listed := fresh[i][name]
		listed = listed && !f.IsDir
		c, had := v.copies[i]
		if listed != had {
			return false
		}
		if !had {
			continue
		}
		st, _ := stamp.Parse(f.Stamp)
		if f.Size != c.size || !f.ModTime.Equal(c.mtime) || !st.IsZero() && st != c.stamp {
			return false
		}
	}
	return true
}

// collectKey removes v's records that gc selects, read again on every node
// right before (by name: a record's name is its stamp, and the file under
// a name never changes). Every node must answer, and unless win is zero
// the record of win itself must still be listed. It returns the record
// files removed (or, dry, that would be).
func (s *userScan) collectKey(ctx context.Context, v *view, win stamp.Stamp, gc func(*versionRecord) bool) map[string]bool {
	h := s.h
	names := make([][]*versionRecord, len(v.m.Nodes))
	haveWin := false
	for i := range v.m.Nodes {
		recs, err := h.recordNames(ctx, v, i)
		if err != nil {
			h.log.Warn("scan: records not collected", "user", v.user, "path", v.path, "err", err)
			return nil
		}
		names[i] = recs
		for _, r := range recs {
			haveWin = haveWin || r.stamp == win && !r.pending
		}
	}
	if !win.IsZero() && !haveWin {
		return nil // not what was judged any more
	}
	gone := map[string]bool{}
	dir := tombstone.VersionDir(v.path)
	for i, recs := range names {
		for _, r := range recs {
			if !gc(r) {
				continue
			}
			name := recordFile(r)
			if !s.o.DryRun {
				// Unconditional: the file under this name is this record and
				// nothing else, now and later.
				if err := h.api.remove(ctx, v.m.Nodes[i].API(), v.user, dir+"/"+name, stamp.Stamp{}); err != nil && !errors.Is(err, errNotFound) {
					h.log.Warn("scan: cannot collect a record", "node", v.m.Nodes[i].Name, "user", v.user, "path", v.path, "err", err)
					continue
				}
			}
			gone[name] = true
		}
	}
	if len(gone) > 0 {
		s.rep.RecordsGC += len(gone)
		h.counts.add("records_collected")
		h.log.Debug("collected version records", "user", v.user, "path", v.path, "records", len(gone), "version", win.String())
	}
	return gone
}

// recordFile is the file name of a record.
func recordFile(r *versionRecord) string {
	if r.pending {
		return r.stamp.String() + ".pending"
	}
	return r.stamp.String()
}

// collectDeleted collects the records of a key no node holds a copy of
// (every node read): those no newer than a tombstone covering the key that
// is on its N replicas, and those older than the tombstone grace (a key
// whose tombstone was collected, or whose writes all failed). Right before,
// every node is asked again for the key alone. It returns the record files
// removed.
func (s *userScan) collectDeleted(ctx context.Context, recs []*versionRecord) map[string]bool {
	h := s.h
	if len(s.unknown) > 0 || len(recs) == 0 || recs[0].path == "" || tombstone.Reserved(recs[0].path) {
		return nil
	}
	p := recs[0].path
	upTo := h.now().Add(-h.grace) // anything older than the grace
	bound := stamp.Stamp{}
	for _, c := range tombstone.Covering(p) {
		if t := s.tombs[tombstone.Name(c)]; t.After(bound) && s.tombOnReplicas(tombstone.Path(c), t) {
			bound = t
		}
	}
	gc := func(r *versionRecord) bool {
		return (!bound.IsZero() && !r.stamp.After(bound) || r.stamp.Time().Before(upTo)) && h.pastFlight(r)
	}
	some := false
	for _, r := range recs {
		if r.path != p {
			return nil // not one key's records: leave them
		}
		some = some || gc(r)
	}
	if !some {
		return nil
	}
	if h.limiter != nil {
		h.limiter(ctx)
	}
	for i := range s.m.Nodes {
		if h.Owed(s.user, p, s.m.Nodes[i].Name) || !h.api.absent(ctx, s.m.Nodes[i].API(), s.user, p) {
			return nil // owed, written since, or unreadable: judged again next time
		}
	}
	return s.collectKey(ctx, &view{m: s.m, user: s.user, path: p}, stamp.Stamp{}, gc)
}

// tombOnReplicas reports whether tombstone file tp with stamp t (or newer)
// is on each of its N replicas.
func (s *userScan) tombOnReplicas(tp string, t stamp.Stamp) bool {
	copies := s.tombCopies[strings.TrimPrefix(tp, tombstone.Dir+"/")]
	for _, i := range s.m.Ring.Preference(s.user + "/" + tp)[:s.m.Ring.Replicas()] {
		if c, ok := copies[i]; !ok || t.After(c.stamp) {
			return false
		}
	}
	return true
}
