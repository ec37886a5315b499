package heal

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/cring-dev/cring/internal/cluster"
	"github.com/cring-dev/cring/internal/stamp"
	"github.com/cring-dev/cring/internal/tombstone"
)

// ScanOptions tune one scan.
type ScanOptions struct {
	DryRun bool     // report, change nothing
	Deep   bool     // hash every copy (finds silent corruption; reads everything)
	Users  []string // only these users; default every known user
	// Progress, if set, is called as users and keys are done.
	Progress func(Progress)
}

// Progress of a scan.
type Progress struct {
	Started    time.Time `json:"started"`
	UsersDone  int       `json:"users_done"`
	UsersTotal int       `json:"users_total"`
	Keys       int       `json:"keys_checked"`
}

// progress updates the running scan's progress under the healer's lock.
func (h *Healer) progress(p *Progress, f func(*Progress)) Progress {
	h.mu.Lock()
	defer h.mu.Unlock()
	f(p)
	return *p
}

// Report sums up a scan.
type Report struct {
	Started         time.Time `json:"started"`
	Duration        string    `json:"duration"`
	DryRun          bool      `json:"dry_run"`
	Deep            bool      `json:"deep"`
	Users           int       `json:"users"`
	Keys            int       `json:"keys"`
	Healthy         int       `json:"healthy"`
	UnderReplicated int       `json:"under_replicated"` // a replica missing its copy
	// UnderReplicatedLeft: of those, the keys the scan could not repair
	// (or, dry, did not): what is still under-replicated after it.
	UnderReplicatedLeft int      `json:"under_replicated_left"`
	Misplaced           int      `json:"misplaced"`       // copies outside their replicas (rebalancing)
	Differing           int      `json:"differing"`       // replicas disagree (stale, truncated, corrupt)
	Resurrected         int      `json:"deleted_present"` // deleted, yet copies remained
	Repaired            int      `json:"repaired"`
	Failed              int      `json:"failed"`
	Unreachable         []string `json:"unreachable_nodes,omitempty"`
	TombstonesGC        int      `json:"tombstones_collected"`
	// RecordsGC: version and intent records collected (or, dry, that
	// would be): older than the version every replica holds, or than a
	// deleted key's tombstone (collect.go).
	RecordsGC int      `json:"records_collected"`
	Fixes     []Result `json:"fixes,omitempty"`
	// Usage: what each node holds (blob distribution) and each user stores.
	Nodes     map[string]*NodeUsage `json:"nodes,omitempty"`
	UserUsage []UserUsage           `json:"users_by_size,omitempty"` // largest first, at most 100
	// LeftToReplay: keys skipped because a hint owed to a node that is up
	// will repair them (replay and scans never repair a key twice).
	LeftToReplay int `json:"left_to_replay,omitempty"`
}

// NodeUsage is one node's share of the cluster's copies.
type NodeUsage struct {
	Files int   `json:"files"`
	Bytes int64 `json:"bytes"`
	// FairShare is the files it would hold if copies were spread evenly
	// over the nodes that hold replicas; Deviation is (files-fair)/fair.
	FairShare float64 `json:"fair_share"`
	Deviation float64 `json:"deviation"`
}

// UserUsage is one user's files (counted once, whatever the copies).
type UserUsage struct {
	User  string `json:"user"`
	Files int    `json:"files"`
	Bytes int64  `json:"bytes"`
}

// usage finishes the report's distribution figures.
func (r *Report) usage(m *cluster.Membership) {
	total, holders := 0, 0
	for _, n := range m.Nodes {
		if !n.Drain {
			holders++
		}
		if u := r.Nodes[n.Name]; u != nil {
			total += u.Files
		}
	}
	if holders == 0 {
		return
	}
	fair := float64(total) / float64(holders)
	for _, n := range m.Nodes {
		u := r.Nodes[n.Name]
		if u == nil {
			continue
		}
		if !n.Drain {
			u.FairShare = fair
		}
		if u.FairShare > 0 {
			u.Deviation = (float64(u.Files) - u.FairShare) / u.FairShare
		}
	}
	sort.Slice(r.UserUsage, func(a, b int) bool { return r.UserUsage[a].Bytes > r.UserUsage[b].Bytes })
	if len(r.UserUsage) > 100 {
		r.UserUsage = r.UserUsage[:100]
	}
}

// nodeFile is a file's metadata on one node.
type nodeFile struct {
	size  int64
	mtime time.Time
	stamp stamp.Stamp // listed by a cring node; for cring's own files, from the body
}

// Scan walks every known user's files on every reachable node and repairs
// (or, dry, reports) every key that is not on exactly its replicas with
// identical copies.
func (h *Healer) Scan(ctx context.Context, o ScanOptions) (*Report, error) {
	users := o.Users
	if len(users) == 0 {
		users = h.users(ctx)
	}
	rep := &Report{Started: time.Now(), DryRun: o.DryRun, Deep: o.Deep, Users: len(users), Nodes: map[string]*NodeUsage{}}
	prog := &Progress{Started: rep.Started, UsersTotal: len(users)}
	h.mu.Lock()
	h.scanning = prog
	h.mu.Unlock()
	defer func() {
		rep.Duration = time.Since(rep.Started).Round(time.Millisecond).String()
		h.mu.Lock()
		h.scanning = nil
		if !o.DryRun {
			h.lastScan = rep
		}
		h.mu.Unlock()
	}()
	m := h.mem.Load()
	for i, n := range m.Nodes {
		if !m.Health.Healthy(i) {
			rep.Unreachable = append(rep.Unreachable, n.Name)
		}
	}
	for _, u := range users {
		if err := h.scanUser(ctx, m, u, o, rep, prog); err != nil {
			return rep, fmt.Errorf("scan %s: %w", u, err)
		}
		snap := h.progress(prog, func(p *Progress) { p.UsersDone++ })
		if o.Progress != nil {
			o.Progress(snap)
		}
	}
	rep.usage(m)
	h.log.Info("scan done", "users", rep.Users, "keys", rep.Keys, "healthy", rep.Healthy, "repaired", rep.Repaired,
		"under_replicated", rep.UnderReplicated, "misplaced", rep.Misplaced, "differing", rep.Differing, "failed", rep.Failed)
	return rep, nil
}

// scanUser checks every key of one user, a directory at a time (scandir.go).
func (h *Healer) scanUser(ctx context.Context, m *cluster.Membership, user string, o ScanOptions, rep *Report, prog *Progress) error {
	return h.scanDirs(ctx, m, user, o, rep, prog)
}

// check classifies one key and repairs it when needed.
func (h *Healer) check(ctx context.Context, v *view, o ScanOptions, rep *Report) {
	if !o.Deep && !o.DryRun && h.replayOwns(v) {
		rep.LeftToReplay++
		return
	}
	if !o.Deep && h.healthy(ctx, v) {
		rep.Healthy++
		return
	}
	if h.limiter != nil && !o.DryRun {
		h.limiter(ctx)
	}
	res := h.repair(ctx, v, o.DryRun, o.Deep)
	switch res.Problem {
	case "":
		rep.Healthy++
		return
	case "missing replica":
		rep.UnderReplicated++
	case "copy outside its replicas":
		rep.Misplaced++
	case "replicas differ":
		rep.Differing++
	case "deleted, but copies remain":
		rep.Resurrected++
	}
	if res.Err != "" {
		rep.Failed++
	} else if res.changed() && !o.DryRun {
		rep.Repaired++
	}
	if res.Problem == "missing replica" && (res.Err != "" || o.DryRun) {
		rep.UnderReplicatedLeft++
	}
	if len(rep.Fixes) < 1000 {
		rep.Fixes = append(rep.Fixes, res)
	}
}

// walk lists a user's tree on node i, files only, skipping cring's own
// directory.
func (h *Healer) walk(ctx context.Context, m *cluster.Membership, i int, user, dir string, out map[string]nodeFile) error {
	d, err := h.api.list(ctx, m.Nodes[i].API(), user, dir)
	if errors.Is(err, errNotFound) {
		return nil // user has nothing on this node
	}
	if err != nil {
		return err
	}
	for _, f := range d.Files {
		p := f.Name
		if dir != "" {
			p = dir + "/" + f.Name
		}
		// cring's own directory: only tombstones and version records,
		// which are keys too.
		if tombstone.Reserved(p) && p != tombstone.Root && p != tombstone.Dir && !isUnder(p, tombstone.Dir) &&
			p != tombstone.Versions && !isUnder(p, tombstone.Versions) {
			continue
		}
		if f.IsDir {
			if err := h.walk(ctx, m, i, user, p, out); err != nil {
				return err
			}
			continue
		}
		nf := nodeFile{size: f.Size, mtime: f.ModTime}
		nf.stamp, _ = stamp.Parse(f.Stamp)
		out[p] = nf
	}
	return nil
}

func isUnder(p, dir string) bool { return len(p) > len(dir) && p[:len(dir)+1] == dir+"/" }

// collectTombstones deletes tombstones older than the grace period (by
// their stamps), once every node could be asked (a node that was away
// longer than the grace period may bring a deleted file back: documented).
func (h *Healer) collectTombstones(ctx context.Context, m *cluster.Membership, user string, tombs map[string]stamp.Stamp, allUp, dry bool, rep *Report) {
	if !allUp {
		return
	}
	for name, t := range tombs {
		if time.Since(t.Time()) < h.grace {
			continue
		}
		rep.TombstonesGC++
		if dry {
			continue
		}
		for i := range m.Nodes {
			n := &m.Nodes[i]
			if err := h.api.remove(ctx, n.API(), user, tombstone.Dir+"/"+name, stamp.Stamp{}); err != nil {
				h.log.Warn("cannot collect tombstone", "node", n.Name, "err", err)
			}
		}
	}
}
