package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/cluster"
	"github.com/cring-dev/cring/internal/heal"
	"github.com/cring-dev/cring/internal/testwait"
)

func healOpts() clusterOpts { return clusterOpts{nodes: 3, replicas: 3, quorum: 2, heal: true} }

// identicalOn waits until name is on exactly the given nodes, byte-identical.
func identicalOn(t *testing.T, tc *testCluster, u *user, name string, want []string, within time.Duration) {
	t.Helper()
	var got []string
	same, ok := true, false
	defer func() {
		if !ok { // testwait failed the test: say what was there
			t.Logf("%s last seen on %v (identical: %v)", name, got, same)
		}
	}()
	testwait.For(t, within, fmt.Sprintf("%s on exactly %v, byte-identical", name, want), func() bool {
		got, same = nil, true
		var first []byte
		for n, b := range tc.onDisk(t, u, name) {
			got = append(got, n)
			if first == nil {
				first = b
			} else if !bytes.Equal(first, b) {
				same = false
			}
		}
		sort.Strings(got)
		return same && slices.Equal(got, want)
	})
	ok = true
}

// TestHintedHandoff: a write made while node3 was down reaches node3 within
// 10 s of its return, byte-identical, with no operator action.
func TestHintedHandoff(t *testing.T) {
	tc := startCluster(t, healOpts())
	u := tc.newUser(t)
	tc.stop(2)
	tc.waitReady(2)
	data := randBytes(t, 300<<10)
	u.put(t, "missed.bin", data)
	identicalOn(t, tc, u, "missed.bin", []string{"node1", "node2"}, time.Second)

	tc.start(2)
	start := time.Now()
	identicalOn(t, tc, u, "missed.bin", []string{"node1", "node2", "node3"}, 10*time.Second)
	t.Logf("node3 caught up %s after it came back", time.Since(start).Round(10*time.Millisecond))
	if !bytes.Equal(u.get(t, "missed.bin"), data) {
		t.Fatal("read back differs")
	}
}

// TestDeleteNotResurrected: a delete made while node3 was down is applied to
// node3 when it returns, and the file never shows in a listing again.
func TestDeleteNotResurrected(t *testing.T) {
	tc := startCluster(t, healOpts())
	u := tc.newUser(t)
	u.put(t, "d/keep", []byte("keep"))
	u.put(t, "d/gone", []byte("doomed"))
	tc.stop(2)
	tc.waitReady(2)
	if err := u.fs.Remove("d/gone"); err != nil {
		t.Fatal(err)
	}
	tc.start(2)
	tc.waitReady(3)
	// Right away (node3 still holds its stale copy) and until it is gone.
	testwait.For(t, 10*time.Second, "the deleted file gone from node3's disk", func() bool {
		if got := u.ls(t, "d"); !slices.Equal(got, []string{"keep"}) {
			t.Fatalf("listing after node3 returned = %v", got)
		}
		if _, err := u.fs.ReadFile("d/gone"); err == nil {
			t.Fatal("deleted file readable again")
		}
		return len(tc.onDisk(t, u, "d/gone")) == 0
	})
	// A full scan doesn't bring it back either.
	rep, err := tc.srv.Healer().Scan(context.Background(), heal.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(tc.onDisk(t, u, "d/gone")) != 0 || !slices.Equal(u.ls(t, "d"), []string{"keep"}) {
		t.Fatalf("scan resurrected the deleted file (report %+v)", rep)
	}
	// Writing the same name again is a new file, not a deleted one.
	u.put(t, "d/gone", []byte("reborn"))
	if string(u.get(t, "d/gone")) != "reborn" || len(u.ls(t, "d")) != 2 {
		t.Fatal("re-created file not visible")
	}
	if _, err := tc.srv.Healer().Scan(context.Background(), heal.ScanOptions{}); err != nil {
		t.Fatal(err)
	}
	identicalOn(t, tc, u, "d/gone", []string{"node1", "node2", "node3"}, time.Second)
}

// TestScanRepairsDamage: a truncated replica is found by a scan; a replica
// corrupted in place with size and mtime kept is found by a deep scan. Both
// are rewritten from the copies an acknowledged write left.
func TestScanRepairsDamage(t *testing.T) {
	tc := startCluster(t, healOpts())
	u := tc.newUser(t)
	data := randBytes(t, 64<<10)
	u.put(t, "a/truncated", data)
	u.put(t, "a/rotten", data)
	all := []string{"node1", "node2", "node3"}
	// Acked at quorum: let the last replica land before damaging one.
	identicalOn(t, tc, u, "a/truncated", all, 5*time.Second)
	identicalOn(t, tc, u, "a/rotten", all, 5*time.Second)
	ep := func(name string) string {
		p, err := u.fs.EncryptPath(name)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	onNode2 := func(name string) string { return tc.dc.Nodes[1].FilePath(u.id, ep(name)) }
	if err := os.Truncate(onNode2("a/truncated"), 1000); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(onNode2("a/rotten"))
	b, _ := os.ReadFile(onNode2("a/rotten"))
	b[len(b)/2] ^= 0xff
	os.WriteFile(onNode2("a/rotten"), b, 0o600)
	os.Chtimes(onNode2("a/rotten"), st.ModTime(), st.ModTime()) // silent bit rot

	h := tc.srv.Healer()
	rep, err := h.Scan(context.Background(), heal.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Differing < 1 || rep.Repaired < 1 {
		t.Fatalf("scan report %+v: want the truncated copy found and repaired", rep)
	}
	identicalOn(t, tc, u, "a/truncated", all, time.Second)
	// Stock nodes' uploads carry version records with their checksum, so
	// the first scan that reads a copy's bytes finds the rot too.
	identicalOn(t, tc, u, "a/rotten", all, time.Second)
	// Rot again: bytes already hashed (same size and mtime) are not read
	// by a normal scan, only by a deep one.
	b, _ = os.ReadFile(onNode2("a/rotten"))
	b[len(b)/3] ^= 0xff
	os.WriteFile(onNode2("a/rotten"), b, 0o600)
	os.Chtimes(onNode2("a/rotten"), st.ModTime(), st.ModTime())
	if c := tc.onDisk(t, u, "a/rotten"); bytes.Equal(c["node1"], c["node2"]) {
		t.Fatal("test setup: rot not present")
	}
	rep, err = h.Scan(context.Background(), heal.ScanOptions{Deep: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Differing != 1 || rep.Repaired != 1 {
		t.Fatalf("deep scan report %+v: want exactly the rotten copy repaired", rep)
	}
	identicalOn(t, tc, u, "a/rotten", all, time.Second)
	if !bytes.Equal(u.get(t, "a/rotten"), data) || !bytes.Equal(u.get(t, "a/truncated"), data) {
		t.Fatal("repaired files read back wrong")
	}
	// Dry run on a healthy cluster: nothing to do.
	rep, err = h.Scan(context.Background(), heal.ScanOptions{DryRun: true, Deep: true})
	if err != nil || rep.Healthy != rep.Keys || len(rep.Fixes) != 0 {
		t.Fatalf("after repair, dry deep scan = %+v, %v", rep, err)
	}
}

// TestRebalanceOnNewNode: a 4th node added to 3 → after a scan every key is
// on exactly its N replicas under the new ring, and nowhere else.
func TestRebalanceOnNewNode(t *testing.T) {
	o := clusterOpts{nodes: 4, replicas: 3, quorum: 2, heal: true, proxyNodes: 3}
	tc := startCluster(t, o)
	u := tc.newUser(t)
	var names []string
	for i := range 30 {
		name := fmt.Sprintf("r/%02d", i)
		u.put(t, name, randBytes(t, 2000+i))
		names = append(names, name)
	}
	// The operator adds node4: a proxy with the new node list.
	p4 := tc.startProxy(o, 4, "")
	rep, err := p4.srv.Healer().Scan(context.Background(), heal.ScanOptions{Users: []string{u.id}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rebalance: %d keys, %d misplaced, %d under-replicated, %d repaired", rep.Keys, rep.Misplaced, rep.UnderReplicated, rep.Repaired)
	var rn []cluster.Node
	for _, n := range tc.dc.Nodes {
		rn = append(rn, cluster.Node{Name: n.Name})
	}
	rg, _ := cluster.NewRing(rn, 3)
	moved := 0
	for _, name := range names {
		ep, _ := u.fs.EncryptPath(name)
		var want []string
		for _, i := range rg.Preference(u.id + "/" + ep)[:3] {
			want = append(want, tc.dc.Nodes[i].Name)
		}
		sort.Strings(want)
		if slices.Contains(want, "node4") {
			moved++
		}
		identicalOn(t, tc, u, name, want, time.Second)
	}
	if moved == 0 {
		t.Fatal("no key placed on node4: the test proves nothing")
	}
	t.Logf("%d of %d keys moved a copy to node4", moved, len(names))
}

// TestTwoProxiesDelete: a delete through one proxy is never undone by the
// repairs of another proxy in front of the same cluster.
func TestTwoProxiesDelete(t *testing.T) {
	o := clusterOpts{nodes: 3, replicas: 3, quorum: 2} // proxy A: no healing of its own
	tc := startCluster(t, o)
	o.heal = true
	b := tc.startProxy(o, 3, "") // proxy B heals
	u := tc.newUser(t)
	u.put(t, "two/x", []byte("x"))
	tc.stop(2)
	tc.waitReady(2)
	if err := u.fs.Remove("two/x"); err != nil {
		t.Fatal(err)
	}
	tc.start(2)
	tc.waitReady(3)
	testwait.For(t, 10*time.Second, "proxy B's healer", func() bool { return b.srv.Healer() != nil })
	// B never saw this user's requests: the operator's scan names the user.
	for range 2 {
		if _, err := b.srv.Healer().Scan(context.Background(), heal.ScanOptions{Users: []string{u.id}}); err != nil {
			t.Fatal(err)
		}
	}
	if c := tc.onDisk(t, u, "two/x"); len(c) != 0 {
		t.Fatalf("deleted file on %v after proxy B's repair", c)
	}
	if got := u.ls(t, "two"); len(got) != 0 {
		t.Fatalf("listing = %v", got)
	}
}
