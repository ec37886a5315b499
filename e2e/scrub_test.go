package e2e

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/config"
	"github.com/cring-dev/cring/internal/testwait"
)

// rot flips bytes in the middle of a file, keeping its size and
// modification time: what a bad sector or a bit flip does.
func rot(t *testing.T, path string) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for k := range 16 {
		b[len(b)/2+k] ^= 0xff
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
}

// TestScrubRepairsRotOnStockNodes: a copy rotten in place on a stock node is
// found by the background scrub (its bytes no longer match the version
// record's checksum) and repaired without an operator.
func TestScrubRepairsRotOnStockNodes(t *testing.T) {
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2, heal: true, scrub: 300 * time.Millisecond})
	u := tc.newUser(t)
	data := bytes.Repeat([]byte("scrubbed "), 30000)
	u.put(t, "s/rot", data)
	identicalOn(t, tc, u, "s/rot", all3, 5*time.Second)
	ep, err := u.fs.EncryptPath("s/rot")
	if err != nil {
		t.Fatal(err)
	}
	rot(t, tc.dc.Nodes[1].FilePath(u.id, ep))
	if c := tc.onDisk(t, u, "s/rot"); bytes.Equal(c["node1"], c["node2"]) {
		t.Fatal("test setup: rot not present")
	}
	identicalOn(t, tc, u, "s/rot", all3, 20*time.Second)
	testwait.For(t, 10*time.Second, "the condition", func() bool {
		st := tc.srv.Healer().Status().Scrub
		return st != nil && st.Corrupt >= 1 && st.Repaired >= 1
	})
	if !bytes.Equal(u.get(t, "s/rot"), data) {
		t.Fatal("read back differs")
	}
}

// TestRotNeverServedByCringNodes: with cring nodes, a rotten copy on any
// replica is never served (the node refuses it, the proxy fails over), and
// the scrub repairs it.
func TestRotNeverServedByCringNodes(t *testing.T) {
	pc := startPGCluster(t, 3, func(c *config.Config) { c.ScrubInterval = 300 * time.Millisecond })
	u := pc.newUser(t)
	data := randBytes(t, 100<<10) // refused whole by a node that finds it rotten (large ones are cut)
	u.put(t, "s/rot", data)
	ep, err := u.fs.EncryptPath("s/rot")
	if err != nil {
		t.Fatal(err)
	}
	copyOn := func(i int) string { return filepath.Join(pc.nodes[i].dataDir, "files", u.id, ep) }
	same := func() bool {
		first, err := os.ReadFile(copyOn(0))
		if err != nil {
			return false
		}
		for i := range pc.nodes[1:] {
			if b, err := os.ReadFile(copyOn(i + 1)); err != nil || !bytes.Equal(b, first) {
				return false
			}
		}
		return true
	}
	testwait.For(t, 5*time.Second, "the condition", same)
	// Two of three replicas rot the same way: the scrub trusts each node's
	// checksum recorded at write time, not the majority.
	for i := range 2 {
		rot(t, copyOn(i))
	}
	testwait.For(t, 20*time.Second, "the condition", same)
	testwait.For(t, 10*time.Second, "the condition", func() bool {
		st := pc.srv.Healer().Status().Scrub
		return st != nil && st.Corrupt >= 2 && st.Repaired >= 2
	})
	// Rot again and read: whichever replica is asked, no rot is served.
	for i := range 2 {
		rot(t, copyOn(i))
	}
	for range 10 {
		if !bytes.Equal(u.get(t, "s/rot"), data) {
			t.Fatal("a read returned rotten bytes")
		}
	}
}

// TestKillMidUploadLeavesNoPartialFile: a cring node killed (-9) in the
// middle of a 64 MiB upload keeps nothing under the file's name, the
// upload is acknowledged by the other replicas and read back whole, and
// when the node returns the healer completes its copy.
func TestKillMidUploadLeavesNoPartialFile(t *testing.T) {
	pc := startPGCluster(t, 3)
	u := pc.newUser(t)
	data := randBytes(t, 64<<20)
	ep, err := u.fs.EncryptPath("big/upload")
	if err != nil {
		t.Fatal(err)
	}
	const victim = 2
	tmp := filepath.Join(pc.nodes[victim].dataDir, "cring", "tmp")
	done := make(chan error, 1)
	go func() { done <- u.fs.WriteFile("big/upload", memFile("big/upload", data)) }()
	testwait.For(t, 60*time.Second, "the condition", func() bool { // the victim is halfway through its temp file
		es, _ := os.ReadDir(tmp)
		for _, e := range es {
			if fi, err := e.Info(); err == nil && fi.Size() > 16<<20 {
				return true
			}
		}
		return false
	})
	pc.stop(victim, syscall.SIGKILL)
	if err := <-done; err != nil {
		t.Fatalf("upload with one replica killed: %v", err)
	}
	name := filepath.Join(pc.nodes[victim].dataDir, "files", u.id, ep)
	if _, err := os.Stat(name); !os.IsNotExist(err) {
		t.Fatalf("the killed node holds something under the name: %v", err)
	}
	if !bytes.Equal(u.get(t, "big/upload"), data) {
		t.Fatal("read back differs")
	}
	pc.start(victim)
	pc.waitReady(3)
	want, err := os.ReadFile(filepath.Join(pc.nodes[0].dataDir, "files", u.id, ep))
	if err != nil {
		t.Fatal(err)
	}
	testwait.For(t, 60*time.Second, "the condition", func() bool {
		b, err := os.ReadFile(name)
		return err == nil && bytes.Equal(b, want)
	})
	if es, _ := os.ReadDir(tmp); len(es) != 0 {
		t.Fatalf("%d temp files left on the restarted node", len(es))
	}
}

// TestScrubRate: the scrub reads no more than --scrub-rate from a node (after
// its limiter's one-second burst), so a pass over 3 MiB per node at 1 MiB/s
// takes at least two seconds.
func TestScrubRate(t *testing.T) {
	const rate = 1 << 20
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2, heal: true, scrub: time.Hour, scrubRate: rate})
	u := tc.newUser(t)
	for _, name := range []string{"r/a", "r/b", "r/c"} {
		u.put(t, name, randBytes(t, 1<<20))
		identicalOn(t, tc, u, name, all3, 5*time.Second)
	}
	// The background pass is due 10 minutes after start: run one now.
	h := tc.srv.Healer()
	start := time.Now()
	if err := h.ScrubPass(context.Background()); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	st := h.Status().Scrub
	perNode := float64(st.Bytes) / 3
	if min := time.Duration((perNode - rate) / rate * float64(time.Second)); took < min {
		t.Fatalf("a pass over %.0f bytes per node took %v, faster than %d bytes/s allows (%v)", perNode, took, rate, min)
	}
	t.Logf("scrubbed %.1f MiB per node in %v: %.2f MiB/s per node (limit 1)", perNode/(1<<20), took.Round(time.Millisecond), perNode/(1<<20)/took.Seconds())
}
