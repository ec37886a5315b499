package proxy

import (
	"context"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"
)

// Hedged reads ("The Tail at Scale"): when the replica asked first has not
// answered within its recent p95, the next one is asked too (at most for one
// read in twenty); the first good answer wins and the other request is
// cancelled, unless its answer is about to arrive anyway: a small answer
// that comes within a short grace is read to the end instead, so its
// keep-alive connection survives (cancelling an HTTP/1.1 request closes the
// connection, and on a busy cluster the redial costs more than the hedge
// saved).
//
// A replica's p95 only counts answers that completed: a request cancelled
// because the hedge won would otherwise teach a slow replica to be waited
// for longer each time. A replica that is consistently much slower than the
// others is asked last rather than first, with a probe now and then (a read
// that is asked of it first, hedge paid in advance) to notice when it
// recovers: hedging alone can't help when one node in three is slow on every
// request.

// latencies keeps recent read answer times, and the hedging budget.
type latencies struct {
	mu     sync.Mutex
	nodes  []nodeLatency
	tokens float64 // hedges allowed now: hedgeShare per read, up to hedgeBurst
}

type nodeLatency struct {
	answers   window // completed answers: the hedge delay
	p95       time.Duration
	recent    window // answers, and lower bounds for cancelled ones: the order
	median    time.Duration
	lastProbe time.Time
}

// window is a ring of recent durations.
type window struct {
	ring []time.Duration
	n    int // samples seen
	tmp  []time.Duration
}

func newWindow(size int) window {
	return window{ring: make([]time.Duration, size), tmp: make([]time.Duration, size)}
}

func (w *window) add(d time.Duration) {
	w.ring[w.n%len(w.ring)] = d
	w.n++
}

func (w *window) quantile(q float64) time.Duration {
	k := min(w.n, len(w.ring))
	if k == 0 {
		return 0
	}
	s := w.tmp[:k]
	copy(s, w.ring[:k])
	slices.Sort(s)
	return s[int(float64(k-1)*q+0.5)]
}

const (
	// minHedgeSamples: no hedging until the p95 means something.
	minHedgeSamples = 16
	// minOrderSamples: a node's median over this many answers orders it.
	minOrderSamples = 16
	// hedgeFloor: never hedge sooner, whatever the p95.
	hedgeFloor = time.Millisecond
	// maxHedgeGrace bounds how long a hedge's loser may still finish.
	maxHedgeGrace = 50 * time.Millisecond
	// slowFactor: a node whose median is this many times the fastest
	// candidate's is asked last.
	slowFactor = 4
	// probeEvery: how often a node asked last is asked first anyway, to
	// see whether it recovered.
	probeEvery = 250 * time.Millisecond
	// maxDrain is the largest loser's answer read to the end.
	maxDrain = 64 << 10
	// hedgeShare caps hedges at this share of reads: on a saturated
	// cluster every read is slow and more requests only make it slower.
	hedgeShare = 0.05
	hedgeBurst = 20
)

func newLatencies(n int) *latencies {
	l := &latencies{nodes: make([]nodeLatency, n), tokens: hedgeBurst}
	for i := range l.nodes {
		l.nodes[i].answers = newWindow(64)
		// Short, so a node that recovers is asked first again after a
		// few good probes.
		l.nodes[i].recent = newWindow(minOrderSamples)
	}
	return l
}

// observe records node i's time to answer a read.
func (l *latencies) observe(i int, d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	nl := &l.nodes[i]
	nl.answers.add(d)
	if nl.answers.n%8 == 0 && nl.answers.n >= minHedgeSamples {
		nl.p95 = nl.answers.quantile(0.95)
	}
	l.record(i, d)
}

// observeLost records that node i had not answered after d when its read
// was cancelled: a lower bound, for ordering only (it would drag the hedge
// delay up each time a hedge fires).
func (l *latencies) observeLost(i int, d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.record(i, d)
}

func (l *latencies) record(i int, d time.Duration) {
	nl := &l.nodes[i]
	nl.recent.add(d)
	nl.median = nl.recent.quantile(0.5)
}

// hedgeAfter is how long to wait on node i before asking the next replica:
// its recent p95, at least hedgeFloor.
func (l *latencies) hedgeAfter(i int) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	nl := &l.nodes[i]
	if nl.answers.n < minHedgeSamples {
		return 0, false
	}
	return max(nl.p95, hedgeFloor), true
}

// spend takes one hedge from the budget, if there is one left.
func (l *latencies) spend() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}

// order puts candidates that are much slower than the fastest one last,
// keeping preference order otherwise. Now and then one of them is left in
// place as a probe, with its hedge paid from the budget up front (prepaid):
// probes are as frequent as the budget allows, and each can be hedged.
func (l *latencies) order(cands []int) (out []int, prepaid bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tokens = min(l.tokens+hedgeShare, hedgeBurst) // one read, one share
	if len(cands) < 2 {
		return cands, false
	}
	best := time.Duration(-1)
	for _, i := range cands {
		nl := &l.nodes[i]
		if nl.recent.n >= minOrderSamples && (best < 0 || nl.median < best) {
			best = nl.median
		}
	}
	if best < 0 {
		return cands, false
	}
	limit := max(best*slowFactor, hedgeFloor)
	now := time.Now()
	var probe []int
	var fast, slow []int
	for _, i := range cands {
		nl := &l.nodes[i]
		if nl.recent.n < minOrderSamples || nl.median <= limit {
			fast = append(fast, i)
			continue
		}
		// A probe is asked first, whatever its place: asked later it
		// would usually not be asked at all, and learn nothing.
		if probe == nil && now.Sub(nl.lastProbe) >= probeEvery && l.tokens >= 1 {
			l.tokens--
			nl.lastProbe = now
			probe = []int{i}
			continue
		}
		slow = append(slow, i)
	}
	if probe == nil && len(slow) == 0 {
		return cands, false
	}
	return append(append(probe, fast...), slow...), probe != nil
}

// attempt is one node's answer (headers) to a read.
type attempt struct {
	node   int
	resp   *http.Response
	err    error
	cancel context.CancelCauseFunc
}

// attempts asks candidates in order: the next one when the current one
// fails, or, hedging, when it is slower than the p95. At most two requests
// are in flight.
type attempts struct {
	p        *Proxy
	ctx      context.Context
	r        *http.Request
	cands    []int
	next     int
	results  chan attempt
	inflight map[int]flight
	timer    *time.Timer
	timerSet bool
	hedged   bool
	prepaid  bool // a probe: its first hedge is already paid for
	grace    time.Duration
}

type flight struct {
	cancel context.CancelCauseFunc
	follow func() bool // stops following the client's cancellation
	start  time.Time
}

func (p *Proxy) newAttempts(ctx context.Context, r *http.Request, cands []int) *attempts {
	t := time.NewTimer(time.Hour)
	t.Stop()
	ordered, prepaid := p.lat.order(cands)
	return &attempts{p: p, ctx: ctx, r: r, cands: ordered, prepaid: prepaid, results: make(chan attempt, len(cands)),
		inflight: map[int]flight{}, timer: t}
}

func (a *attempts) launch() {
	i := a.cands[a.next]
	a.next++
	// Detached from the client's request, which ends when the handler
	// returns, so a hedge's loser may finish; until close, a client that
	// leaves still cancels it.
	nctx, cancel := context.WithCancelCause(context.WithoutCancel(a.ctx))
	follow := context.AfterFunc(a.ctx, func() { cancel(context.Cause(a.ctx)) })
	start := time.Now()
	a.inflight[i] = flight{cancel: cancel, follow: follow, start: start}
	go func() {
		req, err := a.p.newNodeRequest(nctx, i, a.r, http.MethodGet, nil)
		var resp *http.Response
		if err == nil {
			resp, err = a.p.transport.RoundTrip(req)
		}
		if err == nil {
			a.p.lat.observe(i, time.Since(start))
		}
		a.results <- attempt{node: i, resp: resp, err: err, cancel: cancel}
	}()
	a.timer.Stop()
	a.timerSet = false
	if a.next < len(a.cands) && len(a.inflight) < 2 {
		if d, ok := a.p.lat.hedgeAfter(i); ok {
			a.timer.Reset(d)
			a.timerSet = true
			a.grace = min(d, maxHedgeGrace)
		}
	}
}

// answer returns the next node answer, launching requests as needed; false
// when every candidate has answered.
func (a *attempts) answer() (attempt, bool) {
	for {
		if len(a.inflight) == 0 {
			if a.next >= len(a.cands) {
				return attempt{}, false
			}
			a.launch()
		}
		var fire <-chan time.Time
		if a.timerSet {
			fire = a.timer.C
		}
		select {
		case at := <-a.results:
			delete(a.inflight, at.node)
			return at, true
		case <-fire:
			a.timerSet = false
			if a.next < len(a.cands) && (a.prepaid || a.p.lat.spend()) {
				a.prepaid = false
				a.p.obs.Hedged()
				a.hedged = true
				a.launch()
			}
		}
	}
}

// close ends what is still in flight (a hedge's loser): a small answer that
// arrives within the grace is read to the end so its connection is reused;
// anything else is cancelled.
func (a *attempts) close() {
	a.timer.Stop()
	if len(a.inflight) == 0 {
		return
	}
	var grace time.Duration // the loser gets as long again as it was given
	if a.hedged {
		grace = a.grace
	}
	left := a.inflight
	a.inflight = map[int]flight{}
	for _, f := range left {
		f.follow()
	}
	go func() {
		t := time.NewTimer(grace)
		defer t.Stop()
		expired := grace == 0
		for len(left) > 0 {
			if expired {
				for i, f := range left {
					f.cancel(errHedgeLost)
					a.p.lat.observeLost(i, time.Since(f.start))
				}
				expired = false
			}
			select {
			case at := <-a.results:
				delete(left, at.node)
				a.p.drainLoser(at)
			case <-t.C:
				expired = true
			}
		}
	}()
}

// drainLoser reads a small losing answer to the end, so its connection goes
// back to the pool, or cancels it.
func (p *Proxy) drainLoser(at attempt) {
	defer at.cancel(nil)
	if at.resp == nil {
		return
	}
	n := at.resp.ContentLength
	if n < 0 || n > maxDrain {
		at.cancel(errHedgeLost)
		at.resp.Body.Close()
		return
	}
	stall := time.AfterFunc(p.stall, func() { at.cancel(errStalled) })
	_, _ = io.Copy(io.Discard, io.LimitReader(at.resp.Body, maxDrain))
	stall.Stop()
	at.resp.Body.Close()
}

var errHedgeLost = context.Canceled
