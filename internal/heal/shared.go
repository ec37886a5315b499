package heal

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cring-dev/cring/internal/cluster"
	"github.com/cring-dev/cring/internal/clusterstate"
	"github.com/cring-dev/cring/internal/tombstone"
)

// With a shared store (docs/design.md, "Hints and repairs"), the hint log
// is the fast path: a hint is fsynced there before the write's ack, as
// without one, and a publisher moves it to the store in batches within
// moments, after which the log forgets it. Every proxy claims due batches
// from the store, whoever published them, and replays them as it replays
// its own; users go to the store too, and every proxy's scans walk them
// all. Reads ask a view of what the store says each node is owed, by
// directory, refreshed every second, so no request waits for the database.
// While the store fails, the log is replayed as it is without one.
const (
	publishEvery   = 100 * time.Millisecond // the longest a hint waits for the publisher when it is idle
	publishHints   = 5000                   // hints per transaction
	claimBatches   = 64                     // batches claimed at once
	viewEvery      = time.Second            // the owed view's refresh
	userCountEvery = 30 * time.Second
	// maxOwedDirs bounds the view: past it, every node owed hints in the
	// store is taken as owed everything (reads skip it).
	maxOwedDirs = 100_000
	loopTimeout = 5 * time.Second // the replay loop's calls
)

type shared struct {
	store *clusterstate.Store
	id    string // this proxy: the owner of its leases
	log   *slog.Logger
	kick  chan struct{}

	umu   sync.Mutex
	users []string // recorded, not yet published

	// unpublished: the last publish failed, so the log replays its own
	// hints meanwhile.
	unpublished atomic.Bool
	// ownReleased: the claims a previous run under this id left (killed
	// mid-replay) are given back; until then this proxy claims nothing.
	ownReleased bool
	errLogged   atomic.Int64
	// The replay loop's calls (refresh, claims) back off after a failure,
	// so a store that hangs doesn't hold up the replay of the log.
	pauseUntil atomic.Int64 // unix nanoseconds
	pause      atomic.Int64 // the last backoff

	vmu       sync.RWMutex
	owed      map[string]map[string]map[string]bool // node → user → directories it is owed hints in
	owesAll   map[string]bool                       // nodes owed too many directories to list
	full      map[string]time.Time                  // node → its full-scan mark
	pending   map[string]int64                      // node → hints in the store
	userCount int64
	since     []owedDir // added while a refresh runs, kept over its result
	running   bool
	refreshed time.Time
	counted   time.Time
}

type owedDir struct{ node, user, dir string }

func newShared(store *clusterstate.Store, id string, log *slog.Logger) *shared {
	return &shared{store: store, id: id, log: log, kick: make(chan struct{}, 1),
		owed: map[string]map[string]map[string]bool{}, owesAll: map[string]bool{}, full: map[string]time.Time{}, pending: map[string]int64{}}
}

func (s *shared) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// paused reports whether the replay loop's calls are backing off.
func (s *shared) paused() bool { return time.Now().UnixNano() < s.pauseUntil.Load() }

// loopFailed backs the replay loop's calls off, 1 s doubling to 30 s.
func (s *shared) loopFailed(what string, err error) {
	d := min(max(2*time.Duration(s.pause.Load()), time.Second), 30*time.Second)
	s.pause.Store(int64(d))
	s.pauseUntil.Store(time.Now().Add(d).UnixNano())
	s.failed(what, err)
}

func (s *shared) loopOK() { s.pause.Store(0) }

// failed logs a failed call, at most every 30 s.
func (s *shared) failed(what string, err error) {
	now := time.Now().UnixNano()
	if last := s.errLogged.Load(); now-last > int64(30*time.Second) && s.errLogged.CompareAndSwap(last, now) {
		s.log.Warn("shared state: "+what+" failed; this proxy's hints wait in its log and are replayed from it meanwhile", "err", err)
	}
}

func (s *shared) addUser(u string) {
	s.umu.Lock()
	s.users = append(s.users, u)
	s.umu.Unlock()
	s.wake()
}

func (s *shared) takeUsers() []string {
	s.umu.Lock()
	defer s.umu.Unlock()
	out := s.users
	s.users = nil
	return out
}

func (s *shared) putBack(users []string) {
	s.umu.Lock()
	s.users = append(users, s.users...)
	s.umu.Unlock()
}

// owes reports whether the store says node is owed a hint of user's, or a
// full scan.
func (s *shared) owes(user, node string) bool {
	s.vmu.RLock()
	defer s.vmu.RUnlock()
	_, full := s.full[node]
	return full || s.owesAll[node] || len(s.owed[node][user]) > 0
}

// owesPath reports whether node may lack the latest state of user's path
// by the store: a hint in path's directory or any above it (a directory
// delete's hint is in its parent's), path itself as a directory (a
// listing), or a full scan. Coarser than the key, never narrower.
func (s *shared) owesPath(user, p, node string) bool {
	s.vmu.RLock()
	defer s.vmu.RUnlock()
	if _, full := s.full[node]; full || s.owesAll[node] {
		return true
	}
	dirs := s.owed[node][user]
	if len(dirs) == 0 {
		return false
	}
	for d := p; ; {
		if dirs[d] {
			return true
		}
		if d == "" {
			return false
		}
		d, _ = splitKey(d)
	}
}

func addDir(owed map[string]map[string]map[string]bool, o owedDir) {
	if owed[o.node] == nil {
		owed[o.node] = map[string]map[string]bool{}
	}
	if owed[o.node][o.user] == nil {
		owed[o.node][o.user] = map[string]bool{}
	}
	owed[o.node][o.user][o.dir] = true
}

// addOwed puts directories just published into the view before the next
// refresh reads them back.
func (s *shared) addOwed(dirs []owedDir) {
	s.vmu.Lock()
	defer s.vmu.Unlock()
	for _, o := range dirs {
		addDir(s.owed, o)
	}
	if s.running {
		s.since = append(s.since, dirs...)
	}
}

func (s *shared) addFull(marks map[string]time.Time) {
	s.vmu.Lock()
	defer s.vmu.Unlock()
	for n, at := range marks {
		if at.After(s.full[n]) {
			s.full[n] = at
		}
	}
}

func (s *shared) clearFull(node string, started time.Time) {
	s.vmu.Lock()
	defer s.vmu.Unlock()
	if at, ok := s.full[node]; ok && started.After(at) {
		delete(s.full, node)
	}
}

func (s *shared) fullMarks() map[string]time.Time {
	s.vmu.RLock()
	defer s.vmu.RUnlock()
	return maps.Clone(s.full)
}

func (s *shared) pendingNodes() map[string]int64 {
	s.vmu.RLock()
	defer s.vmu.RUnlock()
	return maps.Clone(s.pending)
}

func (s *shared) users64() int64 {
	s.vmu.RLock()
	defer s.vmu.RUnlock()
	return s.userCount
}

// refresh reads what the store says each node is owed, at most every
// viewEvery (the user count every userCountEvery).
func (s *shared) refresh(ctx context.Context) {
	s.vmu.Lock()
	if time.Since(s.refreshed) < viewEvery {
		s.vmu.Unlock()
		return
	}
	s.refreshed, s.running, s.since = time.Now(), true, nil
	countUsers := time.Since(s.counted) >= userCountEvery
	s.vmu.Unlock()
	defer func() {
		s.vmu.Lock()
		s.running, s.since = false, nil
		s.vmu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(ctx, loopTimeout)
	defer cancel()
	nodes, err := s.store.Nodes(ctx)
	if err != nil {
		s.loopFailed("reading what nodes are owed", err)
		return
	}
	owed := map[string]map[string]map[string]bool{}
	owesAll := map[string]bool{}
	if slices.ContainsFunc(slices.Collect(maps.Values(nodes)), func(n clusterstate.NodeState) bool { return n.Hints > 0 }) {
		dirs, complete, err := s.store.OwedDirs(ctx, maxOwedDirs)
		if err != nil {
			s.loopFailed("reading what nodes are owed", err)
			return
		}
		for _, o := range dirs {
			addDir(owed, owedDir{o.Node, o.User, o.Dir})
		}
		if !complete {
			for n, st := range nodes {
				owesAll[n] = st.Hints > 0
			}
		}
	}
	var users int64 = -1
	if countUsers {
		if users, err = s.store.UserCount(ctx); err != nil {
			s.loopFailed("counting users", err)
			return
		}
	}
	s.loopOK()
	s.vmu.Lock()
	defer s.vmu.Unlock()
	for _, o := range s.since {
		addDir(owed, o)
	}
	s.owed, s.owesAll = owed, owesAll
	s.full, s.pending = map[string]time.Time{}, map[string]int64{}
	for n, st := range nodes {
		if !st.FullScanSince.IsZero() {
			s.full[n] = st.FullScanSince
		}
		if st.Hints > 0 {
			s.pending[n] = st.Hints
		}
	}
	if users >= 0 {
		s.userCount, s.counted = users, time.Now()
	}
}

// publishLoop moves hints and users to the store as they are recorded,
// until ctx ends; then once more, briefly, so a proxy stopped cleanly
// leaves nothing only it knows.
func (h *Healer) publishLoop(ctx context.Context) {
	t := time.NewTicker(publishEvery)
	defer t.Stop()
	var wait time.Duration
	var next time.Time
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			h.publish(fctx)
			cancel()
			return
		case <-h.shared.kick:
		case <-t.C:
		}
		if time.Now().Before(next) {
			continue // backing off: hints wait, durable, in the log
		}
		if h.publish(ctx) {
			wait = 0
			continue
		}
		wait = min(max(2*wait, publishEvery), 10*time.Second)
		next = time.Now().Add(wait)
	}
}

// publish moves what the log holds to the store, publishHints at a time;
// false when the store failed.
func (h *Healer) publish(ctx context.Context) bool {
	s := h.shared
	if users := s.takeUsers(); len(users) > 0 {
		if err := s.store.AddUsers(ctx, users); err != nil {
			s.putBack(users)
			s.failed("recording users", err)
			return false
		}
	}
	for {
		hs, marks := h.state.takeUnpublished(publishHints)
		if len(hs) == 0 && len(marks) == 0 {
			return true
		}
		out := make([]clusterstate.Hint, len(hs))
		dirs := make([]owedDir, 0, len(hs))
		for i, p := range hs {
			out[i] = clusterstate.Hint{Node: p.Node, User: p.User, Dir: p.dir, Name: p.name, Reserved: tombstone.Reserved(p.dir), Recorded: p.at}
			dirs = append(dirs, owedDir{p.Node, p.User, p.dir})
		}
		marked, err := s.store.Publish(ctx, out, marks)
		if err != nil {
			s.unpublished.Store(true)
			s.failed("publishing hints", err)
			return false
		}
		s.unpublished.Store(false)
		// The view first: reads must see the node owed before the log
		// forgets the hint.
		s.addOwed(dirs)
		s.addFull(marks)
		now := time.Now()
		for _, n := range marked {
			s.addFull(map[string]time.Time{n: now})
			h.log.Warn("a node is owed more hints than the limit: marked for a full scan in the shared state", "node", n)
		}
		h.state.published(hs, marks)
		h.counts.addN("hints_published", uint64(len(hs)))
		if len(hs) < publishHints {
			return true
		}
	}
}

// replayShared claims due batches of the nodes that are up from the store
// and replays them, until none is due.
func (h *Healer) replayShared(ctx context.Context, m *cluster.Membership) {
	s := h.shared
	var nodes []string
	for i, n := range m.Nodes {
		if m.Health.Healthy(i) {
			nodes = append(nodes, n.Name)
		}
	}
	for n := range s.pendingNodes() {
		if m.Index(n) < 0 {
			nodes = append(nodes, n) // no longer configured: settle them
		}
	}
	if !s.ownReleased && !s.paused() {
		cctx, cancel := context.WithTimeout(ctx, loopTimeout)
		err := s.store.ReleaseOwner(cctx, s.id)
		cancel()
		if err != nil {
			s.loopFailed("releasing the claims of this proxy's last run", err)
			return
		}
		s.ownReleased = true
	}
	for ctx.Err() == nil && !s.paused() {
		cctx, cancel := context.WithTimeout(ctx, loopTimeout)
		bs, err := s.store.Claim(cctx, s.id, nodes, claimBatches, batchKeys)
		cancel()
		if err != nil {
			s.loopFailed("claiming hints", err)
			return
		}
		if len(bs) == 0 {
			return
		}
		due := make([]*dueBatch, len(bs))
		for i, b := range bs {
			due[i] = &dueBatch{claim: b, names: slices.Sorted(maps.Keys(b.Names))}
		}
		h.counts.addN("hints_claimed", uint64(len(bs)))
		rctx, stop := context.WithCancel(ctx)
		renewed := make(chan struct{})
		go func() { defer close(renewed); h.renew(rctx, bs) }()
		h.replay(ctx, m, due)
		stop()
		<-renewed
	}
}

// sharedCameUp makes the store's batches of nodes that came back due now.
func (h *Healer) sharedCameUp(ctx context.Context, nodes []string) {
	ctx, cancel := context.WithTimeout(ctx, loopTimeout)
	defer cancel()
	for _, n := range nodes {
		if err := h.shared.store.MakeDue(ctx, n); err != nil {
			h.shared.loopFailed("making hints due", err)
			return
		}
	}
}

// renew keeps claimed batches this proxy's while it works on them.
func (h *Healer) renew(ctx context.Context, bs []*clusterstate.Batch) {
	t := time.NewTicker(h.shared.store.Lease() / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := h.shared.store.Renew(ctx, bs); err != nil && ctx.Err() == nil {
				h.shared.failed("renewing leases", err)
			}
		}
	}
}

// releaseClaim settles a claim's repaired hints in the store and gives the
// batch back (a release that fails leaves it to its lease: it is replayed
// again, finding its keys right).
func (h *Healer) releaseClaim(ctx context.Context, d *dueBatch, failed bool) {
	d.mu.Lock()
	settled := slices.Clone(d.settled)
	d.mu.Unlock()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	if err := h.shared.store.Release(rctx, d.claim, settled, failed); err != nil {
		h.shared.failed("settling hints", err)
	}
}

// users is every user the scans walk: this proxy's and, with a shared
// store, every proxy's (this proxy's alone while the store fails).
func (h *Healer) users(ctx context.Context) []string {
	local := h.state.userList()
	if h.shared == nil {
		return local
	}
	all, err := h.shared.store.Users(ctx)
	if err != nil {
		h.shared.failed("reading users", err)
		return local
	}
	set := map[string]bool{}
	for _, u := range all {
		set[u] = true
	}
	for _, u := range local {
		set[u] = true
	}
	return slices.Sorted(maps.Keys(set))
}

// fullScanOwed is every node marked for a full scan, here or in the store.
func (h *Healer) fullScanOwed() map[string]time.Time {
	out := h.state.fullScanOwed()
	if h.shared != nil {
		for n, at := range h.shared.fullMarks() {
			if at.After(out[n]) {
				out[n] = at
			}
		}
	}
	return out
}
