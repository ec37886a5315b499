// Package proxy is the HTTP front door of a cring cluster: it looks like one
// Charm server to clients and fans requests out to the nodes that hold the data.
//
// Routes:
//   - POST/DELETE /v1/fs/*: streamed to the key's replicas at once, acked at W.
//   - GET /v1/fs/*: replicas in preference order with failover; directories
//     are merged from every healthy node.
//   - POST /v1/encrypt-key, /v1/bio: every healthy node, acked at W.
//   - /v1/seq/:name: every healthy node, answered with the max (never backwards).
//   - /v1/public/, /.well-known/: any healthy node, unauthenticated.
//   - anything else: one healthy node with failover.
package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cring-dev/cring/internal/auth"
	"github.com/cring-dev/cring/internal/cluster"
	"github.com/cring-dev/cring/internal/stamp"
	"github.com/cring-dev/cring/internal/tombstone"
)

// Verifier checks an Authorization header and returns the charm ID.
type Verifier interface {
	Verify(ctx context.Context, header string) (string, error)
}

// Options configure a Proxy.
type Options struct {
	// Members are the nodes, ring, W and health the proxy serves on; a
	// reload builds a new Proxy on a new membership.
	Members   *cluster.Membership
	Verifier  Verifier
	Transport http.RoundTripper
	Logger    *slog.Logger
	// SharedAccounts: every node reads and writes one account store, so
	// account calls go to a single node and seq needs no merging.
	SharedAccounts bool
	// Observer gets metrics; nil: none.
	Observer Observer
	// Healer hears about missed replicas and disagreeing reads; nil: none.
	Healer Healer
	// Backup, if set, gets every acknowledged write and delete and serves
	// reads no node can.
	Backup Backup
	// PostQuorumTimeout bounds how long the replicas still writing after a
	// write was answered at quorum may take; then they are cancelled and
	// hinted. Default 10s.
	PostQuorumTimeout time.Duration
	// StallTimeout bounds how long a node may make no progress reading a
	// request body or sending a response body before it loses the request.
	StallTimeout time.Duration
	// BodyIdleTimeout bounds how long a client may make no progress sending
	// its request body or reading its answer before it loses the request
	// (408 when its body stalled). Default DefaultBodyIdleTimeout.
	BodyIdleTimeout time.Duration
	// MaxRequestsPerClient bounds the requests one client (charm ID, or
	// source address on unauthenticated routes) has in flight; more get
	// 429. MaxRequests bounds them in total; more get 503. Defaults
	// DefaultMaxRequestsPerClient and DefaultMaxRequests.
	MaxRequestsPerClient int
	MaxRequests          int
	// Clock stamps every write and delete (docs/design.md, "Versions");
	// nil: a clock of its own with a random id.
	Clock *stamp.Clock
	// VersionRecords: some node may not keep stamps (stock charm serve), so
	// uploads are hashed as they stream, and one stored by a replica that
	// did not confirm its stamp also writes a version record (stamp, size,
	// SHA-256) at W before it is acknowledged.
	VersionRecords bool
}

// Proxy serves the Charm HTTP API over a cluster.
type Proxy struct {
	m          *cluster.Membership
	verifier   Verifier
	transport  http.RoundTripper
	log        *slog.Logger
	stall      time.Duration
	bodyIdle   time.Duration
	limits     *limiter
	shared     bool
	obs        Observer
	healer     Healer
	clock      *stamp.Clock
	records    bool
	noTombs    userSet
	tombBodies tombCache
	recs       recordCache
	// keepsStamps: node i confirmed the stamp of its last stored write (a
	// cring node); uploads to such nodes need no checksum from the proxy.
	keepsStamps []atomic.Bool
	dirs        keySet
	inflight    keyedWait
	lat         *latencies
	backup      Backup
	postQuorum  time.Duration
	maxTails    int // background writes per node (maxTailsPerNode; tests lower it)
	bufs        sync.Pool
	seqLocks    keyedMutex
}

// New checks opts and returns a Proxy.
func New(o Options) (*Proxy, error) {
	m := o.Members
	if m == nil || len(m.Nodes) == 0 || m.Health == nil || o.Verifier == nil {
		return nil, errors.New("proxy: members (with health) and verifier are required")
	}
	if m.W < 1 || m.W > m.N() {
		return nil, fmt.Errorf("proxy: write quorum %d out of range 1..%d", m.W, m.N())
	}
	if o.Transport == nil {
		// Never the default transport: it has no answer timeout.
		o.Transport = &http.Transport{ResponseHeaderTimeout: 30 * time.Second}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Observer == nil {
		o.Observer = nopObserver{}
	}
	if o.Healer == nil {
		o.Healer = nopHealer{}
	}
	byHost := map[string]string{}
	for i := range m.Nodes {
		byHost[m.Nodes[i].API().Host] = m.Nodes[i].Name
	}
	o.Transport = &observedTransport{next: o.Transport, byHost: byHost, obs: o.Observer}
	if o.StallTimeout <= 0 {
		o.StallTimeout = 30 * time.Second
	}
	if o.BodyIdleTimeout <= 0 {
		o.BodyIdleTimeout = DefaultBodyIdleTimeout
	}
	if o.MaxRequestsPerClient <= 0 {
		o.MaxRequestsPerClient = DefaultMaxRequestsPerClient
	}
	if o.MaxRequests <= 0 {
		o.MaxRequests = DefaultMaxRequests
	}
	p := &Proxy{
		m:          m,
		verifier:   o.Verifier,
		transport:  o.Transport,
		log:        o.Logger,
		stall:      o.StallTimeout,
		bodyIdle:   o.BodyIdleTimeout,
		limits:     newLimiter(o.MaxRequestsPerClient, o.MaxRequests),
		shared:     o.SharedAccounts,
		obs:        o.Observer,
		healer:     o.Healer,
		postQuorum: o.PostQuorumTimeout,
		backup:     o.Backup,
		clock:      o.Clock,
		records:    o.VersionRecords,
	}
	if p.clock == nil {
		p.clock = stamp.NewClock(nil)
	}
	p.lat = newLatencies(len(p.m.Nodes))
	p.keepsStamps = make([]atomic.Bool, len(p.m.Nodes))
	p.maxTails = maxTailsPerNode
	if p.postQuorum <= 0 {
		p.postQuorum = 10 * time.Second
	}
	p.bufs.New = func() any { b := make([]byte, bufSize); return &b }
	return p, nil
}

// bufSize is the unit of streaming: memory per request is a few of these
// (an upload holds one while it streams to every replica).
const bufSize = 32 << 10

// maxSmallBody caps bodies the proxy must keep to send to several nodes
// (account calls); Charm itself refuses more than 1 MiB there.
const maxSmallBody = 1 << 20

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rid := r.Header.Get("X-Request-Id")
	if rid == "" || len(rid) > 128 {
		rid = newRequestID()
		r.Header.Set("X-Request-Id", rid)
	}
	w.Header().Set("X-Request-Id", rid)
	p.observe(w, r, rid, p.route)
}

// route dispatches one request (see the package comment).
func (p *Proxy) route(w http.ResponseWriter, r *http.Request) {
	if isPublic(r.URL.Path) {
		release, lerr := p.limits.acquire(addrClient(r))
		if lerr != nil {
			p.obs.Limited(limitScope(lerr))
			writeClientError(w, lerr)
			return
		}
		defer release()
		p.forwardOne(w, r, nil)
		return
	}
	user, err := p.verifier.Verify(r.Context(), r.Header.Get("Authorization"))
	if err != nil {
		var ae *auth.Error
		if errors.As(err, &ae) {
			writeError(w, http.StatusUnauthorized, ae.Reason)
			return
		}
		p.log.Error("cannot verify token", "err", err, "request_id", r.Header.Get("X-Request-Id"))
		writeError(w, http.StatusServiceUnavailable, "cannot verify token: no node answered for the key set")
		return
	}

	if t := traceFrom(r.Context()); t != nil {
		t.mu.Lock()
		t.user = user
		t.mu.Unlock()
	}
	release, lerr := p.limits.acquire(user)
	if lerr != nil {
		p.obs.Limited(limitScope(lerr))
		writeClientError(w, lerr)
		return
	}
	defer release()
	p.healer.RecordUser(user)
	r.Header.Del(stamp.Header) // stamps are the proxy's to give, never a client's
	rest, isFS := strings.CutPrefix(r.URL.Path, "/v1/fs/")
	ref := fileRef{user: user, path: tombstone.Clean(rest)}
	if isFS && tombstone.Reserved(ref.path) {
		writeError(w, http.StatusForbidden, tombstone.Root+" is reserved for cring")
		return
	}
	if isFS {
		cerr := checkFSPath(ref)
		if cerr == nil && (r.Method == http.MethodPost || r.Method == http.MethodDelete) {
			cerr = checkFSWrite(r, ref)
		}
		if cerr != nil {
			writeClientError(w, cerr)
			return
		}
	}
	switch {
	case isFS && r.Method == http.MethodPost:
		p.write(w, r, ref, p.clock.Now())
	case isFS && r.Method == http.MethodDelete:
		p.delete(w, r, ref)
	case isFS && r.Method == http.MethodGet:
		p.read(w, r, ref)
	case !p.shared && r.Method == http.MethodPost && (r.URL.Path == "/v1/encrypt-key" || r.URL.Path == "/v1/bio"):
		p.broadcast(w, r)
	case !p.shared && strings.HasPrefix(r.URL.Path, "/v1/seq/") && (r.Method == http.MethodGet || r.Method == http.MethodPost):
		p.seq(w, r, user, strings.TrimPrefix(r.URL.Path, "/v1/seq/"))
	default:
		body, ok := readSmallBody(w, r)
		if !ok {
			return
		}
		p.forwardOne(w, r, body)
	}
}

func isPublic(p string) bool {
	return strings.HasPrefix(p, "/v1/public/") || strings.HasPrefix(p, "/.well-known/")
}

// placementKey is docs/design.md, invariant 1: charmID + "/" + cleaned path.
func placementKey(user, rest string) string {
	return user + "/" + tombstone.Clean(rest)
}

// fileRef is a file of one user.
type fileRef struct{ user, path string }

func (f fileRef) key() string { return placementKey(f.user, f.path) }

func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// writeError answers like Charm does: JSON {"message": ...}.
func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(struct {
		Message string `json:"message"`
	}{msg})
}

// readSmallBody reads a body that must be replayable (sent to several nodes
// or retried), refusing more than maxSmallBody.
func readSmallBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, true
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, maxSmallBody+1))
	if err != nil {
		if ce, ok := asClientError(err); ok {
			writeClientError(w, ce)
		} else {
			writeError(w, http.StatusBadRequest, "read request body: "+err.Error())
		}
		return nil, false
	}
	if len(b) > maxSmallBody {
		writeError(w, http.StatusRequestEntityTooLarge, "request body larger than 1 MiB")
		return nil, false
	}
	return b, true
}

// isHopHeader reports whether canonical key k is a connection-level header
// a proxy must not forward (RFC 9110 7.6.1).
func isHopHeader(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// copyHeader copies src's end-to-end headers into dst: not the hop-by-hop
// ones, nor those src's Connection names. It runs two or three times per
// request, so the values share one backing array (as Header.Clone does)
// and hop headers are skipped instead of copied and deleted.
func copyHeader(dst, src http.Header) {
	var named []string // headers the Connection header names
	n := 0
	for k, vv := range src {
		n += len(vv)
		if k != "Connection" {
			continue
		}
		for _, f := range vv {
			for k := range strings.SplitSeq(f, ",") {
				if k = strings.TrimSpace(k); k != "" {
					named = append(named, http.CanonicalHeaderKey(k))
				}
			}
		}
	}
	vals := make([]string, n)
	for k, vv := range src {
		if isHopHeader(k) || slices.Contains(named, k) {
			continue
		}
		c := copy(vals, vv)
		dst[k] = vals[:c:c]
		vals = vals[c:]
	}
}

// newNodeRequest builds the request to node i for the client's request r,
// same method, path, query and headers (the token is passed on untouched).
func (p *Proxy) newNodeRequest(ctx context.Context, i int, r *http.Request, method string, body io.Reader) (*http.Request, error) {
	u := *p.m.Nodes[i].API()
	u.Path = strings.TrimRight(u.Path, "/") + r.URL.Path
	if r.URL.RawPath != "" {
		u.RawPath = strings.TrimRight(u.EscapedPath(), "/") + r.URL.RawPath
	}
	u.RawQuery = r.URL.RawQuery
	// The URL is built, not parsed from a string: one less parse per request.
	req, err := http.NewRequestWithContext(ctx, method, "", body)
	if err != nil {
		return nil, fmt.Errorf("build request for %s: %w", p.m.Nodes[i].Name, err)
	}
	req.URL = &u
	copyHeader(req.Header, r.Header)
	req.Host = u.Host
	return req, nil
}

// outcome is one node's answer to one request, its body kept only when small.
type outcome struct {
	node   int
	status int // 0: no HTTP answer
	header http.Header
	body   []byte
	err    error
}

func (o *outcome) ok() bool { return o.err == nil && o.status >= 200 && o.status <= 299 }

func (o *outcome) String() string {
	if o.err != nil {
		return o.err.Error()
	}
	return http.StatusText(o.status)
}

// send does one small request to node i and keeps the answer.
func (p *Proxy) send(ctx context.Context, i int, r *http.Request, method string, body []byte) outcome {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	nctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	req, err := p.newNodeRequest(nctx, i, r, method, rd)
	if err != nil {
		return outcome{node: i, err: err}
	}
	resp, err := p.transport.RoundTrip(req)
	if err != nil {
		p.nodeFailed(ctx, i, err)
		return outcome{node: i, err: fmt.Errorf("%s %s on %s: %w", method, r.URL.Path, p.m.Nodes[i].Name, err)}
	}
	return p.keep(ctx, i, resp, cancel)
}

// keep reads a small answer and closes it. cancel ends the node request: a
// node that sends headers and then stalls loses it after the stall timeout
// (closing the body from another goroutine would wait for the stuck Read).
func (p *Proxy) keep(ctx context.Context, i int, resp *http.Response, cancel context.CancelCauseFunc) outcome {
	defer resp.Body.Close()
	t := time.AfterFunc(p.stall, func() { cancel(errStalled) })
	defer t.Stop()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxSmallBody))
	if err != nil {
		p.nodeFailed(ctx, i, err)
		return outcome{node: i, err: fmt.Errorf("read answer from %s: %w", p.m.Nodes[i].Name, err)}
	}
	return outcome{node: i, status: resp.StatusCode, header: resp.Header, body: b}
}

// nodeFailed marks a node down after a transport failure, unless the failure
// is only the client going away.
func (p *Proxy) nodeFailed(ctx context.Context, i int, err error) {
	if cause := context.Cause(ctx); cause == errStalled {
		p.m.Health.MarkDown(i, fmt.Errorf("%w: %v", errStalled, err))
		return
	}
	if ctx.Err() != nil || errors.Is(err, context.Canceled) || errors.Is(err, errClientGone) {
		return
	}
	if _, ok := asClientError(err); ok {
		return // the client's body failed (stalled, malformed): not the node
	}
	p.m.Health.MarkDown(i, err)
}

var errClientGone = errors.New("client went away")

// relay writes a kept outcome to the client.
func relay(w http.ResponseWriter, o outcome) {
	copyHeader(w.Header(), o.header)
	w.Header().Del("Content-Length")
	w.WriteHeader(o.status)
	_, _ = w.Write(o.body)
}

// stream copies a node's response to the client without holding it, giving
// up when the node stalls for longer than the stall timeout.
func (p *Proxy) stream(w http.ResponseWriter, resp *http.Response, cancel context.CancelCauseFunc) error {
	copyHeader(w.Header(), resp.Header)
	w.WriteHeader(resp.StatusCode)
	bp := p.bufs.Get().(*[]byte)
	defer p.bufs.Put(bp)
	t := time.AfterFunc(p.stall, func() { cancel(errStalled) })
	defer t.Stop()
	buf := *bp
	for {
		n, err := resp.Body.Read(buf)
		t.Reset(p.stall)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return errClientGone
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

var errStalled = errors.New("node stalled")

// healthyNodes lists nodes believed up, in configured order.
func (p *Proxy) healthyNodes() []int {
	out := make([]int, 0, len(p.m.Nodes))
	for i := range p.m.Nodes {
		if p.m.Health.Healthy(i) {
			out = append(out, i)
		}
	}
	return out
}

// keyedMutex serializes work per key without growing with the keys ever seen.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]*refMutex
}

type refMutex struct {
	sync.Mutex
	refs int
}

func (k *keyedMutex) lock(key string) func() {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*refMutex{}
	}
	m, ok := k.locks[key]
	if !ok {
		m = &refMutex{}
		k.locks[key] = m
	}
	m.refs++
	k.mu.Unlock()
	m.Lock()
	return func() {
		m.Unlock()
		k.mu.Lock()
		m.refs--
		if m.refs == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
}

// keyedWait tracks keys with replica writes still running (answering the
// client, or in the background after it was answered), and on which nodes:
// stock Charm writes a file in place, so such a node may serve a partial
// copy until it is done. Entries go away when their last write
// ends, so it never grows with the keys ever written.
type keyedWait struct {
	mu      sync.Mutex
	keys    map[string]*waitEntry
	tails   map[int]int // node → background writes running there, all keys
	waiters int         // requests waiting for a key's writes (for tests and debugging)
}

// maxTailsPerNode bounds the background writes to one node: a node that
// stalls after taking whole bodies would otherwise hold a connection (and
// its buffers) per write for the post-quorum timeout, so memory would grow
// with the write rate. Writes over the bound are cancelled and hinted.
const maxTailsPerNode = 256

type waitEntry struct {
	n     int
	nodes map[int]int   // node → writes still running there
	done  chan struct{} // made by the first waiter (few writes have one), closed at the end
}

// add records background writes of key to nodes, admitting at most limit
// per node at a time; it returns the nodes admitted (the caller cancels the
// others) and a func to call when they are done.
func (k *keyedWait) add(key string, nodes []int, limit int) (admitted []int, done func()) {
	return k.mark(key, nodes, limit, true)
}

// start records a write of key to nodes while its client is still being
// answered: reads skip those nodes, and the next write of key waits.
func (k *keyedWait) start(key string, nodes []int) (done func()) {
	_, done = k.mark(key, nodes, 0, false)
	return done
}

// mark counts writes of key on nodes; tails (background writes) are also
// counted per node and bounded by limit.
func (k *keyedWait) mark(key string, nodes []int, limit int, tail bool) (admitted []int, done func()) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.keys == nil {
		k.keys = map[string]*waitEntry{}
		k.tails = map[int]int{}
	}
	e, ok := k.keys[key]
	if !ok {
		e = &waitEntry{nodes: make(map[int]int, len(nodes))}
		k.keys[key] = e
	}
	e.n++
	for _, i := range nodes {
		if tail {
			if k.tails[i] >= limit {
				continue
			}
			k.tails[i]++
		}
		e.nodes[i]++
		admitted = append(admitted, i)
	}
	return admitted, func() {
		k.mu.Lock()
		defer k.mu.Unlock()
		for _, i := range admitted {
			if e.nodes[i]--; e.nodes[i] == 0 {
				delete(e.nodes, i)
			}
			if !tail {
				continue
			}
			if k.tails[i]--; k.tails[i] == 0 {
				delete(k.tails, i)
			}
		}
		if e.n--; e.n == 0 {
			if e.done != nil {
				close(e.done)
			}
			delete(k.keys, key)
		}
	}
}

func (k *keyedWait) wait(key string) {
	_ = k.waitCtx(context.Background(), key)
}

// waitCtx waits for key's writes running now, or for ctx to end.
func (k *keyedWait) waitCtx(ctx context.Context, key string) error {
	k.mu.Lock()
	e, ok := k.keys[key]
	var done chan struct{}
	if ok {
		k.waiters++
		if e.done == nil {
			e.done = make(chan struct{})
		}
		done = e.done
	}
	k.mu.Unlock()
	if !ok {
		return nil
	}
	defer func() {
		k.mu.Lock()
		k.waiters--
		k.mu.Unlock()
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// writing reports whether node i is still being written key.
func (k *keyedWait) writing(key string, i int) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	e, ok := k.keys[key]
	return ok && e.nodes[i] > 0
}

// writingOn counts the nodes key is being written to.
func (k *keyedWait) writingOn(key string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	if e, ok := k.keys[key]; ok {
		return len(e.nodes)
	}
	return 0
}

// keySet remembers keys seen to be directories (bounded; cleared when full),
// so their next listing asks every node at once.
type keySet struct {
	mu sync.Mutex
	m  map[string]struct{}
}

func (k *keySet) has(key string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, ok := k.m[key]
	return ok
}

func (k *keySet) add(key string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.m == nil || len(k.m) >= 1<<16 {
		k.m = map[string]struct{}{}
	}
	k.m[key] = struct{}{}
}

func (k *keySet) forget(key string) {
	k.mu.Lock()
	delete(k.m, key)
	k.mu.Unlock()
}
