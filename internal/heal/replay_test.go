package heal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/charmbracelet/keygen"
	charmlog "github.com/charmbracelet/log"

	"github.com/cring-dev/cring/internal/cluster"
	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/stamp"
	"github.com/cring-dev/cring/internal/testwait"
	"github.com/cring-dev/cring/internal/token"
	"github.com/cring-dev/cring/internal/tombstone"
)

func TestMain(m *testing.M) {
	// The in-process Charm servers log every request.
	stdlog.SetOutput(io.Discard)
	charmlog.SetOutput(io.Discard)
	os.Exit(m.Run())
}

// testHealth is the healer's view of which nodes are up, set by the test.
type testHealth struct {
	mu   sync.Mutex
	down map[int]bool
}

func (h *testHealth) Healthy(i int) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return !h.down[i]
}

func (h *testHealth) MarkDown(i int, _ error) { h.set(i, false) }

func (h *testHealth) set(i int, up bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.down == nil {
		h.down = map[int]bool{}
	}
	h.down[i] = !up
}

// front forwards to a real node and counts what reaches it: instrumentation,
// not a fake.
type front struct {
	mu   sync.Mutex
	reqs map[string]int // "GET /v1/fs/kv" → count
	// before, when set, runs before a request is forwarded (with its
	// count so far, this one included).
	before func(r *http.Request, n int)
}

func (f *front) ServeHTTP(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/fs/") {
			f.mu.Lock()
			f.reqs[r.Method+" "+r.URL.Path]++
			n, before := f.reqs[r.Method+" "+r.URL.Path], f.before
			f.mu.Unlock()
			if before != nil {
				before(r, n)
			}
		}
		next.ServeHTTP(w, r)
	})
}

func (f *front) count(req string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reqs[req]
}

func (f *front) total() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.reqs {
		n += c
	}
	return n
}

func (f *front) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = map[string]int{}
}

// healCluster is real Charm servers in this process (cring node's file
// store when versioned), each behind a counting front, and a healer.
type healCluster struct {
	t      *testing.T
	dc     *devcluster.Cluster
	h      *Healer
	user   string
	health *testHealth
	fronts []*front
	clock  *stamp.Clock
}

type healOpts struct {
	versioned bool
	hintLimit int
	byteRate  float64
	interval  time.Duration
}

func newHealCluster(t *testing.T, o healOpts) *healCluster {
	t.Helper()
	dir := t.TempDir()
	const issuer = "http://127.0.0.1:35354"
	dc, err := devcluster.New(dir, devcluster.Options{Nodes: 3, PublicURL: issuer, Versioned: o.versioned})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dc.Close() })
	if err := dc.StartAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	kp, err := keygen.New(filepath.Join(dir, "user_ed25519"), keygen.WithKeyType(keygen.Ed25519))
	if err != nil {
		t.Fatal(err)
	}
	user, err := dc.SeedUser(kp.RawAuthorizedKey())
	if err != nil {
		t.Fatal(err)
	}
	signer, err := token.LoadSigner(dc.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	hc := &healCluster{t: t, dc: dc, user: user, health: &testHealth{}, clock: stamp.NewClock(time.Now)}
	var nodes []cluster.Node
	for _, n := range dc.Nodes {
		target, _ := url.Parse(n.HTTPURL())
		f := &front{reqs: map[string]int{}}
		srv := httptest.NewServer(f.ServeHTTP(httputil.NewSingleHostReverseProxy(target)))
		t.Cleanup(srv.Close)
		hc.fronts = append(hc.fronts, f)
		nodes = append(nodes, cluster.Node{Name: n.Name, URL: srv.URL})
	}
	m, err := cluster.New(nodes, 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	m.Health = hc.health
	hc.h, err = New(Options{
		Members: m, Signer: signer,
		Issuer: func() string { return issuer }, DataDir: t.TempDir(),
		Logger:       slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
		StallTimeout: 10 * time.Second, HintLimit: o.hintLimit, ByteRate: o.byteRate, ScanInterval: o.interval,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hc.h.Close)
	return hc
}

type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// put stores data as p on the given nodes with stamp st, as a write
// through the proxy would.
func (hc *healCluster) put(p string, data []byte, st stamp.Stamp, nodes ...int) {
	hc.t.Helper()
	m := hc.h.mem.Load()
	for _, i := range nodes {
		if err := hc.h.api.put(context.Background(), m.Nodes[i].API(), hc.user, p, 0o600, st, bytes.NewReader(data)); err != nil {
			hc.t.Fatal(err)
		}
	}
}

// listed is what node i lists of dir: name → stamp.
func (hc *healCluster) listed(i int, dir string) map[string]string {
	hc.t.Helper()
	out := map[string]string{}
	d, err := hc.h.api.list(context.Background(), hc.h.mem.Load().Nodes[i].API(), hc.user, dir)
	if errors.Is(err, errNotFound) {
		return out
	}
	if err != nil {
		hc.t.Fatal(err)
	}
	for _, f := range d.Files {
		out[f.Name] = f.Stamp
	}
	return out
}

// replayOnce replays every due hint, as one tick of the replay loop.
func (hc *healCluster) replayOnce() {
	m := hc.h.mem.Load()
	due := hc.h.state.takeDue(func(node string) bool { return hc.health.Healthy(m.Index(node)) }, time.Now(), batchKeys)
	hc.h.replay(context.Background(), m, due)
}

func (hc *healCluster) resetCounts() {
	for _, f := range hc.fronts {
		f.reset()
	}
}

// TestReplayKeyAlreadyRightCostsNothing: hints for keys every replica
// already holds (the write reached the node after all) are settled from
// one listing of their directory and of the tombstones per node, nothing
// else; before, every hint listed the directory on every node several
// times.
func TestReplayKeyAlreadyRightCostsNothing(t *testing.T) {
	hc := newHealCluster(t, healOpts{versioned: true})
	const n = 150
	for k := range n {
		p := fmt.Sprintf("kv/%d", k)
		hc.put(p, []byte("value "+p), hc.clock.Now(), 0, 1, 2)
		hc.h.Missed(hc.user, p, "node3")
	}
	hc.resetCounts()
	hc.replayOnce()
	if got := hc.h.Status().HintsPending["node3"]; got != 0 {
		t.Fatalf("%d hints left", got)
	}
	for i, f := range hc.fronts {
		if got := f.count("GET /v1/fs/kv"); got != 1 {
			t.Errorf("node%d: directory listed %d times for %d hints, want 1", i+1, got, n)
		}
		if got := f.count("GET /v1/fs/" + tombstone.Dir); got != 1 {
			t.Errorf("node%d: tombstones listed %d times, want 1", i+1, got)
		}
		if got := f.total(); got != 2 {
			t.Errorf("node%d: %d requests (%v), want the 2 listings", i+1, got, f.reqs)
		}
	}
}

// TestReplayBatchRepairs: a node that missed a directory's writes and
// deletes gets every write (with its stamp) and loses every deleted copy,
// from a few listings of the directory, not some per hint.
func TestReplayBatchRepairs(t *testing.T) {
	hc := newHealCluster(t, healOpts{versioned: true})
	const n, deleted = 120, 20
	var wrote []stamp.Stamp
	for k := range n {
		p := fmt.Sprintf("kv/%d", k)
		st := hc.clock.Now()
		wrote = append(wrote, st)
		if k < deleted {
			// node3 kept a copy of a file deleted while it was away.
			hc.put(p, []byte("old "+p), st, 0, 1, 2)
			del := hc.clock.Now()
			hc.put(tombstone.Path(p), tombstone.Body(p, del), del, 0, 1)
			m := hc.h.mem.Load()
			for _, i := range []int{0, 1} {
				if err := hc.h.api.remove(context.Background(), m.Nodes[i].API(), hc.user, p, del); err != nil {
					t.Fatal(err)
				}
			}
		} else {
			hc.put(p, []byte("value "+p), st, 0, 1)
		}
		hc.h.Missed(hc.user, p, "node3")
	}
	hc.resetCounts()
	start := time.Now()
	hc.replayOnce()
	took := time.Since(start)
	t.Logf("replayed %d hints in %s", n, took)
	if got := hc.h.Status().HintsPending["node3"]; got != 0 {
		t.Fatalf("%d hints left: %+v", got, hc.h.Status().Totals)
	}
	on3 := hc.listed(2, "kv")
	for k := range n {
		name := fmt.Sprint(k)
		got, ok := on3[name]
		switch {
		case k < deleted && ok:
			t.Errorf("kv/%s: deleted, still on node3", name)
		case k >= deleted && got != wrote[k].String():
			t.Errorf("kv/%s on node3: stamp %q, want %s", name, got, wrote[k])
		}
	}
	for i, f := range hc.fronts {
		// One read of the batch, re-reads for the re-checks before the
		// removals (at most one per recheckAge), one to confirm.
		if got := f.count("GET /v1/fs/kv"); got > 3+int(took/recheckAge) || got >= n/4 {
			t.Errorf("node%d: directory listed %d times for %d hints", i+1, got, n)
		} else {
			t.Logf("node%d: directory listed %d times for %d hints, %d requests in all", i+1, got, n, f.total())
		}
	}
}

// TestScanLeavesHintedKeysToReplay: a scan skips a key whose hint is owed
// to a node that is up (the replay repairs it) instead of repairing it as
// well, and judges one whose owed node is down as any other.
func TestScanLeavesHintedKeysToReplay(t *testing.T) {
	hc := newHealCluster(t, healOpts{versioned: true})
	hc.put("d/a", []byte("a"), hc.clock.Now(), 0, 1)
	hc.h.Missed(hc.user, "d/a", "node3")
	rep, err := hc.h.Scan(context.Background(), ScanOptions{Users: []string{hc.user}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.LeftToReplay != 1 || rep.Repaired != 0 || len(hc.listed(2, "d")) != 0 {
		t.Fatalf("scan repaired a key its hint's replay owns: %+v", rep)
	}
	hc.replayOnce()
	if _, ok := hc.listed(2, "d")["a"]; !ok {
		t.Fatal("replay did not repair it")
	}
	rep, err = hc.h.Scan(context.Background(), ScanOptions{Users: []string{hc.user}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.LeftToReplay != 0 || rep.Healthy != 1 {
		t.Fatalf("after the replay the key is healthy: %+v", rep)
	}

	// Owed to a node that is down: no replay will come soon, the scan
	// judges the key as it would any other.
	hc.put("d/b", []byte("b"), hc.clock.Now(), 0, 2)
	hc.h.Missed(hc.user, "d/b", "node2")
	hc.health.set(1, false)
	rep, err = hc.h.Scan(context.Background(), ScanOptions{Users: []string{hc.user}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.LeftToReplay != 0 {
		t.Fatalf("a key owed to a node that is down was left to its replay: %+v", rep)
	}
}

// TestHintLimitFullScan: past the hint limit a node is owed everything
// until a full scan, which starts by itself once the node is up (with no
// scan interval) and repairs what its dropped hints were for.
func TestHintLimitFullScan(t *testing.T) {
	hc := newHealCluster(t, healOpts{versioned: true, hintLimit: 10})
	hc.health.set(2, false)
	for k := range 15 {
		p := fmt.Sprintf("kv/%d", k)
		hc.put(p, []byte(p), hc.clock.Now(), 0, 1)
		hc.h.RecordUser(hc.user)
		hc.h.Missed(hc.user, p, "node3")
	}
	if st := hc.h.Status(); !slices.Equal(st.FullScanOwed, []string{"node3"}) {
		t.Fatalf("full scan owed to %v, want node3", st.FullScanOwed)
	}
	if !hc.h.Owed(hc.user, "kv/0", "node3") || hc.h.Complete(hc.user, "node3") {
		t.Fatal("reads must skip a node marked for a full scan")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); hc.h.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	hc.health.set(2, true)
	testwait.For(t, 30*time.Second, "full scan done", func() bool {
		return len(hc.h.Status().FullScanOwed) == 0 && len(hc.listed(2, "kv")) == 15
	})
	if hc.h.Owed(hc.user, "kv/0", "node3") {
		t.Fatal("still owed after the full scan")
	}
}

// TestRepairByteRate: repair copies are paced by bytes as well as by count.
func TestRepairByteRate(t *testing.T) {
	const size, rate = 32 << 10, 64 << 10
	hc := newHealCluster(t, healOpts{versioned: true, byteRate: rate})
	data := bytes.Repeat([]byte("x"), size)
	for k := range 4 {
		p := fmt.Sprintf("big/%d", k)
		hc.put(p, data, hc.clock.Now(), 0, 1)
		hc.h.Missed(hc.user, p, "node3")
	}
	start := time.Now()
	hc.replayOnce()
	took := time.Since(start)
	if len(hc.listed(2, "big")) != 4 {
		t.Fatal("not repaired")
	}
	// 4 × 32 KiB at 64 KiB/s: the first goes at once, each other waits 0.5 s.
	if took < 1400*time.Millisecond {
		t.Fatalf("4 copies of 32 KiB at 64 KiB/s took %s", took)
	}
}
