package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

// Bounds every client lives within (docs/design.md, "Bounds"): a body must
// keep moving, and a client may hold only so many requests at once, so a
// slow or hostile client costs itself and never the others.

// Defaults of the bounds (Options, and cring serve's flags).
const (
	DefaultBodyIdleTimeout      = 30 * time.Second
	DefaultMaxRequestsPerClient = 32
	DefaultMaxRequests          = 1024
)

// clientError is a request the client got wrong (or stalled): it is answered
// with its status and message, and never counts against a node.
type clientError struct {
	status int
	msg    string
}

func (e *clientError) Error() string { return e.msg }

func badRequest(format string, args ...any) *clientError {
	return &clientError{status: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

// asClientError finds a client error in err's chain.
func asClientError(err error) (*clientError, bool) {
	var ce *clientError
	ok := errors.As(err, &ce)
	return ce, ok
}

// idleBody is a client's request body with a read deadline that moves
// forward with every read: a body that stops arriving fails after idle
// instead of holding its request (and the node connections behind it)
// forever. The clock runs only while the proxy reads (a request waiting for
// its turn is not the client's delay), and once more when the handler is
// done with a body it didn't read to its end, to bound what the server then
// reads of it.
type idleBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	idle time.Duration
	done bool // EOF seen: the deadline is cleared
}

// watchBody puts r's body, if it has one, under the idle deadline. A
// request without a body gets none: the server is already reading its
// connection in the background, and a deadline there would end the request.
func watchBody(w http.ResponseWriter, r *http.Request, idle time.Duration) *idleBody {
	if idle <= 0 || r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return nil
	}
	b := &idleBody{ReadCloser: r.Body, rc: http.NewResponseController(w), idle: idle}
	if b.rc.SetReadDeadline(time.Time{}) != nil {
		return nil // not a connection that takes deadlines (tests' recorders)
	}
	r.Body = b
	return b
}

// handlerDone starts the clock on a body the handler left unread.
func (b *idleBody) handlerDone() {
	if b != nil && !b.done {
		_ = b.rc.SetReadDeadline(time.Now().Add(b.idle))
	}
}

func (b *idleBody) Read(p []byte) (int, error) {
	if b.done {
		return b.ReadCloser.Read(p)
	}
	_ = b.rc.SetReadDeadline(time.Now().Add(b.idle))
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == io.EOF:
		// The server now reads the connection in the background to see
		// the client leave; no deadline may end that read.
		b.done = true
		_ = b.rc.SetReadDeadline(time.Time{})
	case err != nil && errors.Is(err, os.ErrDeadlineExceeded):
		err = &clientError{status: http.StatusRequestTimeout,
			msg: fmt.Sprintf("request body stalled: no bytes for %s (--body-idle-timeout)", b.idle)}
	case err != nil:
		if _, ok := asClientError(err); !ok {
			err = &clientError{status: http.StatusBadRequest, msg: "read request body: " + err.Error()}
		}
	}
	return n, err
}

// limiter bounds requests in flight per client and in total. It never
// queues: a client over its bound is told so at once (429), and the total
// bound (503) keeps the process within its file descriptors and memory
// however many clients there are.
type limiter struct {
	perClient, total int
	mu               sync.Mutex
	n                int
	by               map[string]int
}

func newLimiter(perClient, total int) *limiter {
	return &limiter{perClient: perClient, total: total, by: map[string]int{}}
}

// acquire takes a slot for client, or says which bound refused it.
func (l *limiter) acquire(client string) (release func(), err *clientError) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.by[client] >= l.perClient {
		return nil, &clientError{status: http.StatusTooManyRequests, msg: fmt.Sprintf(
			"too many requests in flight for this client: at most %d at once (--max-requests-per-client); retry when one has finished", l.perClient)}
	}
	if l.n >= l.total {
		return nil, &clientError{status: http.StatusServiceUnavailable, msg: fmt.Sprintf(
			"the proxy is serving its limit of %d requests (--max-requests); retry shortly", l.total)}
	}
	l.n++
	l.by[client]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.n--
			if l.by[client]--; l.by[client] <= 0 {
				delete(l.by, client) // the map holds only clients in flight
			}
		})
	}, nil
}

// inFlight is the number of requests holding a slot now.
func (l *limiter) inFlight() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

// addrClient names an unauthenticated client by its source address: the
// IP without the port (one host opening many connections is one client),
// for IPv6 its /64 (a host commonly has a whole /64 to pick from).
func addrClient(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
		host = ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
	}
	return "addr " + host
}

// limitScope names the bound that refused a request, for metrics.
func limitScope(e *clientError) string {
	if e.status == http.StatusTooManyRequests {
		return "client"
	}
	return "total"
}

// writeClientError answers e; 429 and 503 say when to come back.
func writeClientError(w http.ResponseWriter, e *clientError) {
	if e.status == http.StatusTooManyRequests || e.status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	if e.status == http.StatusRequestTimeout {
		// The rest of a stalled body will not be read: the connection ends.
		w.Header().Set("Connection", "close")
	}
	writeError(w, e.status, e.msg)
}
