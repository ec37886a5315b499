package proxy

import (
	"context"
	"net/http"
	"slices"
	"sync"
	"time"
)

// Hedged reads ("The Tail at Scale"): when the replica asked first has not
// answered within its own recent p95, the next one is asked too; the first
// good answer wins and the other request is cancelled.

// latencies keeps each node's recent time-to-answer for reads.
type latencies struct {
	mu    sync.Mutex
	nodes []nodeLatency
}

type nodeLatency struct {
	ring [64]time.Duration
	n    int           // samples seen
	p95  time.Duration // recomputed every few samples
}

// minHedgeSamples: no hedging on a node until its p95 means something.
const minHedgeSamples = 16

func newLatencies(n int) *latencies { return &latencies{nodes: make([]nodeLatency, n)} }

func (l *latencies) observe(i int, d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	nl := &l.nodes[i]
	nl.ring[nl.n%len(nl.ring)] = d
	nl.n++
	if nl.n%8 == 0 && nl.n >= minHedgeSamples {
		var s [64]time.Duration
		k := min(nl.n, len(nl.ring))
		copy(s[:], nl.ring[:k])
		slices.Sort(s[:k])
		nl.p95 = s[k*95/100]
	}
}

// hedgeAfter is how long to wait on node i before asking the next replica.
func (l *latencies) hedgeAfter(i int) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	nl := &l.nodes[i]
	if nl.n < minHedgeSamples {
		return 0, false
	}
	return max(nl.p95, time.Millisecond), true
}

// attempt is one node's answer (headers) to a read.
type attempt struct {
	node   int
	resp   *http.Response
	err    error
	cancel context.CancelCauseFunc
}

// attempts asks candidates in order: the next one when the current one
// fails, or, hedging, when it is slower than its p95. At most two requests
// are in flight.
type attempts struct {
	p        *Proxy
	ctx      context.Context
	r        *http.Request
	cands    []int
	next     int
	results  chan attempt
	cancels  map[int]context.CancelCauseFunc // in flight
	timer    *time.Timer
	timerSet bool
}

func (p *Proxy) newAttempts(ctx context.Context, r *http.Request, cands []int) *attempts {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &attempts{p: p, ctx: ctx, r: r, cands: cands, results: make(chan attempt, len(cands)),
		cancels: map[int]context.CancelCauseFunc{}, timer: t}
}

func (a *attempts) launch() {
	i := a.cands[a.next]
	a.next++
	nctx, cancel := context.WithCancelCause(a.ctx)
	a.cancels[i] = cancel
	start := time.Now()
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
	if a.next < len(a.cands) && len(a.cancels) < 2 {
		if d, ok := a.p.lat.hedgeAfter(i); ok {
			a.timer.Reset(d)
			a.timerSet = true
		}
	}
}

// answer returns the next node answer, launching requests as needed; false
// when every candidate has answered.
func (a *attempts) answer() (attempt, bool) {
	for {
		if len(a.cancels) == 0 {
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
			delete(a.cancels, at.node)
			return at, true
		case <-fire:
			a.timerSet = false
			if a.next < len(a.cands) {
				a.p.obs.Hedged()
				a.launch()
			}
		}
	}
}

// close cancels what is still in flight and closes late answers.
func (a *attempts) close() {
	a.timer.Stop()
	if len(a.cancels) == 0 {
		return
	}
	n := len(a.cancels)
	for _, c := range a.cancels {
		c(errHedgeLost)
	}
	go func() {
		for range n {
			at := <-a.results
			if at.resp != nil {
				at.resp.Body.Close()
			}
			at.cancel(nil)
		}
	}()
}

var errHedgeLost = context.Canceled
