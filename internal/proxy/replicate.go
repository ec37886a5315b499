package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cring-dev/cring/internal/tombstone"
)

// One replication primitive carries every write to the nodes: a client's
// upload or delete, and cring's own tombstones, version records and intent
// records. It starts the requests to a key's targets (and, for a delete,
// every other healthy node), streams the body to them at once, collects
// answers until W targets stored it, lets the rest finish in the
// background (bounded per node and by the post-quorum timeout) and hints
// every target that did not store it (docs/design.md, invariants 2 and 3).

// claim waits for a write of key still finishing in the background (it must
// land before the next write or delete of the same key is sent), picks the
// targets and marks the key in flight on them until done.
func (p *Proxy) claim(key string) (pref, targets []int, done func()) {
	p.inflight.wait(key)
	pref = p.m.Ring.Preference(key)
	targets = p.targets(pref)
	return pref, targets, p.inflight.start(key, targets)
}

// replication is one write on its way to a key's nodes.
type replication struct {
	p          *Proxy
	r          *http.Request // method, URL, token and headers every node's request copies
	ref        fileRef
	pref       []int
	targets    []int
	extra      []int      // a delete's other healthy nodes: best effort, never counted
	streamed   bool       // the body streams from the client (stream pumps it)
	reps       []*replica // a streamed body's per-target bodies (nil entries: not dialed)
	isTarget   map[int]int
	results    chan outcome
	cancels    map[int]context.CancelCauseFunc
	cancelAll  context.CancelCauseFunc
	stopFollow func() bool

	bodyErr error     // the client's body failed: the nodes' failures are its
	got     []outcome // answers so far
	first   outcome   // the answer relayed at W
	n       int       // targets that stored it
}

// replicate starts r's requests to targets: with small as the body of each
// (nil: none), or, when streamed, a replica body per target that stream
// feeds.
// Node requests outlive the caller (the last replica may finish after the
// answer) but not a client that leaves before it.
func (p *Proxy) replicate(ctx context.Context, r *http.Request, ref fileRef, pref, targets []int, small []byte, streamed bool) *replication {
	rep := &replication{p: p, r: r, ref: ref, pref: pref, targets: targets, streamed: streamed, isTarget: map[int]int{}}
	for k, i := range targets {
		rep.isTarget[i] = k
	}
	if r.Method == http.MethodDelete {
		// Deletes also go to every other healthy node, so a copy left on a
		// handoff by an earlier sloppy write can't come back.
		for _, i := range p.healthyNodes() {
			if _, ok := rep.isTarget[i]; !ok {
				rep.extra = append(rep.extra, i)
			}
		}
	}
	nodeCtx, cancelAll := context.WithCancelCause(context.WithoutCancel(ctx))
	rep.cancelAll = cancelAll
	rep.stopFollow = context.AfterFunc(ctx, func() { cancelAll(errClientGone) })
	rep.results = make(chan outcome, len(targets)+len(rep.extra))
	rep.reps = make([]*replica, len(targets))
	rep.cancels = make(map[int]context.CancelCauseFunc, len(targets)+len(rep.extra))
	skip := p.knownDown(targets)
	for k, i := range targets {
		nctx, cancel := context.WithCancelCause(nodeCtx)
		rep.cancels[i] = cancel
		if skip[i] {
			// Health says it's down and enough healthy targets remain:
			// not dialed on every write, just owed a hint.
			cancel(nil)
			rep.results <- outcome{node: i, err: errKnownDown}
			continue
		}
		var body io.Reader
		if small != nil {
			body = bytes.NewReader(small)
		} else if streamed {
			rep.reps[k] = newReplica(i, cancel)
			body = rep.reps[k]
		}
		go func() {
			defer cancel(nil)
			rep.results <- p.roundTrip(nctx, i, r, body, rep.reps[k], cancel)
		}()
	}
	for _, i := range rep.extra {
		nctx, cancel := context.WithCancelCause(nodeCtx)
		rep.cancels[i] = cancel
		go func() {
			defer cancel(nil)
			rep.results <- p.roundTrip(nctx, i, r, nil, nil, cancel)
		}()
	}
	return rep
}

// stream pumps a streamed body to the replicas and to the proxy's own copy
// of it, when kept (nothing to do for a small body, or none), and returns
// the client's error, which fails every replica.
func (rep *replication) stream(src io.Reader, local *backupTee) error {
	if !rep.streamed {
		return nil
	}
	live := slices.DeleteFunc(slices.Clone(rep.reps), func(rp *replica) bool { return rp == nil })
	if local != nil {
		src = local.follow(src)
	}
	err := rep.p.pump(rep.r.Context(), src, live)
	if local != nil {
		if lerr := local.finish(err); lerr != nil && err == nil {
			rep.p.keptTee(rep.ref.key(), local)
		}
	}
	if err != nil {
		rep.cancelAll(err)
	}
	return err
}

// stored reports whether o is a target that stored the write; a streamed
// target only counts once the pump gave it every byte.
func (rep *replication) stored(o outcome) bool {
	k, ok := rep.isTarget[o.node]
	return ok && (o.ok() || superseded(o)) && (rep.reps[k] == nil || rep.reps[k].sentAll)
}

// collect reads answers until W targets stored the write or every target
// answered (with a failed body: every target).
func (rep *replication) collect(bodyErr error) {
	rep.bodyErr = bodyErr
	replicasDone := 0
	for replicasDone < len(rep.targets) && (rep.n < rep.p.m.W || bodyErr != nil) {
		o := <-rep.results
		rep.got = append(rep.got, o)
		if _, ok := rep.isTarget[o.node]; !ok {
			continue
		}
		replicasDone++
		if rep.stored(o) {
			if rep.n == 0 || superseded(rep.first) {
				rep.first = o
			}
			rep.n++
		}
	}
	rep.stopFollow()
}

// finish lets the requests still running finish in the background,
// bounded per node and by the post-quorum timeout, and hints every target
// that did not store the write; a write no target stored is owed to nobody
// (a hint would hide the existing file from reads), its failures logged.
func (rep *replication) finish() {
	p := rep.p
	pending := len(rep.targets) + len(rep.extra) - len(rep.got)
	if pending > 0 {
		answered := map[int]bool{}
		for _, o := range rep.got {
			answered[o.node] = true
		}
		var still []int
		for _, i := range append(slices.Clone(rep.targets), rep.extra...) {
			if !answered[i] {
				still = append(still, i)
			}
		}
		admitted, done := p.inflight.add(rep.ref.key(), still, p.maxTails)
		for _, i := range still {
			if !slices.Contains(admitted, i) {
				rep.cancels[i](errTooManyTails) // hinted like any replica that failed
			}
		}
		go func() {
			defer done()
			t := time.AfterFunc(p.postQuorum, func() { rep.cancelAll(errors.New("post-quorum timeout")) })
			defer t.Stop()
			var late []outcome
			for range pending {
				late = append(late, <-rep.results)
			}
			rep.cancelAll(nil)
			p.settle(rep.r, rep.ref, rep.targets, late, rep.stored)
		}()
	} else {
		rep.cancelAll(nil)
	}
	if rep.n > 0 {
		p.missedReplicas(rep.ref, rep.pref, rep.targets)
		p.settle(rep.r, rep.ref, rep.targets, rep.got, rep.stored)
	} else if rep.bodyErr == nil {
		p.logFailures(rep.r, rep.ref, rep.targets, rep.got)
	}
	if rep.n > 0 && rep.n < p.m.W {
		p.healer.Suspect(rep.ref.user, rep.ref.path) // partial copies of a refused write
	}
}

// clientError reports whether every target refused the request itself
// with the same 4xx answer (say 404 missing user, 413 too large).
func (rep *replication) clientError() (outcome, bool) {
	if rep.n > 0 {
		return outcome{}, false
	}
	var failed []outcome
	for _, o := range rep.got {
		if _, ok := rep.isTarget[o.node]; ok {
			failed = append(failed, o)
		}
	}
	return sameClientError(failed)
}

// errReadOnly: no node is reachable and a backup serves reads.
var errReadOnly = errors.New("the cluster is read-only: no node is reachable (reads are served from the backup)")

// readOnly reports whether no node stored the write because none is
// reachable, with a backup serving reads meanwhile.
func (rep *replication) readOnly() bool {
	return rep.n == 0 && rep.p.backup != nil && len(rep.p.healthyNodes()) == 0
}

// shortfall says how far below W the write stayed.
func (rep *replication) shortfall() string {
	verb := "stored"
	if rep.r.Method == http.MethodDelete {
		verb = "deleted"
	}
	return fmt.Sprintf("%s on %d of %d replicas, %d required", verb, rep.n, len(rep.targets), rep.p.m.W)
}

// targets picks the nodes a write goes to: the first N healthy nodes of the
// key's preference list (replicas, then handoffs in order when a replica is
// known down: a sloppy quorum). When fewer than N are believed healthy, the
// rest are filled with down nodes in preference order: a stale down mark must
// not fail a write that could succeed.
func (p *Proxy) targets(pref []int) []int {
	n := p.m.Ring.Replicas()
	out := make([]int, 0, n)
	for _, i := range pref {
		if len(out) == n {
			return out
		}
		if p.m.Health.Healthy(i) {
			out = append(out, i)
		}
	}
	for _, i := range pref {
		if len(out) == n {
			break
		}
		if !p.m.Health.Healthy(i) {
			out = append(out, i)
		}
	}
	return out
}

// replica is one node's request body of a streamed upload. It hands the
// transport the pump's chunks straight from the pump's buffer, by Read or by
// WriteTo (a node connection writes them to its socket as they are: no
// pipe, no copy buffer, no goroutine of its own). The pump offers a chunk to
// every live replica and reuses its buffer only once each is done with it:
// every chunk offered gets exactly one answer on done, from the body once
// it wrote (or failed to write) the chunk, or from the request's end when
// the body never took it.
type replica struct {
	node   int
	cancel context.CancelCauseFunc // ends this node's request
	done   chan error              // one answer per chunk offered
	wake   chan struct{}           // the body has something to look at

	mu      sync.Mutex
	offered []byte // the chunk on offer, not taken yet
	held    bool   // the body took the chunk and is not done with it
	writing bool   // WriteTo is writing the held chunk (only it can end that)
	ended   bool   // the node's request is over: no chunk is taken any more
	endErr  error  // the pump's: no chunk follows (io.EOF: the whole body was offered)
	left    []byte // what Read has not returned yet of the held chunk

	dead    bool // the pump's: dropped, failed or ended
	sentAll bool
}

func newReplica(node int, cancel context.CancelCauseFunc) *replica {
	return &replica{node: node, cancel: cancel, done: make(chan error, 1), wake: make(chan struct{}, 1)}
}

func (rp *replica) poke() {
	select {
	case rp.wake <- struct{}{}:
	default:
	}
}

// offer puts chunk on offer to the body (the pump's side).
func (rp *replica) offer(chunk []byte) {
	rp.mu.Lock()
	if rp.ended {
		rp.mu.Unlock()
		rp.done <- errAnswered
		return
	}
	rp.offered = chunk
	rp.mu.Unlock()
	rp.poke()
}

// kill ends the replica's body with err (the pump's side) and reports
// whether the body may still be writing the chunk it took.
func (rp *replica) kill(err error) (held bool) {
	rp.dead = true
	rp.mu.Lock()
	rp.endErr = err
	rp.offered = nil
	held = rp.held
	rp.mu.Unlock()
	rp.poke()
	if err == errStalled {
		// The transport may be stuck writing to a node that stopped
		// reading; only cancelling the request frees it.
		rp.cancel(err)
	}
	return held
}

// complete ends the replica's body after its last chunk (the pump's side).
func (rp *replica) complete() {
	rp.sentAll = true
	rp.mu.Lock()
	rp.endErr = io.EOF
	rp.mu.Unlock()
	rp.poke()
}

// requestEnded marks the node's request over (answered or failed): a chunk
// on offer, or one Read returned only part of, is answered as not taken
// (the transport, its writes failed, may never read again), and none is
// taken any more. A chunk WriteTo is writing is answered by WriteTo.
func (rp *replica) requestEnded() {
	rp.mu.Lock()
	rp.ended = true
	refused := rp.offered != nil
	rp.offered = nil
	if rp.held && !rp.writing {
		rp.held, rp.left, refused = false, nil, true
	}
	rp.mu.Unlock()
	if refused {
		rp.done <- errAnswered
	}
	rp.poke()
}

// take waits for the chunk on offer, or the reason there is none: for
// WriteTo to write (write), or for Read to return (kept in left).
func (rp *replica) take(write bool) ([]byte, error) {
	for {
		rp.mu.Lock()
		switch {
		case rp.ended:
			rp.mu.Unlock()
			return nil, errAnswered
		case rp.endErr != nil:
			err := rp.endErr
			rp.mu.Unlock()
			return nil, err
		case rp.offered != nil:
			c := rp.offered
			rp.offered, rp.held, rp.writing = nil, true, write
			if !write {
				rp.left = c
			}
			rp.mu.Unlock()
			return c, nil
		}
		rp.mu.Unlock()
		<-rp.wake
	}
}

// release says WriteTo is done with the chunk it took.
func (rp *replica) release(err error) {
	rp.mu.Lock()
	rp.held, rp.writing = false, false
	rp.mu.Unlock()
	rp.done <- err
}

// Read copies under the lock, so a request that ends mid-chunk can answer
// the chunk and no later Read touches the pump's buffer.
func (rp *replica) Read(p []byte) (int, error) {
	rp.mu.Lock()
	if !rp.held {
		rp.mu.Unlock()
		if _, err := rp.take(false); err != nil {
			return 0, err
		}
		rp.mu.Lock()
	}
	if !rp.held {
		rp.mu.Unlock()
		return 0, errAnswered // the request ended and answered the chunk
	}
	n := copy(p, rp.left)
	rp.left = rp.left[n:]
	done := len(rp.left) == 0
	if done {
		rp.held = false
	}
	rp.mu.Unlock()
	if done {
		rp.done <- nil
	}
	return n, nil
}

// WriteTo writes every chunk to w as the pump offers it: what a node
// connection calls for a request body (serve's nodeConn.ReadFrom), so a
// chunk goes from the pump's buffer to the socket with no copy.
func (rp *replica) WriteTo(w io.Writer) (int64, error) {
	var total int64
	rp.mu.Lock()
	c := rp.left // a chunk Read began
	rp.left, rp.writing = nil, rp.held
	rp.mu.Unlock()
	for {
		if len(c) == 0 {
			var err error
			if c, err = rp.take(true); err == io.EOF {
				return total, nil
			} else if err != nil {
				return total, err
			}
		}
		n, err := w.Write(c)
		total += int64(n)
		c = nil
		rp.release(err)
		if err != nil {
			return total, err
		}
	}
}

// knownDown picks the targets not to dial: those health marks down, as long
// as the healthy ones can still make W. Below that, every target is tried:
// a stale down mark must not fail a write that could succeed.
func (p *Proxy) knownDown(targets []int) map[int]bool {
	var down []int
	for _, i := range targets {
		if !p.m.Health.Healthy(i) {
			down = append(down, i)
		}
	}
	if len(down) == 0 || len(targets)-len(down) < p.m.W {
		return nil
	}
	skip := make(map[int]bool, len(down))
	for _, i := range down {
		skip[i] = true
	}
	return skip
}

// superseded reports a cring node's answer that it holds a newer version.
func superseded(o outcome) bool { return o.err == nil && o.status == http.StatusConflict }

// logFailures logs and counts replicas that failed a write none stored.
func (p *Proxy) logFailures(r *http.Request, ref fileRef, targets []int, os []outcome) {
	for _, o := range os {
		if !slices.Contains(targets, o.node) || errors.Is(o.err, errKnownDown) {
			continue
		}
		p.obs.ReplicaFailure(p.m.Nodes[o.node].Name, r.Method)
		p.log.Warn("replica write failed", "node", p.m.Nodes[o.node].Name, "method", r.Method, "key", ref.key(),
			"outcome", o.String(), "request_id", r.Header.Get("X-Request-Id"))
		if o.err != nil {
			// No answer: the node may have stored it anyway.
			p.healer.Suspect(ref.user, ref.path)
		}
	}
}

// settle does the bookkeeping for a batch of replica outcomes: hints for
// every replica that did not store the write (including replicas skipped as
// down, counted with the first batch), metrics and logs.
func (p *Proxy) settle(r *http.Request, ref fileRef, targets []int, os []outcome, stored func(outcome) bool) {
	if len(os) == 0 {
		return
	}
	for _, o := range os {
		if o.node < 0 {
			continue
		}
		k := slices.Index(targets, o.node)
		if k < 0 || stored(o) {
			continue // extra delete targets are best effort
		}
		if o.ok() {
			o = outcome{node: o.node, err: errors.New("answered before receiving the whole body")}
		}
		p.hint(ref, o.node)
		p.obs.ReplicaFailure(p.m.Nodes[o.node].Name, r.Method)
		if errors.Is(o.err, errKnownDown) {
			continue // the health checker logged the state change once
		}
		p.log.Warn("replica write failed", "node", p.m.Nodes[o.node].Name, "method", r.Method, "key", ref.key(),
			"outcome", o.String(), "request_id", r.Header.Get("X-Request-Id"))
	}
}

// missedReplicas hints the replicas a write skipped as down (a handoff took
// their place).
func (p *Proxy) missedReplicas(ref fileRef, pref, targets []int) {
	for _, i := range pref[:p.m.Ring.Replicas()] {
		if !slices.Contains(targets, i) {
			p.hint(ref, i)
		}
	}
}

// hint records that node i is owed ref. Version records get none: one is
// written per upload on stock nodes and never read by clients, so their
// hints would only queue ahead of the keys reads wait for; scans copy them.
func (p *Proxy) hint(ref fileRef, i int) {
	if strings.HasPrefix(ref.path, tombstone.Versions+"/") {
		return
	}
	p.healer.Missed(ref.user, ref.path, p.m.Nodes[i].Name)
}

// sameClientError reports whether every outcome is the same 4xx answer.
func sameClientError(os []outcome) (outcome, bool) {
	if len(os) == 0 {
		return outcome{}, false
	}
	for _, o := range os {
		if o.err != nil || o.status < 400 || o.status > 499 || o.status != os[0].status {
			return outcome{}, false
		}
	}
	return os[0], true
}

// roundTrip sends one replica's request and keeps its (small) answer. When the
// node answers or fails before taking the whole body, the pump stops
// feeding it.
func (p *Proxy) roundTrip(ctx context.Context, i int, r *http.Request, body io.Reader, rp *replica, cancel context.CancelCauseFunc) outcome {
	req, err := p.newNodeRequest(ctx, i, r, r.Method, body)
	if err != nil {
		if rp != nil {
			rp.requestEnded()
		}
		return outcome{node: i, err: err}
	}
	if body != nil {
		req.ContentLength = r.ContentLength
	} else {
		req.ContentLength = 0
		req.Header.Del("Content-Length")
	}
	resp, err := p.transport.RoundTrip(req)
	if rp != nil {
		rp.requestEnded()
	}
	if err != nil {
		p.nodeFailed(ctx, i, err)
		return outcome{node: i, err: fmt.Errorf("%s %s to %s: %w", r.Method, r.URL.Path, p.m.Nodes[i].Name, err)}
	}
	return p.keep(ctx, i, resp, cancel)
}

var (
	errKnownDown    = errors.New("known down: not dialed")
	errAnswered     = errors.New("node answered")
	errTooManyTails = errors.New("too many writes still running on the node")
)

// pump reads the client's body once and offers every chunk to each live
// replica, waiting for all of them before reusing the buffer, so memory stays
// one buffer per request whatever the file size. A replica that takes no
// chunk within the stall timeout is dropped; the others carry on. The
// returned error is the client's (a failed body fails every replica).
func (p *Proxy) pump(ctx context.Context, src io.Reader, reps []*replica) error {
	bp := p.bufs.Get().(*[]byte)
	buf := *bp
	timer := time.NewTimer(p.stall)
	defer timer.Stop()
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if dropped := p.broadcastChunk(buf[:n], reps, timer); dropped {
				// A dropped node's body may still be writing from buf:
				// never reuse it.
				buf = make([]byte, bufSize)
				bp = nil
			}
		}
		if rerr == io.EOF {
			for _, rp := range reps {
				if !rp.dead {
					rp.complete()
				}
			}
			break
		}
		if rerr != nil {
			rerr = clientBodyError(ctx, rerr)
			for _, rp := range reps {
				if !rp.dead {
					rp.kill(rerr)
				}
			}
			if bp != nil {
				p.bufs.Put(bp)
			}
			return rerr
		}
	}
	if bp != nil {
		p.bufs.Put(bp)
	}
	return nil
}

// broadcastChunk offers chunk to every live replica and waits until each is
// done with it, failed, or stalled past the timeout. It reports whether any
// replica was dropped while it might still hold chunk.
func (p *Proxy) broadcastChunk(chunk []byte, reps []*replica, timer *time.Timer) bool {
	live := 0
	for _, rp := range reps {
		if !rp.dead {
			rp.offer(chunk)
			live++
		}
	}
	if live == 0 {
		return false
	}
	timer.Reset(p.stall)
	expired := false
	dropped := false
	for _, rp := range reps {
		if rp.dead {
			continue
		}
		if expired {
			select {
			case err := <-rp.done:
				if err != nil {
					rp.kill(err)
				}
			default:
				dropped = rp.kill(errStalled) || dropped
			}
			continue
		}
		select {
		case err := <-rp.done:
			if err != nil {
				rp.kill(err)
			}
		case <-timer.C:
			expired = true
			dropped = rp.kill(errStalled) || dropped
		}
	}
	timer.Stop() // Go 1.23+ timers: no stale value to drain after Stop
	return dropped
}
