package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/charmbracelet/keygen"

	"github.com/cring-dev/cring/internal/config"
	"github.com/cring-dev/cring/internal/testwait"
	"github.com/cring-dev/cring/internal/token"
)

// TestHostileUploadsBounded: one user opens 2000 uploads that stall after
// their first bytes, from one address, against a `cring serve` process. The
// address holds at most --max-conns-per-address connections and the user at
// most --max-requests-per-client uploads (the rest are refused at once, 429),
// the proxy's file descriptors, goroutines and memory stay within what those
// few cost, and another user (from another address) has every read and write
// succeed meanwhile (their p99 is logged against the same user's before the
// attack: docs/performance.md). When the attacker leaves, all is released.
func TestHostileUploadsBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("load test")
	}
	const (
		attackers = 2000
		rounds    = 4
		ops       = 400 // the victim's, with and without the attack: half writes, half reads
	)
	bin := cringBinary(t)
	dc, httpAddr, sshAddr, admin := localNodes(t, 3)
	args := []string{"serve", "--address", httpAddr, "--ssh-proxy-address", sshAddr, "--admin-address", admin,
		"--public-url", dc.PublicURL, "--pprof", "--data-dir", t.TempDir(),
		"--body-idle-timeout", "10m"} // the stalls last until the test ends them
	for _, n := range dc.Nodes {
		args = append(args, "--host", n.HTTPURL())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stderr = &quietWriter{t: t, max: 20}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	pid := cmd.Process.Pid
	testwait.For(t, 20*time.Second, "the proxy's metrics", func() bool { _, err := peakRSS(admin); return err == nil })

	signer, err := token.LoadSigner(dc.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	jwtFor := func(name string) string {
		kp, err := keygen.New(filepath.Join(t.TempDir(), name), keygen.WithKeyType(keygen.Ed25519))
		if err != nil {
			t.Fatal(err)
		}
		id, err := dc.SeedUser(kp.RawAuthorizedKey())
		if err != nil {
			t.Fatal(err)
		}
		jwt, err := signer.Sign(id, dc.PublicURL, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return jwt
	}
	victim, attacker := jwtFor("victim"), jwtFor("attacker")

	// The victim comes from another address than the attacker (127.0.0.2).
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	v := &victimClient{t: t, base: "http://" + httpAddr, jwt: victim,
		client: &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4, DialContext: dialer.DialContext}}}
	v.phase(40) // warm: connections, key cache, the files reads read

	// Rounds of the victim's operations without and with the attack, so
	// that whatever else the machine runs weighs on both alike.
	var before, during samples
	for round := range rounds {
		before = append(before, v.phase(ops/rounds)...)
		res0 := proxyResources(t, pid, admin)
		conns := attack(t, httpAddr, attacker, round, attackers, admin, pid, res0)
		during = append(during, v.phase(ops/rounds)...)
		if r := proxyResources(t, pid, admin); !within(r, res0) {
			t.Errorf("round %d: after the victim's operations the proxy holds %s, before the attack %s", round, r, res0)
		}
		// The attacker leaves: all it held is released.
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		testwait.For(t, 30*time.Second, "no request in flight", func() bool { return metricOf(t, admin, "cring_http_requests_in_flight") == 0 })
	}
	t.Logf("victim without the attack: %s", before)
	t.Logf("victim during 2000 stalled uploads of another user: %s", during)
	t.Logf("victim p99 ratio: writes %.2fx, reads %.2fx, all %.2fx",
		ratio(during.p99(opWrite), before.p99(opWrite)), ratio(during.p99(opRead), before.p99(opRead)), ratio(during.p99(""), before.p99("")))
	t.Logf("proxy after the attacker left: %s (idle node connections stay pooled)", proxyResources(t, pid, admin))
	(&victimClient{t: t, base: v.base, jwt: attacker, client: v.client}).phase(2) // served again
}

// What held uploads may cost the proxy: a client connection and one per
// replica each, a few goroutines per connection, buffers.
const (
	heldFDs        = 5*config.DefaultMaxRequestsPerClient + 64
	heldGoroutines = 20*config.DefaultMaxRequestsPerClient + 100
	heldRSS        = 96 << 20
)

func within(r, base resources) bool {
	return r.fds-base.fds <= heldFDs && r.goroutines-base.goroutines <= heldGoroutines && r.rss-base.rss <= heldRSS
}

// attack opens n uploads as the attacker, each declaring 1 MiB and sending
// the form's head and 8 KiB of its file (so the proxy has asked the nodes),
// then nothing. It checks what they got and what the proxy holds, and
// returns their connections, still open.
func attack(t *testing.T, httpAddr, jwt string, round, n int, admin string, pid int, base resources) []net.Conn {
	t.Helper()
	stall := append([]byte(formHead), bytes.Repeat([]byte("a"), 8<<10)...)
	var answered, limited, dropped atomic.Int64
	conns := make([]net.Conn, n)
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})
	var wg sync.WaitGroup
	work := make(chan int)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				c, err := net.Dial("tcp", httpAddr)
				if err != nil {
					t.Errorf("attacker dial: %v", err)
					continue
				}
				conns[i] = c
				var req bytes.Buffer
				fmt.Fprintf(&req, "POST /v1/fs/stall/%d/%d?mode=420 HTTP/1.1\r\nHost: x\r\nAuthorization: bearer %s\r\n"+
					"Content-Type: multipart/form-data; boundary=B\r\nContent-Length: %d\r\n\r\n", round, i, jwt, 1<<20)
				req.Write(stall)
				_, _ = c.Write(req.Bytes())
				go func() { // one answer, if any: the refused get theirs at once
					resp, err := http.ReadResponse(bufio.NewReader(c), nil)
					if err != nil {
						dropped.Add(1) // closed without an answer (or by the test)
						return
					}
					resp.Body.Close()
					answered.Add(1)
					if resp.StatusCode == http.StatusTooManyRequests {
						limited.Add(1)
					}
				}()
			}
		}()
	}
	start := time.Now()
	rejected := metricOf(t, admin, "cring_http_connections_rejected_total")
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	// Settled: every upload is either answered or held by the proxy.
	testwait.For(t, 60*time.Second, "every upload answered or held", func() bool {
		return answered.Load()+dropped.Load()+int64(metricOf(t, admin, "cring_http_requests_in_flight")) >= int64(n)
	})
	held := metricOf(t, admin, "cring_http_requests_in_flight")
	// Each refused connection lingers 500 ms in net/http (it half-closes
	// and waits, so its client reads the 429 rather than a reset): what
	// the attack holds is what is left after that.
	transient := proxyResources(t, pid, admin)
	var r resources
	settled := false
	defer func() {
		if !settled { // testwait failed the test: say what the proxy held
			t.Logf("round %d: the proxy holds %s, before the attack %s (as it was placed %s); %d uploads answered (%d with 429), %v held",
				round, r, base, transient, answered.Load(), limited.Load(), held)
		}
	}()
	testwait.For(t, 15*time.Second, fmt.Sprintf("the proxy back to at most %d more fds, %d more goroutines, %d MiB more RSS than %s",
		heldFDs, heldGoroutines, heldRSS>>20, base), func() bool {
		r = proxyResources(t, pid, admin)
		return within(r, base)
	})
	settled = true
	t.Logf("round %d: attack placed in %s: %d answered (%d with 429), %d closed without an answer, %v held; %v connections refused at accept; "+
		"proxy before %s, as it was placed %s, then %s", round, time.Since(start).Round(time.Millisecond), answered.Load(), limited.Load(), dropped.Load(),
		held, metricOf(t, admin, "cring_http_connections_rejected_total")-rejected, base, transient, r)
	if held > config.DefaultMaxRequestsPerClient {
		t.Errorf("%v of the attacker's uploads held, want at most %d", held, config.DefaultMaxRequestsPerClient)
	}
	if answered.Load() != limited.Load() {
		t.Errorf("%d of the attacker's uploads answered, %d of them 429: want only 429s", answered.Load(), limited.Load())
	}
	return conns
}

// victimClient does a user's ordinary reads and writes of 4 KiB files.
type victimClient struct {
	t      *testing.T
	base   string
	jwt    string
	client *http.Client
	n      int
}

const (
	opWrite = "write"
	opRead  = "read"
)

type sample struct {
	op string
	d  time.Duration
}

type samples []sample

func (s samples) p99(op string) time.Duration { return s.quantile(op, 0.99) }

func (s samples) quantile(op string, q float64) time.Duration {
	var ds []time.Duration
	for _, x := range s {
		if op == "" || x.op == op {
			ds = append(ds, x.d)
		}
	}
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[min(len(ds)-1, int(q*float64(len(ds))))]
}

func (s samples) String() string {
	return fmt.Sprintf("%d ops; writes p50 %s p99 %s; reads p50 %s p99 %s",
		len(s), s.quantile(opWrite, .5).Round(10*time.Microsecond), s.p99(opWrite).Round(10*time.Microsecond),
		s.quantile(opRead, .5).Round(10*time.Microsecond), s.p99(opRead).Round(10*time.Microsecond))
}

func ratio(a, b time.Duration) float64 { return float64(a) / float64(max(b, 1)) }

// phase does n operations one after another, alternating a write of a new
// file and a read of one written before; every one must succeed.
func (v *victimClient) phase(n int) samples {
	v.t.Helper()
	var out samples
	data := bytes.Repeat([]byte("v"), 4<<10)
	for k := range n {
		start := time.Now()
		if k%2 == 0 || v.n == 0 {
			var buf bytes.Buffer
			mw := multipart.NewWriter(&buf)
			fw, _ := mw.CreateFormFile("data", "f")
			_, _ = fw.Write(data)
			_ = mw.Close()
			req, _ := http.NewRequest("POST", fmt.Sprintf("%s/v1/fs/victim/%d?mode=420", v.base, v.n), &buf)
			req.Header.Set("Content-Type", mw.FormDataContentType())
			v.do(req, opWrite)
			v.n++
			out = append(out, sample{opWrite, time.Since(start)})
			continue
		}
		req, _ := http.NewRequest("GET", fmt.Sprintf("%s/v1/fs/victim/%d", v.base, k%v.n), nil)
		if got := v.do(req, opRead); !bytes.Equal(got, data) {
			v.t.Fatalf("victim read %d bytes, want its 4 KiB", len(got))
		}
		out = append(out, sample{opRead, time.Since(start)})
	}
	return out
}

func (v *victimClient) do(req *http.Request, op string) []byte {
	v.t.Helper()
	req.Header.Set("Authorization", "bearer "+v.jwt)
	resp, err := v.client.Do(req)
	if err != nil {
		v.t.Fatalf("victim %s: %v", op, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		v.t.Fatalf("victim %s: %d %s", op, resp.StatusCode, b)
	}
	return b
}

// resources is what a proxy process holds.
type resources struct {
	fds, goroutines int
	rss             int64
}

func (r resources) String() string {
	return fmt.Sprintf("%d fds, %d goroutines, %d MiB RSS", r.fds, r.goroutines, r.rss>>20)
}

func proxyResources(t testing.TB, pid int, admin string) resources {
	t.Helper()
	var r resources
	des, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	r.fds = len(des)
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			r.rss = kb << 10
		}
	}
	resp, err := http.Get("http://" + admin + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first, _ := bufio.NewReader(resp.Body).ReadString('\n')
	if _, err := fmt.Sscanf(first, "goroutine profile: total %d", &r.goroutines); err != nil {
		t.Fatalf("goroutine profile: %q: %v", first, err)
	}
	return r
}

// metricOf is one unlabeled metric of a proxy.
func metricOf(t testing.TB, admin, name string) float64 {
	t.Helper()
	return metricSum(scrape(t, admin), name)
}

// quietWriter logs the first max lines of a process's stderr but its
// request log, then counts.
type quietWriter struct {
	t   testing.TB
	mu  sync.Mutex
	max int
	n   int
}

func (q *quietWriter) Write(p []byte) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		if strings.Contains(line, "msg=request ") {
			continue
		}
		if q.n++; q.n <= q.max {
			q.t.Log(line)
		}
	}
	return len(p), nil
}
