package e2e

import (
	"context"
	"fmt"
	"io"
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

	"github.com/cring-dev/cring/internal/devcluster"
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
	dir := t.TempDir()
	dc, err := devcluster.New(dir, devcluster.Options{Nodes: n, PublicURL: publicURL, Binary: cringBinary(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dc.Close() })
	if err := dc.StartAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	kp, err := keygen.New(filepath.Join(dir, "client_ed25519"), keygen.WithKeyType(keygen.Ed25519))
	if err != nil {
		t.Fatal(err)
	}
	id, err := dc.SeedUser(kp.RawAuthorizedKey())
	if err != nil {
		t.Fatal(err)
	}
	signer, err := token.LoadSigner(dc.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	jwt, err := signer.Sign(id, publicURL, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &processCluster{tc: &testCluster{t: t, dc: dc}, id: id, jwt: jwt}
}

// plant writes files straight into the nodes' file stores (as unstamped
// copies, like data written to a node directly): for each directory name,
// files empty files named like charm's encrypted names. Much faster than
// uploading them, and the nodes list them as they list any file.
func (pc *processCluster) plant(t *testing.T, nodes []*devcluster.Node, dirs []string, files int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(nodes))
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, d := range dirs {
				base := n.FilePath(pc.id, d)
				if err := os.MkdirAll(base, 0o700); err != nil {
					errs <- err
					return
				}
				for k := range files {
					if err := os.WriteFile(filepath.Join(base, fmt.Sprintf("%044d", k)), nil, 0o600); err != nil {
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

// TestListingMemory: the proxy's memory for a 50,000-entry listing is at
// most twice the listing it answers, merged from 3 nodes or from 5 (it
// was ~15 times, growing with the nodes: every node's listing was decoded
// whole, then merged, then encoded whole).
func TestListingMemory(t *testing.T) {
	const entries = 50_000
	pc := startProcessNodes(t, 5)
	pc.plant(t, pc.tc.dc.Nodes, []string{"big"}, entries)
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
