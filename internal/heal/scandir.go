package heal

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"

	"github.com/cring-dev/cring/internal/cluster"
	"github.com/cring-dev/cring/internal/stamp"
	"github.com/cring-dev/cring/internal/tombstone"
)

// A scan holds one directory of a user's tree at a time, never the tree
// (docs/performance.md, "Scans"): it lists a directory on every node, checks
// its files, then goes into its subdirectories. Besides the directory at
// hand it keeps the user's tombstones (name → newest stamp) and the names
// of the keys that have version records, each one directory of cring's own,
// so a scan's memory is bounded by the largest directory, whatever the
// number of files.

// userScan is one user's scan in progress.
type userScan struct {
	h    *Healer
	m    *cluster.Membership
	user string
	o    ScanOptions
	rep  *Report
	prog *Progress

	// unknown: nodes that could not be read (down at the start, or failed
	// a read since): their copies are unknown from then on, as a whole
	// node's were when trees were read whole.
	unknown map[int]bool
	// tombs: tombstone name → the newest stamp on any node.
	tombs map[string]stamp.Stamp
	// versions: version directory name → the nodes holding it, and
	// whether a key's check has read it yet.
	versions map[string]*versionDir
	// tombCopies: each tombstone's copies by node (collecting a deleted
	// key's records needs its tombstone on N).
	tombCopies map[string]map[int]replicaCopy
	usage      UserUsage
}

type versionDir struct {
	nodes []int
	read  bool
}

func (s *userScan) failed(i int, err error) {
	if s.unknown[i] {
		return
	}
	n := s.m.Nodes[i].Name
	s.h.log.Warn("scan: cannot read node", "node", n, "user", s.user, "err", err)
	s.unknown[i] = true
	if !slices.Contains(s.rep.Unreachable, n) {
		s.rep.Unreachable = append(s.rep.Unreachable, n) // not read in full
	}
}

func (s *userScan) known() []int {
	var out []int
	for i := range s.m.Nodes {
		if !s.unknown[i] {
			out = append(out, i)
		}
	}
	return out
}

// scanDirs is scanUser: cring's own records first (without them a deleted
// or replaced file elsewhere would look like one to copy back), then the
// tree a directory at a time, then the records no key read.
func (h *Healer) scanDirs(ctx context.Context, m *cluster.Membership, user string, o ScanOptions, rep *Report, prog *Progress) error {
	s := &userScan{h: h, m: m, user: user, o: o, rep: rep, prog: prog, unknown: map[int]bool{},
		tombs: map[string]stamp.Stamp{}, versions: map[string]*versionDir{}, usage: UserUsage{User: user}}
	for i := range m.Nodes {
		if !m.Health.Healthy(i) {
			s.unknown[i] = true
		}
	}
	tombCopies := s.readTombstones(ctx)
	s.tombCopies = tombCopies
	s.readVersionDirs(ctx)
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := h.walkTree(ctx, m, user, "", s.known, s.failed, s.checkDir); err != nil {
		return err
	}
	for name, vd := range s.versions {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !vd.read {
			// Records of a key no node holds any more.
			recs, files := s.records(ctx, name)
			s.keepRecords(ctx, name, files, s.collectDeleted(ctx, recs))
		}
	}
	for name, copies := range tombCopies {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.keepRecord(ctx, tombstone.Dir+"/"+name, copies)
	}
	if s.usage.Files > 0 {
		rep.UserUsage = append(rep.UserUsage, s.usage)
	}
	h.collectTombstones(ctx, m, user, s.tombs, len(s.unknown) == 0, o.DryRun, rep)
	return ctx.Err()
}

// readTombstones lists the user's tombstones on every node and reads their
// stamps (once per copy: the facts cache); it returns every node's copies
// by name, for keepRecord.
func (s *userScan) readTombstones(ctx context.Context) map[string]map[int]replicaCopy {
	copies := map[string]map[int]replicaCopy{}
	for _, i := range s.known() {
		d, err := s.h.api.list(ctx, s.m.Nodes[i].API(), s.user, tombstone.Dir)
		if errors.Is(err, errNotFound) {
			continue
		}
		if err == nil {
			for _, f := range d.Files {
				if f.IsDir {
					continue
				}
				var b []byte
				b, err = s.h.body(ctx, s.m, i, s.user, tombstone.Dir+"/"+f.Name, f.Size, f.ModTime)
				if errors.Is(err, errNotFound) {
					err = nil
					continue // removed meanwhile
				}
				if err != nil {
					break
				}
				st := recordStamp(tombstone.Dir+"/"+f.Name, b)
				s.tombs[f.Name] = stamp.Max(s.tombs[f.Name], st)
				if copies[f.Name] == nil {
					copies[f.Name] = map[int]replicaCopy{}
				}
				copies[f.Name][i] = replicaCopy{node: i, size: f.Size, mtime: f.ModTime, stamp: st}
			}
		}
		if err != nil {
			s.failed(i, err)
		}
	}
	return copies
}

// readVersionDirs lists which keys have version records on which node.
func (s *userScan) readVersionDirs(ctx context.Context) {
	for _, i := range s.known() {
		d, err := s.h.api.list(ctx, s.m.Nodes[i].API(), s.user, tombstone.Versions)
		if errors.Is(err, errNotFound) {
			continue
		}
		if err != nil {
			s.failed(i, err)
			continue
		}
		for _, f := range d.Files {
			if !f.IsDir {
				continue
			}
			vd := s.versions[f.Name]
			if vd == nil {
				vd = &versionDir{}
				s.versions[f.Name] = vd
			}
			vd.nodes = append(vd.nodes, i)
		}
	}
}

// records reads the version records in one version directory on every
// node holding it, and returns them and their files' copies by name, for
// keepRecords.
func (s *userScan) records(ctx context.Context, name string) ([]*versionRecord, map[string]map[int]replicaCopy) {
	vd := s.versions[name]
	if vd == nil {
		return nil, nil
	}
	vd.read = true
	dir := tombstone.Versions + "/" + name
	copies := map[string]map[int]replicaCopy{}
	var recs []*versionRecord
	for _, i := range vd.nodes {
		if s.unknown[i] {
			continue
		}
		d, err := s.h.api.list(ctx, s.m.Nodes[i].API(), s.user, dir)
		if errors.Is(err, errNotFound) {
			continue // removed since it was listed
		}
		if err == nil {
			for _, f := range d.Files {
				if f.IsDir {
					continue
				}
				p := dir + "/" + f.Name
				var b []byte
				b, err = s.h.body(ctx, s.m, i, s.user, p, f.Size, f.ModTime)
				if errors.Is(err, errNotFound) {
					err = nil
					continue
				}
				if err != nil {
					break
				}
				if copies[f.Name] == nil {
					copies[f.Name] = map[int]replicaCopy{}
				}
				copies[f.Name][i] = replicaCopy{node: i, size: f.Size, mtime: f.ModTime, stamp: recordStamp(p, b)}
				if r, err := parseRecord(f.Name, b); err == nil {
					recs = addRecords(recs, r)
				}
			}
		}
		if err != nil {
			s.failed(i, err)
		}
	}
	return recs, copies
}

// keepRecords keeps the record files of version directory name on their
// N replicas, but for the ones collected.
func (s *userScan) keepRecords(ctx context.Context, name string, copies map[string]map[int]replicaCopy, collected map[string]bool) {
	dir := tombstone.Versions + "/" + name
	for _, f := range slices.Sorted(maps.Keys(copies)) {
		if !collected[f] {
			s.keepRecord(ctx, dir+"/"+f, copies[f])
		}
	}
}

// keepRecord brings one of cring's own files (a tombstone, a version
// record) back to its N replicas: they decide which copies win, so they
// must outlive the nodes that hold them. They are not counted in the report.
func (s *userScan) keepRecord(ctx context.Context, p string, copies map[int]replicaCopy) {
	h := s.h
	v := &view{m: s.m, user: s.user, path: p, copies: map[int]replicaCopy{}, unknown: s.unknown,
		replicas: s.m.Ring.Preference(s.user + "/" + p)[:s.m.Ring.Replicas()]}
	for i, c := range copies {
		if !s.unknown[i] {
			v.copies[i] = c
		}
	}
	if h.healthy(ctx, v) {
		return
	}
	if h.limiter != nil && !s.o.DryRun {
		h.limiter(ctx)
	}
	if res := h.repair(ctx, v, s.o.DryRun, false); res.Err != "" {
		h.log.Warn("scan: cannot repair a record", "user", s.user, "path", p, "err", res.Err)
	}
}

// checkDir checks the files of one directory, then collects the records
// its settled keys no longer need (collect.go).
func (s *userScan) checkDir(ctx context.Context, d *treeDir) error {
	var settled []gcKey
	defer func() {
		var gone map[string]map[string]bool
		if len(settled) > 0 && ctx.Err() == nil {
			gone = s.collectDir(ctx, d.dir, settled)
		}
		for _, k := range settled {
			if ctx.Err() != nil {
				return
			}
			s.keepRecords(ctx, tombstone.Name(k.v.path), k.files, gone[k.v.path])
		}
	}()
	for _, name := range d.names {
		if err := ctx.Err(); err != nil {
			return err
		}
		p := name
		if d.dir != "" {
			p = d.dir + "/" + name
		}
		v := &view{m: s.m, user: s.user, path: p, copies: map[int]replicaCopy{}, unknown: s.unknown,
			replicas: s.m.Ring.Preference(s.user + "/" + p)[:s.m.Ring.Replicas()]}
		for i, files := range d.on {
			if f, ok := files[name]; ok && !f.IsDir && !s.unknown[i] {
				c := replicaCopy{node: i, size: f.Size, mtime: f.ModTime}
				c.stamp, _ = stamp.Parse(f.Stamp)
				v.copies[i] = c
			}
		}
		if len(v.copies) == 0 {
			continue // a directory on every node that lists it
		}
		for _, c := range tombstone.Covering(p) {
			v.tomb = stamp.Max(v.tomb, s.tombs[tombstone.Name(c)])
		}
		var files map[string]map[int]replicaCopy
		v.records, files = s.records(ctx, tombstone.Name(p))
		for i := range v.copies {
			if s.unknown[i] {
				delete(v.copies, i) // its records could not be read
			}
		}
		s.count(v)
		s.rep.Keys++
		s.h.progress(s.prog, func(p *Progress) { p.Keys++ })
		s.h.check(ctx, v, s.o, s.rep)
		if win, ok := s.h.settledVersion(ctx, v); ok && s.h.oldRecords(v, win) {
			settled = append(settled, gcKey{v: v, win: win, files: files})
			continue // its records are kept (or collected) once the directory is done
		}
		s.keepRecords(ctx, tombstone.Name(p), files, nil)
	}
	return nil
}

// count adds a key's copies to the usage figures.
func (s *userScan) count(v *view) {
	first := true
	for _, i := range v.m.Ring.Preference(s.user + "/" + v.path) {
		c, ok := v.copies[i]
		if !ok {
			continue
		}
		nu := s.rep.Nodes[s.m.Nodes[i].Name]
		if nu == nil {
			nu = &NodeUsage{}
			s.rep.Nodes[s.m.Nodes[i].Name] = nu
		}
		nu.Files++
		nu.Bytes += c.size
		if first {
			s.usage.Files++
			s.usage.Bytes += c.size
			first = false
		}
	}
}

// treeDir is one directory as the nodes listed it.
type treeDir struct {
	dir   string
	names []string                   // every entry any node listed, sorted
	on    map[int]map[string]listing // node → its entries by name
}

// walkTree lists dir on the nodes known() returns, hands the listing to
// visit, then walks each subdirectory any node listed, depth first: one
// directory is held at a time (and the names of the subdirectories still
// to walk above it). cring's own directory is never walked. A node that
// cannot list a directory is reported to failed and left out.
func (h *Healer) walkTree(ctx context.Context, m *cluster.Membership, user, dir string, known func() []int, failed func(int, error), visit func(context.Context, *treeDir) error) error {
	nodes := known()
	lists := make([]*listing, len(nodes))
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for k, i := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lists[k], errs[k] = h.api.list(ctx, m.Nodes[i].API(), user, dir)
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	d := &treeDir{dir: dir, on: map[int]map[string]listing{}}
	seen := map[string]bool{}
	isSub := map[string]bool{}
	var subdirs []string
	for k, i := range nodes {
		if errors.Is(errs[k], errNotFound) {
			continue // nothing there on this node
		}
		if errs[k] != nil {
			failed(i, errs[k])
			continue
		}
		files := make(map[string]listing, len(lists[k].Files))
		for _, f := range lists[k].Files {
			p := f.Name
			if dir != "" {
				p = dir + "/" + f.Name
			}
			if tombstone.Reserved(p) {
				continue
			}
			f.Files = nil
			files[f.Name] = f
			if !seen[f.Name] {
				seen[f.Name] = true
				d.names = append(d.names, f.Name)
			}
			if f.IsDir && !isSub[f.Name] {
				isSub[f.Name] = true
				subdirs = append(subdirs, f.Name)
			}
		}
		d.on[i] = files
		lists[k] = nil
	}
	slices.Sort(d.names)
	if err := visit(ctx, d); err != nil {
		return err
	}
	d, seen, isSub = nil, nil, nil // only the subdirectories' names are kept while walking them
	slices.Sort(subdirs)
	for _, sub := range subdirs {
		p := sub
		if dir != "" {
			p = dir + "/" + sub
		}
		if err := h.walkTree(ctx, m, user, p, known, failed, visit); err != nil {
			return err
		}
	}
	return nil
}
