package e2e

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/heal"
	"github.com/cring-dev/cring/internal/testwait"
)

// TestDeepScanOnCringNodes: with cring nodes, a deep scan compares replicas
// by the SHA-256 each node computes itself (its metadata endpoint) and
// repairs a copy rotten in place (same size, same mtime).
func TestDeepScanOnCringNodes(t *testing.T) {
	pc := startPGCluster(t, 3)
	u := pc.newUser(t)
	data := randBytes(t, 50<<10)
	u.put(t, "m/rot", data)
	ep, err := u.fs.EncryptPath("m/rot")
	if err != nil {
		t.Fatal(err)
	}
	copyOn := func(i int) string { return filepath.Join(pc.nodes[i].dataDir, "files", u.id, ep) }
	testwait.For(t, 5*time.Second, "the condition", func() bool {
		var first []byte
		for i := range pc.nodes {
			b, err := os.ReadFile(copyOn(i))
			if err != nil || (first != nil && !bytes.Equal(b, first)) {
				return false
			}
			first = b
		}
		return true
	})
	good, _ := os.ReadFile(copyOn(0))
	st, _ := os.Stat(copyOn(1))
	bad := bytes.Clone(good)
	bad[100] ^= 0x55
	os.WriteFile(copyOn(1), bad, 0o600)
	os.Chtimes(copyOn(1), st.ModTime(), st.ModTime())

	h := pc.srv.Healer()
	rep, err := h.Scan(context.Background(), heal.ScanOptions{Deep: true, Users: []string{u.id}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Differing != 1 || rep.Repaired != 1 {
		t.Fatalf("deep scan %+v: want the rotten copy repaired", rep)
	}
	if b, _ := os.ReadFile(copyOn(1)); !bytes.Equal(b, good) {
		t.Fatal("rotten copy not rewritten")
	}
	if n := h.Status().Totals["hashed_on_node"]; n < 3 {
		t.Fatalf("copies hashed on their nodes: %d, want every copy (the metadata endpoint was not used)", n)
	}
	if !bytes.Equal(u.get(t, "m/rot"), data) {
		t.Fatal("read back differs")
	}
}
