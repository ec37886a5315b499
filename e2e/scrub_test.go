package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/config"
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
	waitFor(t, 10*time.Second, func() bool {
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
	waitFor(t, 5*time.Second, same)
	for i := range 2 { // two of three replicas rot: whichever is asked, no rot is served
		rot(t, copyOn(i))
	}
	for range 10 {
		if !bytes.Equal(u.get(t, "s/rot"), data) {
			t.Fatal("a read returned rotten bytes")
		}
	}
	waitFor(t, 20*time.Second, same)
	waitFor(t, 10*time.Second, func() bool {
		st := pc.srv.Healer().Status().Scrub
		return st != nil && st.Corrupt >= 2 && st.Repaired >= 2
	})
}
