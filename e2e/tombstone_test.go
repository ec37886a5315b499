package e2e

import (
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/cluster"
	"github.com/cring-dev/cring/internal/testwait"
	"github.com/cring-dev/cring/internal/tombstone"
)

// TestRepairWaitsForTombstones (5 nodes, N = 3, W = 2): when the only nodes holding a delete's
// tombstone are down, the replica that missed the delete comes back with
// its old copy. Repair must not copy that copy to the other replica (the new
// copy would be newer than the tombstone, and the file back for good); once
// the tombstone's nodes return, the old copy is removed.
func TestRepairWaitsForTombstones(t *testing.T) {
	tc := startCluster(t, clusterOpts{nodes: 5, replicas: 3, quorum: 2, heal: true})
	u := tc.newUser(t)
	var rn []cluster.Node
	for _, n := range tc.dc.Nodes {
		rn = append(rn, cluster.Node{Name: n.Name})
	}
	rg, err := cluster.NewRing(rn, 3)
	if err != nil {
		t.Fatal(err)
	}
	// A name with a replica x, down during the delete, and a replica y
	// that gets no tombstone: with x down, the tombstone goes to the first
	// three other nodes of its preference list (its replicas, or a handoff).
	var name, ep string
	var x, y int
	var fileNodes, holders []int
	for k := 0; name == ""; k++ {
		n := fmt.Sprintf("t/%d", k)
		e, err := u.fs.EncryptPath(n)
		if err != nil {
			t.Fatal(err)
		}
		rf := rg.Preference(u.id + "/" + e)[:3]
		var h []int
		for _, i := range rg.Preference(u.id + "/" + tombstone.Path(e)) {
			if i != rf[0] && len(h) < 3 {
				h = append(h, i)
			}
		}
		for _, i := range rf[1:] {
			if !slices.Contains(h, i) {
				name, ep, x, y, fileNodes, holders = n, e, rf[0], i, rf, h
			}
		}
	}
	nodeNames := func(is []int) []string {
		var out []string
		for _, i := range is {
			out = append(out, tc.dc.Nodes[i].Name)
		}
		slices.Sort(out)
		return out
	}
	t.Logf("%s on %v, tombstone on %v; %s misses the delete, %s must not get the file back",
		name, nodeNames(fileNodes), nodeNames(holders), tc.dc.Nodes[x].Name, tc.dc.Nodes[y].Name)

	u.put(t, "t/keep", []byte("keep"))
	u.put(t, name, []byte("doomed"))
	identicalOn(t, tc, u, name, nodeNames(fileNodes), 5*time.Second)
	tc.stop(x)
	tc.waitReady(4)
	if err := u.fs.Remove(name); err != nil {
		t.Fatal(err)
	}
	for i, n := range tc.dc.Nodes {
		_, err := os.Stat(n.FilePath(u.id, tombstone.Path(ep)))
		if has := err == nil; has != slices.Contains(holders, i) {
			t.Fatalf("tombstone on %s: %v, want it on %v only", n.Name, has, nodeNames(holders))
		}
	}

	// The tombstone's nodes go down; x comes back with its old copy, and
	// the proxy replays what x missed.
	for _, i := range holders {
		tc.stop(i)
	}
	tc.waitReady(1)
	// Only x owes hints now: once the healer has replayed one since x came
	// back (settled or kept for a retry, its repair is done), y must still
	// have no copy, and the file must not be served.
	replays := func() uint64 {
		st := tc.srv.Healer().Status()
		return st.Totals["hints_replayed"] + st.Totals["hints_retried"]
	}
	before := replays()
	tc.start(x)
	tc.waitReady(2)
	testwait.For(t, 30*time.Second, "a replay of the hint "+tc.dc.Nodes[x].Name+" is owed", func() bool { return replays() > before })
	if _, ok := tc.onDisk(t, u, name)[tc.dc.Nodes[y].Name]; ok {
		t.Fatalf("%s got a copy of the deleted file while the tombstone's nodes were down", tc.dc.Nodes[y].Name)
	}
	if b, err := u.fs.ReadFile(name); err == nil {
		t.Fatalf("deleted file served: %q", b)
	}
	if _, ok := tc.onDisk(t, u, name)[tc.dc.Nodes[y].Name]; ok {
		t.Fatalf("%s got a copy of the deleted file from a read while the tombstone's nodes were down", tc.dc.Nodes[y].Name)
	}

	// They return: the old copy goes, and the file stays deleted.
	for _, i := range holders {
		tc.start(i)
	}
	tc.waitReady(5)
	// The hint for x is retried with backoff (1, 2, 4, 8 s...).
	testwait.For(t, 30*time.Second, "the old copy removed", func() bool { return len(tc.onDisk(t, u, name)) == 0 })
	if _, err := u.fs.ReadFile(name); err == nil {
		t.Fatal("deleted file readable")
	}
	if got := u.ls(t, "t"); !slices.Equal(got, []string{"keep"}) {
		t.Fatalf("deleted file listed: %v", got)
	}
}
