package proxy

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Observer receives what the proxy sees (metrics implement it).
type Observer interface {
	Request(route, method string, code int, d time.Duration, in, out int64)
	NodeRequest(node string, status int, err error, d time.Duration)
	ReplicaFailure(node, op string)
	QuorumFailure(op string)
	Hedged()
	// Streamed: client body bytes in and out, counted as they pass.
	Streamed(in, out int64)
	InFlight(delta int)
	// Limited: a request refused by a bound, "client" (429) or "total" (503).
	Limited(scope string)
}

type nopObserver struct{}

func (nopObserver) Request(string, string, int, time.Duration, int64, int64) {}
func (nopObserver) NodeRequest(string, int, error, time.Duration)            {}
func (nopObserver) ReplicaFailure(string, string)                            {}
func (nopObserver) QuorumFailure(string)                                     {}
func (nopObserver) Hedged()                                                  {}
func (nopObserver) Streamed(int64, int64)                                    {}
func (nopObserver) InFlight(int)                                             {}
func (nopObserver) Limited(string)                                           {}

// trace collects, for the request log line, which nodes a request tried and
// how each answered. Node requests carry it in their context.
type trace struct {
	mu    sync.Mutex
	user  string
	tries []string
}

type traceKey struct{}

func traceFrom(ctx context.Context) *trace {
	t, _ := ctx.Value(traceKey{}).(*trace)
	return t
}

func (t *trace) add(node, outcome string) {
	t.mu.Lock()
	t.tries = append(t.tries, node+"="+outcome)
	t.mu.Unlock()
}

func (t *trace) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.tries, " ")
}

// observedTransport reports every node request to the observer and the
// request's trace.
type observedTransport struct {
	next   http.RoundTripper
	byHost map[string]string
	obs    Observer
}

func (o *observedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := o.next.RoundTrip(req)
	node := o.byHost[req.URL.Host]
	if node == "" {
		return resp, err
	}
	status := 0
	if err == nil {
		status = resp.StatusCode
	}
	o.obs.NodeRequest(node, status, err, time.Since(start))
	if t := traceFrom(req.Context()); t != nil {
		outcome := "error"
		switch {
		case err == nil:
			outcome = strconv.Itoa(status)
		case req.Context().Err() != nil:
			outcome = "cancelled"
		}
		t.add(node, outcome)
	}
	return resp, err
}

// routeOf names a request's route for metrics and logs (bounded label set).
func routeOf(r *http.Request) string {
	p := r.URL.Path
	switch {
	case strings.HasPrefix(p, "/v1/fs/"):
		return "fs"
	case strings.HasPrefix(p, "/v1/seq/"):
		return "seq"
	case p == "/v1/encrypt-key":
		return "encrypt-key"
	case strings.HasPrefix(p, "/v1/bio"):
		return "bio"
	case strings.HasPrefix(p, "/v1/id/"):
		return "id"
	case strings.HasPrefix(p, "/v1/news"):
		return "news"
	case isPublic(p):
		return "public"
	}
	return "other"
}

// recorder keeps the status and bytes a handler wrote. With idle set, each
// write to the client must complete within idle: a client that stops
// reading its answer loses it instead of holding the request (and the node
// connection feeding it) forever.
type recorder struct {
	http.ResponseWriter
	obs    Observer
	status int
	bytes  int64
	rc     *http.ResponseController
	idle   time.Duration
}

// Unwrap lets http.ResponseController reach the connection.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// moveDeadline gives the next write to the client idle to complete.
func (r *recorder) moveDeadline() {
	if r.idle > 0 {
		_ = r.rc.SetWriteDeadline(time.Now().Add(r.idle))
	}
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	r.moveDeadline()
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	r.obs.Streamed(0, int64(n))
	return n, err
}

// counted counts a request body's bytes as the handler reads them.
type counted struct {
	io.ReadCloser
	obs Observer
	n   int64
}

func (c *counted) Read(b []byte) (int, error) {
	n, err := c.ReadCloser.Read(b)
	c.n += int64(n)
	c.obs.Streamed(int64(n), 0)
	return n, err
}

// observe wraps one request: metrics and one log line at the end, even when
// the handler aborts the connection.
func (p *Proxy) observe(w http.ResponseWriter, r *http.Request, rid string, serve func(http.ResponseWriter, *http.Request)) {
	start := time.Now()
	tr := &trace{}
	rec := &recorder{ResponseWriter: w, obs: p.obs, rc: http.NewResponseController(w), idle: p.bodyIdle}
	if rec.idle > 0 && rec.rc.SetWriteDeadline(time.Time{}) != nil {
		rec.idle = 0 // not a connection that takes deadlines (tests' recorders)
	}
	// A copy: the server's own request keeps its own body, so when it
	// answers a request whose body was never read it closes the
	// connection instead of first reading up to 256 KiB of that body.
	r = r.WithContext(context.WithValue(r.Context(), traceKey{}, tr))
	idle := watchBody(w, r, p.bodyIdle)
	body := &counted{ReadCloser: r.Body, obs: p.obs}
	p.obs.InFlight(1)
	if r.Body != nil {
		r.Body = body
	}
	defer func() {
		// The server flushes the rest of the answer after this: it, too,
		// must not wait on a client that stopped reading.
		rec.moveDeadline()
		idle.handlerDone()
		p.obs.InFlight(-1)
		d := time.Since(start)
		status := rec.status
		aborted := recover()
		if aborted != nil {
			status = 499 // connection aborted mid-answer
		}
		route := routeOf(r)
		p.obs.Request(route, r.Method, status, d, body.n, rec.bytes)
		level := slog.LevelInfo
		if status >= 500 || aborted != nil {
			level = slog.LevelWarn
		}
		// Typed attributes, built only when the line is written: the log
		// line is a good part of what a small request costs the proxy.
		if ctx := r.Context(); p.log.Enabled(ctx, level) {
			tr.mu.Lock()
			user := tr.user
			tr.mu.Unlock()
			p.log.LogAttrs(ctx, level, "request",
				slog.String("request_id", rid), slog.String("user", user), slog.String("method", r.Method),
				slog.String("route", route), slog.String("path", r.URL.Path), slog.Int("status", status),
				slog.Duration("duration", d.Round(time.Microsecond)), slog.Int64("in", body.n), slog.Int64("out", rec.bytes),
				slog.String("replicas", tr.String()))
		}
		if aborted != nil {
			panic(aborted)
		}
	}()
	serve(rec, r)
}
