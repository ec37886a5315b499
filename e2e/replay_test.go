package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/testwait"
)

// TestReplayListsDirectoryPerBatch: a stock node that missed many writes
// in one directory (as charm kv makes them) catches up with a few listings
// of that directory, not several per missed write: hint replay costs what
// the writes weigh, not hints × directory size.
func TestReplayListsDirectoryPerBatch(t *testing.T) {
	const n = 200
	var dir atomic.Value // the directory's name on the nodes, once known
	var lists [3]atomic.Int64
	var requests atomic.Int64 // the healer's, to every node
	o := healOpts()
	o.observe = func(node int, r *http.Request) {
		if r.Header.Get("X-Request-Id") != "cring-heal" {
			return
		}
		requests.Add(1)
		if d, _ := dir.Load().(string); d != "" && r.Method == http.MethodGet && r.URL.Path == "/v1/fs/"+d {
			lists[node].Add(1)
		}
	}
	tc := startCluster(t, o)
	u := tc.newUser(t)
	enc, err := u.fs.EncryptPath("kv")
	if err != nil {
		t.Fatal(err)
	}
	dir.Store(enc)
	tc.stop(2)
	tc.waitReady(2)
	var names []string
	for i := range n {
		name := fmt.Sprintf("kv/%d", i)
		names = append(names, name)
		u.put(t, name, randBytes(t, 4<<10))
	}
	if got := tc.srv.Healer().Status().HintsPending["node3"]; got != n {
		t.Fatalf("%d hints for node3, want %d", got, n)
	}
	for i := range lists {
		lists[i].Store(0)
	}
	requests.Store(0)
	tc.start(2)
	start := time.Now()
	testwait.For(t, 60*time.Second, "the condition", func() bool { return tc.srv.Healer().Status().HintsPending["node3"] == 0 })
	t.Logf("node3 caught up on %d writes in %s, %.1f requests to nodes per hint", n, time.Since(start).Round(time.Millisecond),
		float64(requests.Load())/n)
	// Per missed write on stock nodes: its version records on each node
	// (a listing and a read where there is one), its copies hashed (the
	// copy written is the bytes hashed), a probe of the returning node, its
	// records re-read on nodes-W+1 of them right before the copy, and the
	// copy; its directory and tombstones are read once per batch.
	if per := float64(requests.Load()) / n; per > 12 {
		t.Errorf("%.1f requests to nodes per missed write", per)
	}
	for _, name := range names {
		if copies := tc.onDisk(t, u, name); len(copies) != 3 || !bytes.Equal(copies["node3"], copies["node1"]) {
			t.Fatalf("%s: on %d nodes, node3's copy is not node1's", name, len(copies))
		}
	}
	for i := range lists {
		// One listing to judge the batch, one to confirm it; a retry of
		// a batch at most doubles that.
		if got := lists[i].Load(); got > 6 {
			t.Errorf("node%d: the directory was listed %d times to replay %d hints in it", i+1, got, n)
		} else {
			t.Logf("node%d: directory listed %d times for %d hints", i+1, got, n)
		}
	}
}
