package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/config"
	"github.com/cring-dev/cring/internal/testwait"
	"github.com/cring-dev/cring/internal/tombstone"
)

// activeFront is instrumentation in front of a real node: it forwards every
// request and counts the authenticated ones in flight, to see what a proxy
// holds on a node.
type activeFront struct {
	now, peak, total atomic.Int64
}

func (a *activeFront) start() {
	a.total.Add(1)
	n := a.now.Add(1)
	for {
		p := a.peak.Load()
		if n <= p || a.peak.CompareAndSwap(p, n) {
			return
		}
	}
}

// frontNodes puts an activeFront before every node of cfg.
func frontNodes(t testing.TB, cfg *config.Config) []*activeFront {
	t.Helper()
	var fronts []*activeFront
	for i := range cfg.Nodes {
		u, err := url.Parse(cfg.Nodes[i].URL)
		if err != nil {
			t.Fatal(err)
		}
		a := &activeFront{}
		rp := httputil.NewSingleHostReverseProxy(u)
		rp.ErrorLog = nil
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.HasPrefix(r.URL.Path, "/v1/public/") && !strings.HasPrefix(r.URL.Path, "/.well-known/") {
				a.start()
				defer a.now.Add(-1)
			}
			rp.ServeHTTP(w, r)
		})}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { _ = srv.Close() })
		cfg.Nodes[i].URL = "http://" + ln.Addr().String()
		fronts = append(fronts, a)
	}
	return fronts
}

func activeOn(fronts []*activeFront) (now, peak, total int64) {
	for _, f := range fronts {
		now += f.now.Load()
		peak += f.peak.Load()
		total += f.total.Load()
	}
	return now, peak, total
}

// formHead is the start of a charm upload's multipart body: the data part's
// headers, with boundary B.
const formHead = "--B\r\nContent-Disposition: form-data; name=\"data\"; filename=\"f\"\r\n" +
	"Content-Type: application/octet-stream\r\n\r\n"

// rawUpload writes an upload by hand on its own connection: headers
// declaring size bytes of body, then body (which may be less: the client
// then stalls, holding the connection).
func rawUpload(t testing.TB, addr, jwt, name string, size int64, body []byte) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "POST /v1/fs/%s?mode=420 HTTP/1.1\r\nHost: %s\r\nAuthorization: bearer %s\r\n"+
		"Content-Type: multipart/form-data; boundary=B\r\nContent-Length: %d\r\n\r\n", name, addr, jwt, size)
	if _, err := c.Write(body); err != nil {
		t.Fatal(err)
	}
	return c
}

// answer reads one HTTP answer from c (within d) and its JSON message.
func answer(t testing.TB, c net.Conn, d time.Duration) (int, http.Header, string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer within %s: %v", d, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m struct {
		Message string `json:"message"`
	}
	_ = json.Unmarshal(b, &m)
	return resp.StatusCode, resp.Header, m.Message
}

// scrape is a proxy's /metrics text.
func scrape(t testing.TB, admin string) string {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// metricSum adds up the samples of a metric whose line matches every part.
func metricSum(text, name string, parts ...string) float64 {
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if !ok {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v); err == nil {
			sum += v
		}
	}
	return sum
}

// TestStalledUploadReleased: an upload whose body stops arriving is failed
// after --body-idle-timeout with 408, and the node requests it opened are
// ended, without counting against any node.
func TestStalledUploadReleased(t *testing.T) {
	var fronts []*activeFront
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2, tune: func(c *config.Config) {
		c.BodyIdleTimeout = 500 * time.Millisecond
		fronts = frontNodes(t, c)
	}})
	u := tc.newUser(t)
	jwt := u.jwt(t)

	for _, tt := range []struct {
		name     string
		declared int64
		sent     int
	}{
		{"streamed, stalled mid-file", 1 << 20, 32 << 10}, // past the form's head: the nodes are asked
		{"streamed, stalled in its head", 1 << 20, 100},
		{"small, stalled", 16 << 10, 1 << 10}, // read whole before any node is asked
		{"headers only", 1 << 20, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, before := activeOn(fronts)
			body := append([]byte(formHead), bytes.Repeat([]byte("x"), tt.sent)...)[:tt.sent]
			c := rawUpload(t, tc.httpAddr, jwt, "stalled", tt.declared, body)
			status, _, msg := answer(t, c, 20*time.Second)
			if status != http.StatusRequestTimeout || !strings.Contains(msg, "stalled") {
				t.Fatalf("stalled upload: %d %q, want 408 saying it stalled", status, msg)
			}
			testwait.For(t, 10*time.Second, "the condition", func() bool { now, _, _ := activeOn(fronts); return now == 0 })
			_, _, after := activeOn(fronts)
			t.Logf("node requests opened for it: %d", after-before)
		})
	}
	// The nodes were never blamed: all healthy, no replica failure counted.
	m := scrape(t, tc.admin)
	if f := metricSum(m, "cring_replica_failures_total"); f != 0 {
		t.Fatalf("%v replica failures counted for the client's stalls", f)
	}
	if up := metricSum(m, "cring_node_up"); up != 3 {
		t.Fatalf("%v nodes up after the stalls, want 3", up)
	}
	// The stalled file was never stored anywhere, and the user can write.
	u.put(t, "after", []byte("fine"))
	if got := u.get(t, "after"); string(got) != "fine" {
		t.Fatalf("read after the stalls: %q", got)
	}
}

// TestSlowReaderReleased: a client that stops reading its answer loses it
// after --body-idle-timeout, and the node request feeding it ends.
func TestSlowReaderReleased(t *testing.T) {
	var fronts []*activeFront
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2, tune: func(c *config.Config) {
		c.BodyIdleTimeout = 500 * time.Millisecond
		fronts = frontNodes(t, c)
	}})
	u := tc.newUser(t)
	const size = 48 << 20 // well past what loopback socket buffers hold
	upload(t, tc.httpAddr, u.jwt(t), "big", size)
	testwait.For(t, 30*time.Second, "the condition", func() bool { now, _, _ := activeOn(fronts); return now == 0 })

	c, err := net.Dial("tcp", tc.httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "GET /v1/fs/big HTTP/1.1\r\nHost: x\r\nAuthorization: bearer %s\r\n\r\n", u.jwt(t))
	// Nothing is read: the proxy must give up on this client and end the
	// node request that feeds it, well before the node itself would be
	// taken for stalled (--node-timeout, 10s here) and marked down.
	testwait.For(t, 5*time.Second, "the condition", func() bool { now, _, _ := activeOn(fronts); return now > 0 })
	start := time.Now()
	testwait.For(t, 5*time.Second, "the condition", func() bool { now, _, _ := activeOn(fronts); return now == 0 })
	t.Logf("node request ended %s after it started feeding a client that reads nothing", time.Since(start).Round(time.Millisecond))
	n, _ := io.Copy(io.Discard, c)
	if n >= size {
		t.Fatalf("the stalled reader still got all %d bytes", n)
	}
	t.Logf("the stalled reader got %d of %d bytes before the proxy gave up", n, size)
	if up := metricSum(scrape(t, tc.admin), "cring_node_up"); up != 3 {
		t.Fatalf("%v nodes up after a client stopped reading, want 3", up)
	}
}

// TestRequestBounds: one client holds at most --max-requests-per-client
// requests (429 past it, with a message), the proxy at most --max-requests
// (503), and other clients are served meanwhile.
func TestRequestBounds(t *testing.T) {
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2, tune: func(c *config.Config) {
		c.BodyIdleTimeout = time.Minute // the stalls below last the whole test
		c.MaxRequestsPerClient = 3
		c.MaxRequests = 5
	}})
	a, b := tc.newUser(t), tc.newUser(t)
	ja, jb := a.jwt(t), b.jwt(t)
	b.put(t, "mine", []byte("b's file"))

	hold := func(jwt string, n int) []net.Conn {
		var cs []net.Conn
		for i := range n {
			cs = append(cs, rawUpload(t, tc.httpAddr, jwt, fmt.Sprintf("held%d", i), 1<<20, []byte(formHead)))
		}
		return cs
	}
	inFlight := func() float64 { return metricSum(scrape(t, tc.admin), "cring_http_requests_in_flight") }
	heldA := hold(ja, 3)
	testwait.For(t, 10*time.Second, "the condition", func() bool { return inFlight() == 3 })

	over := rawUpload(t, tc.httpAddr, ja, "over", 1<<20, []byte(formHead))
	status, h, msg := answer(t, over, 10*time.Second)
	if status != http.StatusTooManyRequests || !strings.Contains(msg, "max-requests-per-client") || h.Get("Retry-After") == "" {
		t.Fatalf("a's 4th request: %d %q (Retry-After %q), want 429 naming the bound", status, msg, h.Get("Retry-After"))
	}
	if got := string(b.get(t, "mine")); got != "b's file" {
		t.Fatalf("b reads %q while a is at its bound", got)
	}
	b.put(t, "mine", []byte("b's file, again"))

	heldB := hold(jb, 2) // the proxy's 5
	testwait.For(t, 10*time.Second, "the condition", func() bool { return inFlight() == 5 })
	req, _ := http.NewRequest("GET", "http://"+tc.httpAddr+"/v1/fs/mine", nil)
	req.Header.Set("Authorization", "bearer "+jb)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	full, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(full), "max-requests") {
		t.Fatalf("a request past the proxy's bound: %d %s, want 503 naming the bound", resp.StatusCode, full)
	}
	m := scrape(t, tc.admin)
	if metricSum(m, "cring_http_requests_limited_total", `scope="client"`) != 1 || metricSum(m, "cring_http_requests_limited_total", `scope="total"`) != 1 {
		t.Fatalf("limited requests not counted:\n%s", grepLines(m, "limited"))
	}

	// Leaving frees the slots at once.
	for _, c := range append(heldA, heldB...) {
		c.Close()
	}
	testwait.For(t, 10*time.Second, "the condition", func() bool { return inFlight() == 0 })
	if got := string(b.get(t, "mine")); got != "b's file, again" {
		t.Fatalf("b reads %q after the others left", got)
	}
	a.put(t, "a's", []byte("served again"))
}

func grepLines(text, sub string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestMetricLabelsClosed: requests with made-up methods (all refused)
// become the label "other", so they can't grow /metrics.
func TestMetricLabelsClosed(t *testing.T) {
	tc := startCluster(t, clusterOpts{nodes: 1, replicas: 1, quorum: 1})
	base := len(scrape(t, tc.admin))
	for i := range 300 {
		req, _ := http.NewRequest(fmt.Sprintf("M%05d", i), "http://"+tc.httpAddr+"/v1/fs/x", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	m := scrape(t, tc.admin)
	methods := map[string]bool{}
	for _, sub := range regexp.MustCompile(`method="([^"]*)"`).FindAllStringSubmatch(m, -1) {
		methods[sub[1]] = true
	}
	for meth := range methods {
		switch meth {
		case "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "other":
		default:
			t.Errorf("method label %q taken from a client", meth)
		}
	}
	if n := metricSum(m, "cring_http_requests_total", `method="other"`, `code="401"`); n != 300 {
		t.Errorf("%v requests counted as method other with 401, want 300", n)
	}
	t.Logf("/metrics: %d bytes before, %d after 300 made-up methods", base, len(m))
	if len(m) > base+16<<10 {
		t.Errorf("/metrics grew from %d to %d bytes", base, len(m))
	}
}

// TestRootAndReservedRefused: no request can write or delete a user's root
// (it would erase every file and cring's tombstones on every node), nor
// reach cring's own .cring/ directory, however the path is spelled; no node
// sees any of these requests.
func TestRootAndReservedRefused(t *testing.T) {
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2, count: true})
	u := tc.newUser(t)
	u.put(t, "keep/a", []byte("kept"))
	if err := u.fs.Remove("keep/gone"); err != nil { // a tombstone to keep
		t.Fatal(err)
	}
	jwt := u.jwt(t)
	for _, c := range tc.counters {
		c.Store(0)
	}
	body, ctype := formBody(t, []byte("x"))
	for _, tt := range []struct {
		method, path string
		status       int
	}{
		{"DELETE", "/v1/fs/", 400},
		{"DELETE", "/v1/fs/.", 400},
		{"DELETE", "/v1/fs/..", 400},
		{"DELETE", "/v1/fs//", 400},
		{"DELETE", "/v1/fs/keep/..", 400},
		{"DELETE", "/v1/fs/%2e%2e", 400},
		{"DELETE", "/v1/fs/./keep/../../..", 400},
		{"POST", "/v1/fs/", 400},
		{"POST", "/v1/fs/..", 400},
		{"POST", "/v1/fs/keep/..", 400},
		{"GET", "/v1/fs/.cring", 403},
		{"GET", "/v1/fs/.cring/tombstones", 403},
		{"GET", "/v1/fs/keep/../.cring/tombstones", 403},
		{"GET", "/v1/fs/%2ecring/tombstones", 403},
		{"GET", "/v1/fs/.cring%2ftombstones", 403},
		{"GET", "/v1/fs//.cring//tombstones/", 403},
		{"GET", "/v1/fs/./.cring", 403},
		{"GET", "/v1/fs/../.cring", 403},
		{"DELETE", "/v1/fs/.cring", 403},
		{"DELETE", "/v1/fs/.cring/tombstones", 403},
		{"DELETE", "/v1/fs/keep/../.cring", 403},
		{"POST", "/v1/fs/.cring/tombstones/x", 403},
		{"POST", "/v1/fs/a/../.cring/versions/x", 403},
	} {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			var rd io.Reader
			if tt.method == "POST" {
				rd = bytes.NewReader(body)
			}
			req, err := http.NewRequest(tt.method, "http://"+tc.httpAddr+tt.path+"?mode=420", rd)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", "bearer "+jwt)
			req.Header.Set("Content-Type", ctype)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status || !strings.Contains(string(b), `"message"`) {
				t.Fatalf("%d %s, want %d with a message", resp.StatusCode, b, tt.status)
			}
		})
	}
	for i, c := range tc.counters {
		if n := c.Load(); n != 0 {
			t.Fatalf("node%d saw %d of these requests", i+1, n)
		}
	}
	// Everything is still there: files and tombstones, on every node.
	if got := string(u.get(t, "keep/a")); got != "kept" {
		t.Fatalf("keep/a reads %q", got)
	}
	for _, n := range tc.dc.Nodes {
		des, err := os.ReadDir(n.FilePath(u.id, tombstone.Dir))
		if err != nil || len(des) == 0 {
			t.Fatalf("%s: tombstones gone (%v)", n.Name, err)
		}
	}
}

// formBody is a charm upload's multipart body.
func formBody(t testing.TB, data []byte) ([]byte, string) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	part, err := mw.CreateFormFile("data", "f")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = part.Write(data)
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), mw.FormDataContentType()
}

// TestClientErrorsAreClients: requests the client got wrong get 400, 413 or
// 414 with a precise message, most before any node sees them; none counts
// against a node, fails a quorum or leaves a hint.
func TestClientErrorsAreClients(t *testing.T) {
	// What reached the nodes for a client's own request: its path, from
	// the proxy. (The healer's checks and the proxy's own records of
	// earlier subtests, finishing in the background, are not the client's.)
	var reached atomic.Int64
	observe := func(_ int, r *http.Request) {
		if r.Header.Get("X-Request-Id") != "cring-heal" && !strings.HasPrefix(r.URL.Path, "/v1/fs/"+tombstone.Root) {
			reached.Add(1)
		}
	}
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2, count: true, heal: true, observe: observe})
	u := tc.newUser(t)
	jwt := u.jwt(t)
	good, ctype := formBody(t, []byte("hello"))
	big, bigType := formBody(t, bytes.Repeat([]byte("y"), 300<<10))
	noData := strings.ReplaceAll(string(good), `name="data"`, `name="file"`)
	noName := strings.ReplaceAll(string(good), `; filename="f"`, ``)
	bigNoEnd := big[:len(big)-10]
	bigGarbage := append(append([]byte{}, big[:200<<10]...), []byte("\r\n--"+strings.TrimPrefix(bigType, "multipart/form-data; boundary=")+"\r\nbroken header line\r\n\r\n")...)
	bigGarbage = append(bigGarbage, bytes.Repeat([]byte("z"), 100<<10)...)
	long := strings.Repeat("n", 256)
	for _, tt := range []struct {
		name      string
		path      string
		ctype     string
		body      []byte
		length    int64 // Content-Length to declare when not len(body)
		status    int
		msg       string
		nodesMay  bool // the error only shows past the form's head: nodes saw a request
		rawLength bool
	}{
		{name: "garbage body", path: "a?mode=420", ctype: ctype, body: []byte("not a form at all"), status: 400, msg: "multipart"},
		{name: "garbage streamed body", path: "a?mode=420", ctype: ctype, body: bytes.Repeat([]byte("garbage "), 20<<10), status: 400, msg: "multipart"},
		{name: "no data part", path: "a?mode=420", ctype: ctype, body: []byte(noData), status: 400, msg: "no file part named data"},
		{name: "data part without a file name", path: "a?mode=420", ctype: ctype, body: []byte(noName), status: 400, msg: "no file part named data"},
		{name: "not multipart", path: "a?mode=420", ctype: "application/octet-stream", body: []byte("x"), status: 400, msg: "multipart/form-data"},
		{name: "no boundary", path: "a?mode=420", ctype: "multipart/form-data", body: good, status: 400, msg: "boundary"},
		{name: "no body", path: "a?mode=420", ctype: ctype, body: nil, status: 400, msg: "needs a body"},
		{name: "no mode", path: "a", ctype: ctype, body: good, status: 400, msg: "mode"},
		{name: "mode not a number", path: "a?mode=rw", ctype: ctype, body: good, status: 400, msg: "mode"},
		{name: "Content-Length shorter than the body", path: "a?mode=420", ctype: ctype, body: good, length: int64(len(good) - 8), status: 400, msg: "closing boundary", rawLength: true},
		{name: "streamed body cut before its end", path: "a?mode=420", ctype: bigType, body: bigNoEnd, status: 400, msg: "closing boundary", nodesMay: true},
		{name: "streamed body with a broken part", path: "a?mode=420", ctype: bigType, body: bigGarbage, status: 400, msg: "malformed multipart", nodesMay: true},
		{name: "empty path", path: "?mode=420", ctype: ctype, body: good, status: 400, msg: "root"},
		{name: "name too long", path: long + "?mode=420", ctype: ctype, body: good, status: 400, msg: "file name too long"},
		{name: "path too long", path: strings.Repeat("d/", 1600) + "f?mode=420", ctype: ctype, body: good, status: 414, msg: "path too long"},
		{name: "name too long, read", path: long, status: 400, msg: "file name too long"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := reached.Load()
			var status int
			var msg string
			if tt.rawLength {
				c := rawUpload(t, tc.httpAddr, jwt, tt.path[:strings.IndexByte(tt.path, '?')], tt.length, tt.body)
				status, _, msg = answer(t, c, 10*time.Second)
			} else {
				method := "POST"
				var rd io.Reader
				if tt.body != nil {
					rd = bytes.NewReader(tt.body)
				}
				if tt.ctype == "" {
					method = "GET"
				}
				req, err := http.NewRequest(method, "http://"+tc.httpAddr+"/v1/fs/"+tt.path, rd)
				if err != nil {
					t.Fatal(err)
				}
				req.Header.Set("Authorization", "bearer "+jwt)
				if tt.ctype != "" {
					req.Header.Set("Content-Type", tt.ctype)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				var m struct {
					Message string `json:"message"`
				}
				_ = json.NewDecoder(resp.Body).Decode(&m)
				resp.Body.Close()
				status, msg = resp.StatusCode, m.Message
			}
			if status != tt.status || !strings.Contains(msg, tt.msg) {
				t.Fatalf("%d %q, want %d saying %q", status, msg, tt.status, tt.msg)
			}
			if after := reached.Load(); !tt.nodesMay && after != before {
				t.Fatalf("%d requests reached nodes", after-before)
			}
		})
	}
	m := scrape(t, tc.admin)
	for _, name := range []string{"cring_replica_failures_total", "cring_quorum_failures_total"} {
		if v := metricSum(m, name); v != 0 {
			t.Errorf("%s = %v after client errors, want 0", name, v)
		}
	}
	if up := metricSum(m, "cring_node_up"); up != 3 {
		t.Errorf("%v nodes up, want 3", up)
	}
	if n := metricSum(m, "cring_heal_hints_pending"); n != 0 {
		t.Errorf("%v hints for client errors", n)
	}
	if n := metricSum(m, "cring_node_requests_total", `outcome="5xx"`); n != 0 {
		t.Errorf("%v node answers were 5xx", n)
	}
	// Nothing was stored under any of these names.
	for _, n := range tc.dc.Nodes {
		if _, err := os.Stat(n.FilePath(u.id, "a")); err == nil {
			t.Errorf("%s stored a refused upload", n.Name)
		}
	}
}

// TestConnsPerAddress: one address holds at most --max-conns-per-address
// HTTP connections (idle ones included); the next is answered 429 and
// closed, other addresses are served, and a closed connection frees its
// slot.
func TestConnsPerAddress(t *testing.T) {
	tc := startCluster(t, clusterOpts{nodes: 1, replicas: 1, quorum: 1, tune: func(c *config.Config) {
		c.MaxConnsPerAddress = 5
	}})
	var idle []net.Conn
	for range 5 { // connections that never send a request
		c, err := net.Dial("tcp", tc.httpAddr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		idle = append(idle, c)
	}
	testwait.For(t, 10*time.Second, "the condition", func() bool { return metricSum(scrape(t, tc.admin), "cring_http_connections") >= 5 })
	over, err := net.Dial("tcp", tc.httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { over.Close() })
	status, _, msg := answer(t, over, 10*time.Second)
	if status != http.StatusTooManyRequests || !strings.Contains(msg, "max-conns-per-address") {
		t.Fatalf("6th connection: %d %q, want 429 naming the bound", status, msg)
	}
	// Another address is served meanwhile.
	other := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext}}
	resp, err := other.Get("http://" + tc.httpAddr + "/v1/public/jwks")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("another address: %d", resp.StatusCode)
	}
	// A slot comes back when its connection ends.
	idle[0].Close()
	testwait.For(t, 10*time.Second, "the condition", func() bool {
		c, err := net.Dial("tcp", tc.httpAddr)
		if err != nil {
			return false
		}
		defer c.Close()
		fmt.Fprintf(c, "GET /v1/public/jwks HTTP/1.1\r\nHost: x\r\n\r\n")
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if n := metricSum(scrape(t, tc.admin), "cring_http_connections_rejected_total", `reason="max_conns_per_address"`); n < 1 {
		t.Fatalf("refused connections not counted: %v", n)
	}
}
