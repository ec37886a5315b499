package e2e

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"testing"
	"time"

	"github.com/charmbracelet/keygen"

	"github.com/cring-dev/cring/internal/config"
	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/heal"
	"github.com/cring-dev/cring/internal/testwait"
	"github.com/cring-dev/cring/internal/token"
)

// These tests measure the proxy's own memory: the nodes run as `cring node`
// processes, so the heap of this process is the proxy's (in-process, as
// serve runs it), the client's and the test's, and the client only counts
// the bytes it is sent.

// processCluster is n `cring node` processes with one seeded user and a
// token for it, valid on the nodes and on any proxy of tc.
type processCluster struct {
	tc  *testCluster
	id  string
	jwt string
}

func startProcessNodes(t *testing.T, n int) *processCluster {
	t.Helper()
	ports, err := devcluster.FreePorts("127.0.0.1", 1)
	if err != nil {
		t.Fatal(err)
	}
	publicURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	dc, err := devcluster.New(t.TempDir(), devcluster.Options{Nodes: n, PublicURL: publicURL, Binary: cringBinary(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dc.Close() })
	if err := dc.StartAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	pc := &processCluster{tc: &testCluster{t: t, dc: dc}}
	pc.id, pc.jwt = pc.seed(t)
	return pc
}

// seed makes a user on every node and signs a token for it.
func (pc *processCluster) seed(t *testing.T) (id, jwt string) {
	t.Helper()
	dc := pc.tc.dc
	kp, err := keygen.New(filepath.Join(t.TempDir(), "client_ed25519"), keygen.WithKeyType(keygen.Ed25519))
	if err != nil {
		t.Fatal(err)
	}
	if id, err = dc.SeedUser(kp.RawAuthorizedKey()); err != nil {
		t.Fatal(err)
	}
	signer, err := token.LoadSigner(dc.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	if jwt, err = signer.Sign(id, dc.PublicURL, time.Hour); err != nil {
		t.Fatal(err)
	}
	return id, jwt
}

// plant puts files straight into the nodes' file stores (as unstamped
// copies, like data written to a node directly): for each directory name,
// files entries named like charm's encrypted names, hard links to empty
// files of one modification time, so the copies are identical on every
// node and a million of them cost about a million link calls. The nodes
// list them as they list any file.
func (pc *processCluster) plant(t *testing.T, user string, nodes []*devcluster.Node, dirs []string, files int) {
	t.Helper()
	tmp := t.TempDir()
	mtime := time.Now().Add(-time.Hour).Truncate(time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, len(nodes))
	for k, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var src string
			links := 0
			for _, d := range dirs {
				base := n.FilePath(user, d)
				if err := os.MkdirAll(base, 0o700); err != nil {
					errs <- err
					return
				}
				for f := range files {
					if links%60_000 == 0 { // ext4 allows 65,000 links to a file
						src = filepath.Join(tmp, fmt.Sprintf("empty-%d-%d", k, links))
						if err := os.WriteFile(src, nil, 0o600); err != nil {
							errs <- err
							return
						}
						if err := os.Chtimes(src, mtime, mtime); err != nil {
							errs <- err
							return
						}
					}
					links++
					if err := os.Link(src, filepath.Join(base, fmt.Sprintf("%044d", f))); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// get asks proxy for p and counts the answer's bytes without keeping them.
func (pc *processCluster) get(t *testing.T, proxy, p string) (int, int64) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, proxy+"/v1/fs/"+p, nil)
	req.Header.Set("Authorization", "bearer "+pc.jwt)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, n
}

// post uploads size bytes to proxy as p, as charm does (multipart, with a
// length), and returns the status.
func (pc *processCluster) post(t *testing.T, proxy, p string, size int) int {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	part, _ := mw.CreateFormFile("data", p)
	_, _ = part.Write(make([]byte, size))
	_ = mw.Close()
	req, _ := http.NewRequest(http.MethodPost, proxy+"/v1/fs/"+p+"?mode=420", &body)
	req.Header.Set("Authorization", "bearer "+pc.jwt)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// peakHeap runs f and returns the most the heap grew over its size before
// f, sampled every millisecond. The garbage collector runs at GOGC=10
// meanwhile, so what is measured is (within 10%) memory in use, not
// garbage waiting for a collection the default GOGC would start later.
func peakHeap(f func()) uint64 {
	old := debug.SetGCPercent(10)
	defer debug.SetGCPercent(old)
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	read := func() uint64 {
		metrics.Read(sample)
		return sample[0].Value.Uint64()
	}
	runtime.GC()
	base := read()
	peak := base
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				peak = max(peak, read())
			}
		}
	}()
	f()
	close(stop)
	<-done
	return max(peak, read()) - base
}

// peakLive runs f and returns the most the live heap grew over its size
// before f: every 10 ms a collection runs and what it leaves is read, so
// garbage never counts (for work that holds its memory for a while, like a
// directory being scanned).
func peakLive(f func()) uint64 {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	read := func() uint64 {
		runtime.GC()
		metrics.Read(sample)
		return sample[0].Value.Uint64()
	}
	base := read()
	peak := base
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				peak = max(peak, read())
			}
		}
	}()
	f()
	close(stop)
	<-done
	return peak - base
}

// TestListingMemory: the proxy's memory for a 50,000-entry listing is at
// most twice the listing it answers, merged from 3 nodes or from 5 (it
// was ~15 times, growing with the nodes: every node's listing was decoded
// whole, then merged, then encoded whole).
func TestListingMemory(t *testing.T) {
	const entries = 50_000
	pc := startProcessNodes(t, 5)
	pc.plant(t, pc.id, pc.tc.dc.Nodes, []string{"big"}, entries)
	for _, tt := range []struct {
		name     string
		nodes    int
		replicas int
		quorum   int
	}{
		{"3 nodes", 3, 3, 2},
		{"5 nodes", 5, 5, 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			px := pc.tc.startProxy(clusterOpts{replicas: tt.replicas, quorum: tt.quorum}, tt.nodes, "")
			url := "http://" + px.httpAddr
			// The first listing walks the replicas; the proxy then knows
			// the directory and asks every node at once.
			for _, walk := range []string{"first walk", "known directory"} {
				var status int
				var size int64
				grew := peakHeap(func() { status, size = pc.get(t, url, "big") })
				if status != http.StatusOK {
					t.Fatalf("%s: listing answered %d", walk, status)
				}
				ratio := float64(grew) / float64(size)
				t.Logf("%s, %s: listing of %d bytes, proxy heap grew %d bytes: %.2fx", tt.name, walk, size, grew, ratio)
				if ratio > 2 {
					t.Errorf("%s: the proxy's memory for a listing is %.2fx its size, want at most 2x", walk, ratio)
				}
			}
		})
	}
}

var bigScan = flag.Bool("bigscan", false, "TestScanMemory also scans one user's 1,000,000 files (1,000 directories of 1,000; minutes)")

// TestScanMemory: a scan's memory follows the largest directory, not the
// user's tree: 20 directories of 2,000 files cost what one does (the whole
// tree of every node used to be held, ~20 times more). With -bigscan, a
// user with 1,000,000 files is scanned within 1 GiB.
func TestScanMemory(t *testing.T) {
	pc := startProcessNodes(t, 3)
	px := pc.tc.startProxy(clusterOpts{replicas: 3, quorum: 2, heal: true}, 3, "")
	h := px.srv.Healer()
	cases := []struct {
		name        string
		dirs, files int
	}{
		{"1 dir of 2000", 1, 2000},
		{"20 dirs of 2000", 20, 2000},
	}
	if *bigScan {
		cases = append(cases, struct {
			name        string
			dirs, files int
		}{"1000 dirs of 1000", 1000, 1000})
	}
	grew := map[string]uint64{}
	for _, tt := range cases {
		id, _ := pc.seed(t)
		var dirs []string
		for k := range tt.dirs {
			dirs = append(dirs, fmt.Sprintf("d%04d", k))
		}
		start := time.Now()
		pc.plant(t, id, pc.tc.dc.Nodes, dirs, tt.files)
		planted := time.Since(start)
		var rep *heal.Report
		var err error
		start = time.Now()
		grew[tt.name] = peakLive(func() { rep, err = h.Scan(context.Background(), heal.ScanOptions{Users: []string{id}}) })
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: planted in %s, scanned in %s: %d keys, %d healthy; live heap grew %.1f MiB",
			tt.name, planted.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), rep.Keys, rep.Healthy, float64(grew[tt.name])/(1<<20))
		if want := tt.dirs * tt.files; rep.Keys != want || rep.Healthy != want {
			t.Fatalf("%s: %d keys, %d healthy, want %d of each", tt.name, rep.Keys, rep.Healthy, want)
		}
	}
	// Roughly equal: a sample of the live heap also holds what the scan
	// allocated while its collection ran, a few MiB either way, so within
	// twice what one directory costs and 4 MiB (holding the tree, as scans
	// did, is ~0.8 KiB a file: 31 MiB here).
	if one, twenty := grew["1 dir of 2000"], grew["20 dirs of 2000"]; twenty > 2*one+4<<20 {
		t.Errorf("20 directories cost %.1f MiB, one %.1f MiB: a scan's memory grows with the tree", float64(twenty)/(1<<20), float64(one)/(1<<20))
	}
	if g, ok := grew["1000 dirs of 1000"]; ok && g > 1<<30 {
		t.Errorf("a scan of 1,000,000 files took %.1f MiB, over 1 GiB", float64(g)/(1<<20))
	}
}

// TestUploadMemory: what one streamed upload in flight costs the proxy, heap
// and goroutine stacks, measured with 48 slow uploads at once (each has
// sent part of a large body and trickles the rest): at most 288 KiB, and no
// goroutine that only moves bytes. It was ~770 KiB (64 KiB read and write
// buffers per node connection), then 375 KiB and 13.8 goroutines (a pipe,
// a feed goroutine and a 32 KiB copy buffer per replica). Where the rest
// goes: docs/performance.md.
func TestUploadMemory(t *testing.T) {
	const uploads = 48
	pc := startProcessNodes(t, 3)
	px := pc.tc.startProxy(clusterOpts{replicas: 3, quorum: 2, tune: func(c *config.Config) {
		c.MaxRequestsPerClient = 4 * uploads
		// A probe that takes over 200 ms on a loaded machine would mark a
		// node down, and later uploads would skip it.
		c.HealthInterval = 5 * time.Second
	}}, 3, "")
	// Uploads first: the proxy learns that its nodes keep stamps (cring
	// nodes; it learns a node's kind from its answers before the ack, and
	// the slowest replica's comes after), so the uploads measured need no
	// version records and are not hashed: what the recommended cluster
	// costs. (With stock nodes each upload also has its checksum taken as
	// it streams, about 50 KiB and one goroutine more.)
	for k := range 10 {
		if st := pc.post(t, "http://"+px.httpAddr, fmt.Sprintf("warm%d", k), 4<<10); st != http.StatusOK {
			t.Fatalf("warm-up upload: %d", st)
		}
	}
	tmpFiles := func() int {
		least := -1
		for _, n := range pc.tc.dc.Nodes {
			des, _ := os.ReadDir(filepath.Join(n.DataDir, "cring", "tmp"))
			if least < 0 || len(des) < least {
				least = len(des)
			}
		}
		return least
	}
	sample := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/stacks:bytes"},
		{Name: "/sched/goroutines:goroutines"},
	}
	measure := func() (heap, stacks, goroutines uint64) {
		runtime.GC()
		metrics.Read(sample)
		return sample[0].Value.Uint64(), sample[1].Value.Uint64(), sample[2].Value.Uint64()
	}
	heap0, stacks0, g0 := measure()

	const head = "--b\r\nContent-Disposition: form-data; name=\"data\"; filename=\"f\"\r\nContent-Type: application/octet-stream\r\n\r\n"
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for k := range uploads {
		conn, err := net.Dial("tcp", px.httpAddr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
		fmt.Fprintf(conn, "POST /v1/fs/slow/f%d?mode=420 HTTP/1.1\r\nHost: cring\r\nAuthorization: bearer %s\r\n"+
			"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: %d\r\n\r\n%s", k, pc.jwt, 1<<30, head)
		if _, err := conn.Write(make([]byte, 256<<10)); err != nil {
			t.Fatal(err)
		}
	}
	// Slow clients: a KiB each now and then, never done (one goroutine
	// for all of them, so the client side adds no stacks).
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		chunk := make([]byte, 1<<10)
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				for _, c := range conns {
					_ = c.SetWriteDeadline(time.Now().Add(time.Second))
					_, _ = c.Write(chunk)
				}
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	// Every node is writing every upload, and the proxy's goroutines hold
	// still (no dial or probe in passing is counted).
	testwait.For(t, 30*time.Second, "the condition", func() bool { return tmpFiles() >= uploads })
	last, since := -1, time.Now()
	testwait.For(t, 30*time.Second, "the condition", func() bool {
		if n := runtime.NumGoroutine(); n != last {
			last, since = n, time.Now()
			return false
		}
		return time.Since(since) >= 300*time.Millisecond
	})
	heap1, stacks1, g1 := measure()
	per := func(a, b uint64) float64 { return (float64(b) - float64(a)) / uploads }
	heapPer, stackPer := per(heap0, heap1), per(stacks0, stacks1)
	t.Logf("per upload in flight: heap %.1f KiB, stacks %.1f KiB, %.1f goroutines; total %.1f KiB",
		heapPer/1024, stackPer/1024, per(g0, g1), (heapPer+stackPer)/1024)
	limit := 288.0 * 1024
	if raceEnabled {
		limit += 64 << 10 // its goroutines' stacks are about twice as large
	}
	if total := heapPer + stackPer; total > limit {
		t.Errorf("an upload in flight costs the proxy %.1f KiB, want at most %.0f KiB", total/1024, limit/1024)
	}
	// The handler (which pumps the body to every replica), the multipart
	// check, and per replica net/http's own: the goroutine waiting in
	// RoundTrip and the connection's read and write loops. A goroutine
	// more per replica (one that feeds a pipe, say) is 3 more.
	if g := per(g0, g1); g > 2+3*3+0.5 {
		t.Errorf("an upload in flight runs %.1f goroutines in the proxy, want at most 11", g)
	}
}
