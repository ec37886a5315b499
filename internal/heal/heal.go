// Package heal brings every key back to exactly N correct copies without an
// operator (docs/design.md, invariant 9): durable hints replay missed writes and
// deletes when a node returns, read repair checks keys a read found
// disagreeing, and a background scan walks every known user's files on every
// node, fixing what it finds at a bounded rate. Tombstones (see package
// tombstone) keep acknowledged deletes from coming back. The healer acts for
// users with short-lived tokens signed by the cluster's server key.
package heal

import (
	"context"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cring-dev/cring/internal/cluster"
	"github.com/cring-dev/cring/internal/clusterstate"
	"github.com/cring-dev/cring/internal/token"
	"github.com/cring-dev/cring/internal/tombstone"
)

// Options configure a Healer.
type Options struct {
	// Members is the cluster to heal; nil until Reconfigure gives it.
	Members      *cluster.Membership
	Signer       *token.Signer
	Issuer       func() string // the issuer nodes accept (the public URL)
	Transport    http.RoundTripper
	DataDir      string
	Logger       *slog.Logger
	StallTimeout time.Duration
	// ScanInterval between background scans; 0: never scan in the background.
	ScanInterval time.Duration
	// Rate bounds repairs and copies per second (0: unlimited).
	Rate float64
	// ByteRate bounds the bytes per second repairs copy, all nodes
	// together (0: unlimited).
	ByteRate float64
	// HintLimit: hints one node may be owed before it is marked for a
	// full scan instead [DefaultHintLimit].
	HintLimit int
	// TombstoneGrace: tombstones older than this are collected by scans.
	TombstoneGrace time.Duration
	// ScrubInterval: a scrub pass (every copy hashed, rotten ones
	// repaired) starts this long after the last one started; 0: no scrub.
	ScrubInterval time.Duration
	// ScrubRate bounds the bytes per second the scrub reads from each
	// node (0: unbounded).
	ScrubRate float64
	// Shared is the cluster's shared state (nil: hints and known users
	// are this proxy's alone); ProxyID names this proxy's claims in it.
	Shared  *clusterstate.Store
	ProxyID string
}

// Healer repairs the cluster.
type Healer struct {
	mem      atomic.Pointer[cluster.Membership]
	api      *nodeAPI
	state    *state
	log      *slog.Logger
	stall    time.Duration
	interval time.Duration
	grace    time.Duration
	now      func() time.Time      // the clock that ages records (tests move it)
	limiter  func(context.Context) // repairs per second
	bytes    *pacer                // bytes copied per second; nil: unbounded
	suspects chan suspect
	fullScan chan struct{} // a node marked for a full scan is up
	tombs    tombCounts
	counts   counters
	facts    facts
	scrub    *scrubber // nil: no scrub
	shared   *shared   // nil: no shared state

	mu       sync.Mutex
	lastScan *Report
	scanning *Progress
}

type suspect struct{ user, path string }

// healthyCount is how many nodes are up.
func healthyCount(m *cluster.Membership) int {
	n := 0
	for i := range m.Nodes {
		if m.Health.Healthy(i) {
			n++
		}
	}
	return n
}

// Reconfigure switches to a new membership, whole: every repair works on
// one snapshot (hints are kept by node name).
func (h *Healer) Reconfigure(m *cluster.Membership) {
	h.mem.Store(m)
}

// New opens the healer's state under o.DataDir.
func New(o Options) (*Healer, error) {
	st, err := openState(o.DataDir, o.HintLimit, 0)
	if err != nil {
		return nil, err
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = 30 * time.Second
	}
	if o.TombstoneGrace <= 0 {
		o.TombstoneGrace = 30 * 24 * time.Hour
	}
	h := &Healer{
		api:      newNodeAPI(o.Transport, o.Signer, o.Issuer, o.StallTimeout, o.Logger.With("component", "heal")),
		state:    st,
		log:      o.Logger.With("component", "heal"),
		stall:    o.StallTimeout,
		interval: o.ScanInterval,
		grace:    o.TombstoneGrace,
		now:      time.Now,
		suspects: make(chan suspect, 4096),
		fullScan: make(chan struct{}, 1),
	}
	if o.Members != nil {
		h.Reconfigure(o.Members)
	}
	if o.Shared != nil {
		h.shared = newShared(o.Shared, o.ProxyID, h.log)
		st.share()
		// Users seen before the store was configured, or whose publish
		// a stop cut short: recorded again (a no-op for known ones).
		h.shared.users = st.userList()
	}
	if o.ScrubInterval > 0 {
		h.scrub = newScrubber(h, o.DataDir, o.ScrubInterval, o.ScrubRate)
	}
	if o.Rate > 0 {
		p := &pacer{rate: o.Rate}
		h.limiter = func(ctx context.Context) { p.wait(ctx, 1) }
	}
	if o.ByteRate > 0 {
		h.bytes = &pacer{rate: o.ByteRate}
	}
	return h, nil
}

// pacer spaces work out to rate units a second (repairs, or bytes).
type pacer struct {
	rate float64
	mu   sync.Mutex
	next time.Time
}

func (p *pacer) wait(ctx context.Context, units float64) {
	p.mu.Lock()
	now := time.Now()
	if p.next.Before(now) {
		p.next = now
	}
	wait := p.next.Sub(now)
	p.next = p.next.Add(time.Duration(units / p.rate * float64(time.Second)))
	p.mu.Unlock()
	if wait <= 0 {
		return
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// pace waits until a copy of size bytes may start.
func (h *Healer) pace(ctx context.Context, size int64) {
	if h.limiter != nil {
		h.limiter(ctx)
	}
	if h.bytes != nil {
		h.bytes.wait(ctx, float64(max(size, 0)))
	}
}

// Close releases the state files.
func (h *Healer) Close() { h.state.close() }

// RecordUser remembers a user whose files the scan must walk.
func (h *Healer) RecordUser(user string) {
	added, err := h.state.addUser(user)
	if err != nil {
		h.log.Error("cannot record user", "err", err)
	}
	if added && h.shared != nil {
		h.shared.addUser(user)
	}
}

// Missed records, durably, that node is owed the latest state of path: it
// returns once the hint is fsynced (with every other hint recorded
// meanwhile), so a write acknowledged after it cannot be forgotten.
func (h *Healer) Missed(user, path, node string) {
	if err := h.state.addHint(hint{User: user, Path: path, Node: node}); err != nil {
		h.log.Error("cannot record hint: the scan will find it", "err", err)
		return
	}
	if h.shared != nil {
		h.shared.wake()
	}
}

// Owed reports whether node still has a hint for path, or is marked for a
// full scan: its copy may be stale until then.
// With a shared store, a node the store says is owed a hint in path's
// directory or one above it counts as owed path (the view is kept by
// directory, not key).
func (h *Healer) Owed(user, path, node string) bool {
	return h.state.owed(hint{User: user, Path: path, Node: node}) || h.shared != nil && h.shared.owesPath(user, path, node)
}

// Complete reports whether node is owed none of user's writes or deletes.
func (h *Healer) Complete(user, node string) bool {
	return !h.state.owesUser(user, node) && (h.shared == nil || !h.shared.owes(user, node))
}

// Suspect queues a key for a prompt check (read repair). A full queue drops
// it: the next scan finds whatever is wrong.
func (h *Healer) Suspect(user, path string) {
	select {
	case h.suspects <- suspect{user, path}:
	default:
		h.counts.add("suspects_dropped")
	}
}

// Run replays hints, works through suspects and scans until ctx ends.
func (h *Healer) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(3)
	if h.shared != nil {
		wg.Add(1)
		go func() { defer wg.Done(); h.publishLoop(ctx) }()
	}
	if h.scrub != nil {
		wg.Add(1)
		go func() { defer wg.Done(); h.scrub.run(ctx) }()
	}
	go func() { defer wg.Done(); h.replayHints(ctx) }()
	go func() { defer wg.Done(); h.readRepair(ctx) }()
	go func() { defer wg.Done(); h.scanLoop(ctx) }()
	wg.Wait()
}

// replayHints repairs the keys owed to nodes that are up again: every
// 500 ms it takes the due batches of the nodes that are up (a heap per
// node, not a walk of every hint) and replays them (replay.go). With a
// shared store it claims them there instead (shared.go), and replays its
// own log only while the store fails.
func (h *Healer) replayHints(ctx context.Context) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	wasUp := map[string]bool{}
	var lastFull time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m := h.mem.Load()
		var cameUp []string
		for i, n := range m.Nodes {
			up := m.Health.Healthy(i)
			if up && !wasUp[n.Name] {
				cameUp = append(cameUp, n.Name)
			}
			wasUp[n.Name] = up
		}
		if len(cameUp) > 0 {
			// A node came back: hints that waited for it (a repair can't
			// settle while W nodes are unasked) are due now, not after
			// their backoff, or reads keep skipping the nodes they owe.
			h.state.retryAllNow()
			if h.shared != nil {
				h.sharedCameUp(ctx, cameUp)
			}
		}
		if h.shared != nil && !h.shared.paused() {
			h.shared.refresh(ctx)
		}
		if (len(cameUp) > 0 || time.Since(lastFull) > time.Minute) && h.fullScanDue(m) {
			lastFull = time.Now()
			select {
			case h.fullScan <- struct{}{}:
			default:
			}
		}
		if h.shared != nil {
			h.replayShared(ctx, m)
			if !h.shared.unpublished.Load() {
				continue // the log holds nothing the store won't have in moments
			}
		}
		due := h.state.takeDue(func(node string) bool {
			i := m.Index(node)
			return i < 0 || m.Health.Healthy(i) // a node no longer configured: settle it
		}, time.Now(), batchKeys)
		h.replay(ctx, m, due)
	}
}

// fullScanDue reports whether a node marked for a full scan is up.
func (h *Healer) fullScanDue(m *cluster.Membership) bool {
	for node := range h.fullScanOwed() {
		if i := m.Index(node); i >= 0 && m.Health.Healthy(i) {
			return true
		}
	}
	return false
}

func (h *Healer) readRepair(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case s := <-h.suspects:
			if h.limiter != nil {
				h.limiter(ctx)
			}
			// Deep: a read found a copy missing, torn or refused as rotten,
			// and only hashing every copy tells which are good.
			res := h.repair(ctx, h.gather(ctx, s.user, tombstone.Clean(s.path)), false, true)
			if res.changed() {
				h.counts.add("read_repairs")
			}
		}
	}
}

// scanLoop scans every interval (the first 30 s after start), and at once
// when a node marked for a full scan is up, even with no interval: only a
// full scan repairs such a node.
func (h *Healer) scanLoop(ctx context.Context) {
	var next <-chan time.Time
	if h.interval > 0 {
		next = time.After(min(h.interval, 30*time.Second))
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-next:
		case <-h.fullScan:
		}
		started := time.Now()
		rep, err := h.Scan(ctx, ScanOptions{})
		if err != nil && ctx.Err() == nil {
			h.log.Warn("scan failed", "err", err)
		}
		if err == nil {
			h.fullScanned(rep, started)
		}
		if h.interval > 0 {
			next = time.After(h.interval)
		}
	}
}

// fullScanned clears the full-scan mark of every node a complete scan that
// started after the mark read for every user.
func (h *Healer) fullScanned(rep *Report, started time.Time) {
	m := h.mem.Load()
	for node, since := range h.fullScanOwed() {
		if m.Index(node) < 0 || slices.Contains(rep.Unreachable, node) || !started.After(since) {
			continue
		}
		h.state.scanned(node, started)
		if h.shared != nil {
			if err := h.shared.store.ClearFullScan(context.Background(), node, started); err != nil {
				h.shared.failed("clearing a full-scan mark", err)
				continue
			}
			h.shared.clearFull(node, started)
		}
		h.log.Info("full scan done: the node's hints are replayed one by one again", "node", node)
	}
}

// counters are the healer's totals for status and metrics.
type counters struct {
	mu sync.Mutex
	m  map[string]uint64
}

func (c *counters) add(k string) {
	c.mu.Lock()
	if c.m == nil {
		c.m = map[string]uint64{}
	}
	c.m[k]++
	c.mu.Unlock()
}

func (c *counters) addN(k string, n uint64) {
	c.mu.Lock()
	if c.m == nil {
		c.m = map[string]uint64{}
	}
	c.m[k] += n
	c.mu.Unlock()
}

func (c *counters) snapshot() map[string]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]uint64{}
	for k, v := range c.m {
		out[k] = v
	}
	return out
}

// Status is what operators see of the healer.
type Status struct {
	HintsPending map[string]int `json:"hints_pending"` // by node
	// FullScanOwed: nodes that were owed more than the hint limit, owed
	// everything (reads skip them) until a full scan has read them.
	FullScanOwed []string `json:"full_scan_owed,omitempty"`
	// Users the scans walk: with a shared store, every proxy's (its count,
	// at most 30 s old), HintsPending then being this proxy's hints not
	// yet published.
	Users    int               `json:"users"`
	Totals   map[string]uint64 `json:"totals"`
	LastScan *Report           `json:"last_scan,omitempty"`
	Scanning *Progress         `json:"scanning,omitempty"`
	Scrub    *ScrubStatus      `json:"scrub,omitempty"`
}

// SharedHintsPending is what the shared store says each node is owed (at
// most a second old); nil without a shared store.
func (h *Healer) SharedHintsPending() map[string]int64 {
	if h.shared == nil {
		return nil
	}
	return h.shared.pendingNodes()
}

// Status reports hints, totals and scans.
func (h *Healer) Status() Status {
	h.mu.Lock()
	last, cur := h.lastScan, h.scanning
	h.mu.Unlock()
	var curCopy *Progress
	if cur != nil {
		p := h.progress(cur, func(*Progress) {})
		curCopy = &p
	}
	st := Status{
		HintsPending: h.state.hintCounts(),
		Users:        h.state.userCount(),
		Totals:       h.counts.snapshot(),
		LastScan:     last,
		Scanning:     curCopy,
	}
	if h.shared != nil {
		st.Users = max(st.Users, int(h.shared.users64()))
	}
	for node := range h.fullScanOwed() {
		st.FullScanOwed = append(st.FullScanOwed, node)
	}
	slices.Sort(st.FullScanOwed)
	if h.scrub != nil {
		sc := h.scrub.status()
		st.Scrub = &sc
	}
	return st
}
