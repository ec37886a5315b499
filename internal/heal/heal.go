// Package heal brings every key back to exactly N correct copies without an
// operator (docs/design.md, invariant 9): durable hints replay missed writes and
// deletes when a node returns, read repair checks keys a read found
// disagreeing, and a background scan walks every known user's files on every
// node, fixing what it finds at a bounded rate. Tombstones (see package
// tombstone) keep acknowledged deletes from coming back. The healer acts for
// users with short-lived tokens signed by the cluster's server key.
package heal

import (
	"cmp"
	"context"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cring-dev/cring/internal/ring"
	"github.com/cring-dev/cring/internal/token"
	"github.com/cring-dev/cring/internal/tombstone"
)

// Node is one Charm server's HTTP API.
type Node struct {
	Name  string
	URL   *url.URL
	Drain bool // holds no replicas (its share is not counted as fair)
	// Meta is a cring node's metadata endpoint; nil for stock nodes, whose
	// copies are hashed by reading them.
	Meta *url.URL
}

// Health is the healer's view of which nodes are up.
type Health interface {
	Healthy(i int) bool
}

// Options configure a Healer.
type Options struct {
	Nodes        []Node
	Ring         *ring.Ring
	WriteQuorum  int
	Health       Health
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
	// TombstoneGrace: tombstones older than this are collected by scans.
	TombstoneGrace time.Duration
	// ScrubInterval: a scrub pass (every copy hashed, rotten ones
	// repaired) starts this long after the last one started; 0: no scrub.
	ScrubInterval time.Duration
	// ScrubRate bounds the bytes per second the scrub reads from each
	// node (0: unbounded).
	ScrubRate float64
}

// Healer repairs the cluster.
type Healer struct {
	mem      atomic.Pointer[membership]
	api      *nodeAPI
	state    *state
	log      *slog.Logger
	stall    time.Duration
	interval time.Duration
	grace    time.Duration
	limiter  func(context.Context)
	suspects chan suspect
	counts   counters
	facts    facts
	scrub    *scrubber // nil: no scrub

	mu       sync.Mutex
	lastScan *Report
	scanning *Progress
}

type suspect struct{ user, path string }

// membership is the cluster as one configuration sees it; a reload swaps it
// whole, and every repair works on one snapshot.
type membership struct {
	nodes  []Node
	ring   *ring.Ring
	w      int
	health Health
}

func (m *membership) index(name string) int {
	for i, n := range m.nodes {
		if n.Name == name {
			return i
		}
	}
	return -1
}

// healthyCount is how many nodes are up.
func (m *membership) healthyCount() int {
	n := 0
	for i := range m.nodes {
		if m.health.Healthy(i) {
			n++
		}
	}
	return n
}

// Reconfigure switches to a new node list (hints are kept by node name).
func (h *Healer) Reconfigure(nodes []Node, r *ring.Ring, writeQuorum int, health Health) {
	h.mem.Store(&membership{nodes: nodes, ring: r, w: writeQuorum, health: health})
}

// New opens the healer's state under o.DataDir.
func New(o Options) (*Healer, error) {
	st, err := openState(o.DataDir)
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
		api: &nodeAPI{
			client:  &http.Client{Transport: o.Transport},
			signer:  o.Signer,
			issuer:  o.Issuer,
			timeout: o.StallTimeout,
			tokens:  map[string]cachedToken{},
			log:     o.Logger.With("component", "heal"),
		},
		state:    st,
		log:      o.Logger.With("component", "heal"),
		stall:    o.StallTimeout,
		interval: o.ScanInterval,
		grace:    o.TombstoneGrace,
		suspects: make(chan suspect, 4096),
	}
	h.Reconfigure(o.Nodes, o.Ring, o.WriteQuorum, o.Health)
	if o.ScrubInterval > 0 {
		h.scrub = newScrubber(h, o.DataDir, o.ScrubInterval, o.ScrubRate)
	}
	if o.Rate > 0 {
		every := time.Duration(float64(time.Second) / o.Rate)
		var mu sync.Mutex
		next := time.Now()
		h.limiter = func(ctx context.Context) {
			mu.Lock()
			now := time.Now()
			if next.Before(now) {
				next = now
			}
			wait := next.Sub(now)
			next = next.Add(every)
			mu.Unlock()
			select {
			case <-time.After(wait):
			case <-ctx.Done():
			}
		}
	}
	return h, nil
}

// Close releases the state files.
func (h *Healer) Close() { h.state.close() }

// RecordUser remembers a user whose files the scan must walk.
func (h *Healer) RecordUser(user string) {
	if _, err := h.state.addUser(user); err != nil {
		h.log.Error("cannot record user", "err", err)
	}
}

// Missed records, durably, that node is owed the latest state of path.
func (h *Healer) Missed(user, path, node string) {
	if err := h.state.addHint(hint{User: user, Path: path, Node: node}); err != nil {
		h.log.Error("cannot record hint: the scan will find it", "err", err)
	}
}

// Owed reports whether node still has a hint for path: its copy may be
// stale until the hint is replayed.
func (h *Healer) Owed(user, path, node string) bool {
	return h.state.hasHint(hint{User: user, Path: path, Node: node})
}

// Complete reports whether node is owed none of user's writes or deletes.
func (h *Healer) Complete(user, node string) bool { return !h.state.owesUser(user, node) }

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
	if h.scrub != nil {
		wg.Add(1)
		go func() { defer wg.Done(); h.scrub.run(ctx) }()
	}
	go func() { defer wg.Done(); h.replayHints(ctx) }()
	go func() { defer wg.Done(); h.readRepair(ctx) }()
	go func() { defer wg.Done(); h.scanLoop(ctx) }()
	wg.Wait()
}

// replayHints repairs the keys owed to nodes that are up again.
func (h *Healer) replayHints(ctx context.Context) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	lastUp := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m := h.mem.Load()
		up := m.healthyCount()
		if up > lastUp {
			// A node came back: hints that waited for it (a repair can't
			// settle while W nodes are unasked) are due now, not after
			// their backoff, or reads keep skipping the nodes they owe.
			h.state.retryAllNow()
		}
		lastUp = up
		due := h.state.dueHints(func(node string) bool {
			i := m.index(node)
			return i < 0 || m.health.Healthy(i) // a node no longer configured: settle it
		})
		h.replay(ctx, due)
	}
}

// replayWorkers bounds the keys repaired at once by hint replay: a node
// back from a long absence owes many keys, and reads skip it for each
// until its hint is settled.
const replayWorkers = 4

// replay repairs the keys of due hints, each key once however many nodes
// are owed it, a few keys at a time.
func (h *Healer) replay(ctx context.Context, due []hint) {
	type key struct{ user, path string }
	byKey := map[key][]hint{}
	var order []key
	for _, hn := range due {
		k := key{hn.User, hn.Path}
		if _, ok := byKey[k]; !ok {
			order = append(order, k)
		}
		byKey[k] = append(byKey[k], hn)
	}
	// Clients' keys first: reads skip a node while it is owed one.
	slices.SortStableFunc(order, func(a, b key) int {
		return cmp.Compare(b2i(tombstone.Reserved(a.path)), b2i(tombstone.Reserved(b.path)))
	})
	sem := make(chan struct{}, replayWorkers)
	var wg sync.WaitGroup
	for _, k := range order {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			h.replayKey(ctx, byKey[k])
		}()
	}
	wg.Wait()
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// replayKey repairs one key and settles the hints of every node it reached.
func (h *Healer) replayKey(ctx context.Context, hints []hint) {
	res := h.RepairKey(ctx, hints[0].User, hints[0].Path, false)
	for _, hn := range hints {
		if res.Err == "" && !slices.Contains(res.Pending, hn.Node) {
			h.state.doneHint(hn)
			h.counts.add("hints_replayed")
			continue
		}
		h.state.retryHint(hn)
		h.counts.add("hints_retried")
	}
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

func (h *Healer) scanLoop(ctx context.Context) {
	if h.interval <= 0 {
		<-ctx.Done()
		return
	}
	first := time.NewTimer(min(h.interval, 30*time.Second))
	defer first.Stop()
	select {
	case <-ctx.Done():
		return
	case <-first.C:
	}
	for {
		if _, err := h.Scan(ctx, ScanOptions{}); err != nil && ctx.Err() == nil {
			h.log.Warn("scan failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(h.interval):
		}
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
	HintsPending map[string]int    `json:"hints_pending"` // by node
	Users        int               `json:"users"`
	Totals       map[string]uint64 `json:"totals"`
	LastScan     *Report           `json:"last_scan,omitempty"`
	Scanning     *Progress         `json:"scanning,omitempty"`
	Scrub        *ScrubStatus      `json:"scrub,omitempty"`
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
		Users:        len(h.state.userList()),
		Totals:       h.counts.snapshot(),
		LastScan:     last,
		Scanning:     curCopy,
	}
	if h.scrub != nil {
		sc := h.scrub.status()
		st.Scrub = &sc
	}
	return st
}
