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
	"time"

	"github.com/cring-dev/cring/internal/stamp"
	"github.com/cring-dev/cring/internal/tombstone"
)

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

// smallBody is the largest body sent to the nodes from one in-memory buffer
// instead of being streamed through pipes.
const smallBody = 64 << 10

// replica is one node's copy of a streamed request body.
type replica struct {
	node    int
	cancel  context.CancelCauseFunc // ends this node's request
	pr      *io.PipeReader
	pw      *io.PipeWriter
	in      chan []byte
	done    chan error
	dead    bool
	sentAll bool
}

func (rp *replica) kill(err error) {
	rp.dead = true
	rp.pw.CloseWithError(err)
	if err == errStalled {
		// The transport may be stuck writing to a node that stopped
		// reading; only cancelling the request frees it.
		rp.cancel(err)
	}
}

// feed writes chunks into the pipe the node's request reads from; it runs in
// its own goroutine so one slow node can be timed out without blocking others.
func (rp *replica) feed() {
	for chunk := range rp.in {
		_, err := rp.pw.Write(chunk)
		rp.done <- err
	}
}

// write fans a POST or DELETE of /v1/fs/* out to the key's replicas with the
// body streamed to all of them at once, and acks only at W 2xx answers from
// nodes that received the whole body (docs/design.md, invariants 2 and 3).
// Every node gets the version's stamp st; a cring node that holds a newer
// version answers 409 and keeps it, which counts as stored: this version
// was superseded, not lost.
func (p *Proxy) write(w http.ResponseWriter, r *http.Request, ref fileRef, st stamp.Stamp) {
	ctx := r.Context()
	key := ref.key()
	r.Header.Set(stamp.Header, st.String())
	// A write still finishing in the background on a slow replica must
	// land before the next write or delete of the same key is sent.
	p.inflight.wait(key)
	pref := p.m.Ring.Preference(key)
	targets := p.targets(pref)
	fgDone := p.inflight.start(key, targets)
	defer fgDone() // after the tails took over their nodes, so reads never see a gap
	hasBody := r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0

	// Deletes also go to every other healthy node, so a copy left on a
	// handoff by an earlier sloppy write can't come back; only the
	// replicas' answers count toward the quorum.
	var extra []int
	if r.Method == http.MethodDelete {
		in := map[int]bool{}
		for _, i := range targets {
			in[i] = true
		}
		for _, i := range p.healthyNodes() {
			if !in[i] {
				extra = append(extra, i)
			}
		}
	}

	// A client's upload is checked as charm's server reads it: its head
	// before any node is asked, the rest as it streams (a small one whole,
	// below), so a malformed one is the client's 400, never the nodes' 500.
	src := io.Reader(r.Body)
	boundary := ""
	if hasBody && r.Method == http.MethodPost && !tombstone.Reserved(ref.path) {
		boundary, _ = formBoundary(r) // checked by checkFSWrite
	}
	if boundary != "" && !(r.ContentLength > 0 && r.ContentLength <= smallBody) {
		checked, stop, err := checkHead(src, boundary, r.ContentLength)
		if err != nil {
			p.bodyFailed(w, r, key, nil, err)
			return
		}
		defer stop()
		src = checked
	}

	// With backups, the upload's file also goes to a spool file as it
	// streams; without one there is no ack, so check before any node works.
	var tee *backupTee
	if hasBody {
		var err error
		if tee, src, err = p.startBackupTee(r, src, ref, p.mayNeedRecord(targets)); err != nil {
			p.log.Error("cannot spool the backup of an upload", "err", err)
			writeError(w, http.StatusServiceUnavailable, "cannot back up the upload: "+err.Error())
			return
		}
	}

	// A small body is read whole first and sent to every node from that one
	// buffer: no pipes or feed goroutines, and net/http sends headers and
	// body in one write. The client's body is complete before any node
	// sees a byte, so a node's 2xx is for the whole file.
	var small []byte
	if hasBody && r.ContentLength > 0 && r.ContentLength <= smallBody {
		small = make([]byte, r.ContentLength)
		_, err := io.ReadFull(src, small)
		if err != nil {
			err = clientBodyError(ctx, err)
		}
		if err == nil && boundary != "" {
			err = checkForm(bytes.NewReader(small), boundary)
		}
		p.finishTee(key, tee, err)
		if err != nil {
			p.bodyFailed(w, r, key, tee, err)
			return
		}
		hasBody = false
	}
	// A small upload's version record goes before its data, since its
	// checksum is known already: a stock node's copy then never exists
	// without its record, so no healer can take it for a torn or late copy
	// and write over it while the ack waits (docs/design.md, "Versions").
	// A streamed upload's checksum is known only at its end: an intent
	// record goes first instead, and the version record follows the data.
	recorded, intent := false, false
	if tee != nil && tee.sum != nil { // hashed: a target may not keep stamps
		var err error
		if small != nil {
			err = p.recordVersion(r, ref, st, tee)
			recorded = err == nil
		} else {
			err = p.recordIntent(r, ref, st)
			intent = err == nil
		}
		if err != nil {
			p.obs.QuorumFailure(r.Method) // the upload's first step failed
			p.discardSpool(tee)
			writeError(w, http.StatusServiceUnavailable, "could not record the upload's version: "+err.Error())
			return
		}
	}

	// Node requests outlive the handler (the last replica may finish after
	// the answer) but not a client that leaves before it.
	nodeCtx, cancelAll := context.WithCancelCause(context.WithoutCancel(ctx))
	stopFollow := context.AfterFunc(ctx, func() { cancelAll(errClientGone) })
	results := make(chan outcome, len(targets)+len(extra))
	reps := make([]*replica, len(targets))
	var bodyErr error
	cancels := make(map[int]context.CancelCauseFunc, len(targets)+len(extra))
	skip := p.knownDown(targets)
	for k, i := range targets {
		nctx, cancel := context.WithCancelCause(nodeCtx)
		cancels[i] = cancel
		if skip[i] {
			// Health says it's down and enough healthy targets remain:
			// not dialed on every write, just owed a hint.
			cancel(nil)
			results <- outcome{node: i, err: errKnownDown}
			continue
		}
		var body io.Reader
		if small != nil {
			body = bytes.NewReader(small)
		} else if hasBody {
			pr, pw := io.Pipe()
			rp := &replica{node: i, cancel: cancel, pr: pr, pw: pw, in: make(chan []byte, 1), done: make(chan error, 1)}
			reps[k] = rp
			body = pr
			go rp.feed()
		}
		go func() {
			defer cancel(nil)
			results <- p.roundTrip(nctx, i, r, body, reps[k], cancel)
		}()
	}
	for _, i := range extra {
		nctx, cancel := context.WithCancelCause(nodeCtx)
		cancels[i] = cancel
		go func() {
			defer cancel(nil)
			results <- p.roundTrip(nctx, i, r, nil, nil, cancel)
		}()
	}

	if hasBody {
		bodyErr = p.pump(ctx, src, slices.DeleteFunc(slices.Clone(reps), func(rp *replica) bool { return rp == nil }))
		p.finishTee(key, tee, bodyErr)
	}
	if bodyErr != nil {
		cancelAll(bodyErr)
	}

	isTarget := map[int]int{}
	for k, i := range targets {
		isTarget[i] = k
	}
	// Streamed replicas only count once the pump gave them every byte.
	stored := func(o outcome) bool {
		k, ok := isTarget[o.node]
		return ok && (o.ok() || superseded(o)) && (reps[k] == nil || reps[k].sentAll)
	}
	// Collect until W replicas stored it (answer now) or every replica
	// answered (answer the failure).
	var got []outcome
	var first outcome
	n, replicasDone := 0, 0
	for replicasDone < len(targets) && (n < p.m.W || bodyErr != nil) {
		o := <-results
		got = append(got, o)
		if _, ok := isTarget[o.node]; !ok {
			continue
		}
		replicasDone++
		if stored(o) {
			if n == 0 || superseded(first) {
				first = o
			}
			n++
		}
	}
	stopFollow()
	pending := len(targets) + len(extra) - len(got)
	if pending > 0 {
		// The rest finish in the background, bounded; what doesn't make it
		// is owed a hint. The key stays marked in flight until then.
		answeredNodes := map[int]bool{}
		for _, o := range got {
			answeredNodes[o.node] = true
		}
		var still []int
		for _, i := range append(slices.Clone(targets), extra...) {
			if !answeredNodes[i] {
				still = append(still, i)
			}
		}
		admitted, done := p.inflight.add(key, still, p.maxTails)
		for _, i := range still {
			if !slices.Contains(admitted, i) {
				cancels[i](errTooManyTails) // hinted like any replica that failed
			}
		}
		go func() {
			defer done()
			t := time.AfterFunc(p.postQuorum, func() { cancelAll(errors.New("post-quorum timeout")) })
			defer t.Stop()
			var late []outcome
			for range pending {
				late = append(late, <-results)
			}
			cancelAll(nil)
			p.settle(r, ref, pref, targets, reps, late, stored)
		}()
	} else {
		cancelAll(nil)
	}
	if n > 0 {
		// Hints only for a write that is somewhere: one no replica stored
		// is owed to nobody, and a hint would hide the existing file from
		// reads.
		p.missedReplicas(ref, pref, targets)
		p.settle(r, ref, pref, targets, reps, got, stored)
	} else if bodyErr == nil {
		// (With the client's body failed, the nodes' failures are its.)
		p.logFailures(r, ref, targets, got)
	}

	if intent && (bodyErr != nil || n == 0) {
		p.dropIntent(r, ref, st)
	}
	if bodyErr != nil {
		p.bodyFailed(w, r, key, tee, bodyErr)
		return
	}
	// A version record is needed when a replica that stored the upload
	// can't keep its stamp: a cring node confirms the stamp in its answer.
	p.learnStamping(got, stored)
	needRecord := !recorded && p.records && r.Method == http.MethodPost && !tombstone.Reserved(ref.path) &&
		slices.ContainsFunc(got, func(o outcome) bool { return stored(o) && o.header.Get(stamp.Header) == "" })
	if n >= p.m.W {
		if needRecord {
			if err := p.recordVersion(r, ref, st, tee); err != nil {
				p.obs.QuorumFailure("version")
				p.discardSpool(tee)
				writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("stored on %d of %d replicas, but its version record failed: %v", n, len(targets), err))
				return
			}
		}
		// The backup takes it too before the ack: stored (sync) or
		// durably queued (async). Either failing means no ack.
		if err := p.backupAck(ctx, r, ref, tee); err != nil {
			p.obs.QuorumFailure("backup")
			p.log.Error("backup failed: write not acknowledged", "key", key, "err", err)
			writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("stored on %d of %d replicas, but the backup failed: %v", n, len(targets), err))
			return
		}
		if superseded(first) {
			w.WriteHeader(http.StatusOK) // a newer version is stored: this one was written over
			return
		}
		relay(w, first)
		return
	}
	if n > 0 {
		// Failed, yet stored somewhere: a real version the healer will
		// spread, so it is recorded and backed up like any other.
		p.keepFailedVersion(r, ref, st, tee, needRecord)
	} else {
		p.discardSpool(tee)
	}
	if n == 0 && p.backup != nil && len(p.healthyNodes()) == 0 {
		p.obs.QuorumFailure(r.Method)
		writeError(w, http.StatusServiceUnavailable, "the cluster is read-only: no node is reachable (reads are served from the backup)")
		return
	}
	var failed []outcome
	for _, o := range got {
		if _, ok := isTarget[o.node]; ok {
			failed = append(failed, o)
		}
	}
	if n > 0 {
		p.healer.Suspect(ref.user, ref.path) // partial copies of a refused write
	}
	if o, same := sameClientError(failed); n == 0 && same {
		// Every replica refused the request itself (say 404 missing user,
		// 413 too large): answer as a single Charm server would.
		relay(w, o)
		return
	}
	if !tombstone.Reserved(ref.path) {
		// cring's own writes (tombstones, version records) are counted by
		// the client request they serve.
		p.obs.QuorumFailure(r.Method)
	}
	verb := "stored"
	if r.Method == http.MethodDelete {
		verb = "deleted"
	}
	writeError(w, http.StatusServiceUnavailable,
		fmt.Sprintf("%s on %d of %d replicas, %d required", verb, n, len(targets), p.m.W))
}

// mayNeedRecord reports whether an upload to targets may need a version
// record, so its checksum must be taken as it streams: some target was not
// seen keeping stamps at its last write (or hasn't been written to yet).
func (p *Proxy) mayNeedRecord(targets []int) bool {
	return p.records && slices.ContainsFunc(targets, func(i int) bool { return !p.keepsStamps[i].Load() })
}

// learnStamping remembers, per node, whether its last stored write was
// confirmed with the stamp (a cring node) or not (a stock node).
func (p *Proxy) learnStamping(os []outcome, stored func(outcome) bool) {
	for _, o := range os {
		if stored(o) && o.node >= 0 && o.node < len(p.keepsStamps) {
			p.keepsStamps[o.node].Store(o.header.Get(stamp.Header) != "")
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

// keepFailedVersion records and backs up an upload answered 503 that some
// replica stored anyway (docs/design.md, "A failed write that survives").
func (p *Proxy) keepFailedVersion(r *http.Request, ref fileRef, st stamp.Stamp, tee *backupTee, record bool) {
	if record {
		if err := p.recordVersion(r, ref, st, tee); err != nil {
			p.log.Warn("no version record for a failed write that survives", "key", ref.key(), "err", err)
		}
	}
	// Best effort, and bounded: the client is waiting for its 503.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), p.postQuorum)
	defer cancel()
	if err := p.backupAck(ctx, r, ref, tee); err != nil {
		p.log.Warn("no backup of a failed write that survives", "key", ref.key(), "err", err)
	}
}

// discardSpool drops an upload's backup spool, if any.
func (p *Proxy) discardSpool(tee *backupTee) {
	if tee != nil && tee.spool != nil {
		p.backup.Discard(tee.spool)
		tee.spool = nil
	}
}

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

// finishTee waits for the backup spool of an upload whose body has been read.
// A spool that failed is dropped: no backup copy means no ack (backupAck
// reports it).
func (p *Proxy) finishTee(key string, tee *backupTee, bodyErr error) {
	if tee == nil {
		return
	}
	if err := tee.finish(bodyErr); err != nil && bodyErr == nil {
		p.log.Warn("upload could not be spooled for the backup", "key", key, "err", err)
		p.discardSpool(tee)
	}
}

// clientBodyError is the error to report for a failed read of a client's
// body: what the client did wrong (stalled, malformed), else that it left.
func clientBodyError(ctx context.Context, err error) error {
	if _, ok := asClientError(err); ok {
		return err
	}
	if ctx.Err() != nil {
		return errClientGone
	}
	return err
}

// bodyFailed answers a write whose client body could not be read, or was
// not what charm's server reads.
func (p *Proxy) bodyFailed(w http.ResponseWriter, r *http.Request, key string, tee *backupTee, err error) {
	p.discardSpool(tee)
	p.log.Warn("write aborted: client body failed", "key", key, "err", err, "request_id", r.Header.Get("X-Request-Id"))
	if ce, ok := asClientError(err); ok {
		writeClientError(w, ce)
		return
	}
	writeError(w, http.StatusBadRequest, "read request body: "+err.Error())
}

// settle does the bookkeeping for a batch of replica outcomes: hints for
// every replica that did not store the write (including replicas skipped as
// down, counted with the first batch), metrics and logs.
func (p *Proxy) settle(r *http.Request, ref fileRef, pref, targets []int, reps []*replica, os []outcome, stored func(outcome) bool) {
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
// node answers or fails before taking the whole body, its pipe is closed so
// the pump stops feeding it.
func (p *Proxy) roundTrip(ctx context.Context, i int, r *http.Request, body io.Reader, rp *replica, cancel context.CancelCauseFunc) outcome {
	req, err := p.newNodeRequest(ctx, i, r, r.Method, body)
	if err != nil {
		if rp != nil {
			rp.pr.CloseWithError(err)
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
		rp.pr.CloseWithError(errAnswered)
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

// pump reads the client's body once and hands every chunk to each live
// replica, waiting for all of them before reusing the buffer, so memory stays
// one buffer per request whatever the file size. A replica that takes no
// chunk within the stall timeout is dropped; the others carry on. The
// returned error is the client's (a failed body fails every replica).
func (p *Proxy) pump(ctx context.Context, src io.Reader, reps []*replica) error {
	bp := p.bufs.Get().(*[]byte)
	buf := *bp
	defer func() {
		for _, rp := range reps {
			close(rp.in)
		}
	}()
	timer := time.NewTimer(p.stall)
	defer timer.Stop()
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if dropped := p.broadcastChunk(buf[:n], reps, timer); dropped {
				// A dropped node's pipe may still be copying from buf:
				// never reuse it.
				buf = make([]byte, bufSize)
				bp = nil
			}
		}
		if rerr == io.EOF {
			for _, rp := range reps {
				if !rp.dead {
					rp.sentAll = true
					rp.pw.Close()
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

// broadcastChunk gives chunk to every live replica and waits until each took
// it, failed, or stalled past the timeout. It reports whether any replica was
// dropped while it might still hold chunk.
func (p *Proxy) broadcastChunk(chunk []byte, reps []*replica, timer *time.Timer) bool {
	live := 0
	for _, rp := range reps {
		if !rp.dead {
			rp.in <- chunk
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
				rp.kill(errStalled)
				dropped = true
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
			rp.kill(errStalled)
			dropped = true
		}
	}
	timer.Stop() // Go 1.23+ timers: no stale value to drain after Stop
	return dropped
}
