package heal

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/clusterstate"
	"github.com/cring-dev/cring/internal/pgtest"
	"github.com/cring-dev/cring/internal/testwait"
	"github.com/cring-dev/cring/internal/token"
)

// peer is another proxy's healer on hc's nodes, sharing state through a
// store of its own on url (each proxy is its own process).
func (hc *healCluster) peer(url, id string, o clusterstate.Options) *Healer {
	t := hc.t
	t.Helper()
	store, err := clusterstate.New(url, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	signer, err := token.LoadSigner(hc.dc.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	h, err := New(Options{
		Members: hc.h.mem.Load(), Signer: signer,
		Issuer: func() string { return "http://127.0.0.1:35354" }, DataDir: t.TempDir(),
		Logger:       slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelWarn})).With("proxy", id),
		StallTimeout: 10 * time.Second, Shared: store, ProxyID: id,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// refreshNow reads the store's view at once (refresh runs at most every
// viewEvery).
func refreshNow(h *Healer) {
	h.shared.vmu.Lock()
	h.shared.refreshed = time.Time{}
	h.shared.counted = time.Time{}
	h.shared.vmu.Unlock()
	h.shared.refresh(context.Background())
}

func storePending(t *testing.T, h *Healer) map[string]int64 {
	t.Helper()
	nodes, err := h.shared.store.Nodes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for n, st := range nodes {
		if st.Hints > 0 {
			out[n] = st.Hints
		}
	}
	return out
}

// TestSharedHintsOutliveTheirProxy: proxy A's hints for a node that was
// down reach the store and leave A's log; A is lost; proxy B, which never
// saw the user, skips the node for the user's reads, replays every hint
// once the node is back, and its scans walk the user.
func TestSharedHintsOutliveTheirProxy(t *testing.T) {
	ctx := context.Background()
	hc := newHealCluster(t, healOpts{versioned: true})
	url := pgtest.Start(t)
	a := hc.peer(url, "A", clusterstate.Options{})
	b := hc.peer(url, "B", clusterstate.Options{})
	hc.health.set(2, false)
	const n = 40
	for k := range n {
		for _, dir := range []string{"kv", "docs"} {
			p := fmt.Sprintf("%s/%d", dir, k)
			hc.put(p, []byte("value "+p), hc.clock.Now(), 0, 1)
			a.RecordUser(hc.user)
			a.Missed(hc.user, p, "node3")
		}
	}
	if got := a.Status().HintsPending["node3"]; got != 2*n {
		t.Fatalf("A's log holds %d hints, want %d", got, 2*n)
	}
	if !a.publish(ctx) {
		t.Fatal("publish failed")
	}
	if got := a.Status().HintsPending["node3"]; got != 0 {
		t.Fatalf("A's log still holds %d hints once the store has them", got)
	}
	if !a.Owed(hc.user, "kv/0", "node3") {
		t.Fatal("A forgot node3 is owed kv/0 when its log handed the hint over")
	}
	if got := storePending(t, a); got["node3"] != 2*n {
		t.Fatalf("store holds %v", got)
	}
	a.Close() // lost for good

	refreshNow(b)
	if !b.Owed(hc.user, "kv/0", "node3") || b.Complete(hc.user, "node3") {
		t.Fatal("B reads from node3 although the store says it is owed the user's writes")
	}
	if b.Owed(hc.user, "kv/0", "node2") {
		t.Fatal("B skips node2, which is owed nothing")
	}
	hc.health.set(2, true)
	b.replayShared(ctx, hc.h.mem.Load())
	for _, dir := range []string{"kv", "docs"} {
		if got := len(hc.listed(2, dir)); got != n {
			t.Fatalf("node3 holds %d of %s's %d files after B's replay", got, dir, n)
		}
	}
	if got := storePending(t, b); len(got) != 0 {
		t.Fatalf("store still holds %v", got)
	}
	refreshNow(b)
	if b.Owed(hc.user, "kv/0", "node3") {
		t.Fatal("B still skips node3 once its hints are settled")
	}
	if users := b.users(ctx); !slices.Equal(users, []string{hc.user}) {
		t.Fatalf("B's scans walk %v, want A's user", users)
	}
	if got := b.Status().Users; got != 1 {
		t.Fatalf("B counts %d users, want 1", got)
	}
}

// TestSharedOwedByDirectory: with hints in the store, reads skip a node
// only for the directories it is owed hints in (and what is under a
// deleted directory), not for every key of the user: two nodes owed one
// key each must not make the user's other keys unreadable.
func TestSharedOwedByDirectory(t *testing.T) {
	ctx := context.Background()
	hc := newHealCluster(t, healOpts{versioned: true})
	a := hc.peer(pgtest.Start(t), "A", clusterstate.Options{})
	a.RecordUser(hc.user)
	a.Missed(hc.user, "dir1/sub/f1", "node2")
	a.Missed(hc.user, "dir2", "node3") // a directory delete
	if !a.publish(ctx) {
		t.Fatal("publish failed")
	}
	refreshNow(a)
	for _, c := range []struct {
		path, node string
		owed       bool
	}{
		{"dir1/sub/f1", "node2", true},
		{"dir1/sub/f2", "node2", true}, // the view is by directory
		{"dir1/sub", "node2", true},    // its listing
		{"dir1/other/f1", "node2", false},
		{"dir3/sub/f1", "node2", false},
		{"dir1/sub/f1", "node3", true}, // and so is every other key
		{"dir2/sub/f1", "node3", true}, // under the deleted directory
		{"dir2", "node3", true},
		{"dir3/sub/f1", "node3", true}, // dir2's hint is in the root directory
		{"dir1/sub/f1", "node1", false},
	} {
		if got := a.Owed(hc.user, c.path, c.node); got != c.owed {
			t.Errorf("Owed(%s, %s) = %v, want %v", c.path, c.node, got, c.owed)
		}
	}
	if a.Complete(hc.user, "node2") || !a.Complete(hc.user, "node1") {
		t.Error("Complete must stay per user: node2 is owed some of the user's writes, node1 none")
	}
}

// TestSharedRestartReleasesOwnClaims: a proxy killed mid-replay leaves its
// claims leased; started again under its id (its data dir), it takes them
// back at once instead of waiting out the lease.
func TestSharedRestartReleasesOwnClaims(t *testing.T) {
	ctx := context.Background()
	hc := newHealCluster(t, healOpts{versioned: true})
	url := pgtest.Start(t)
	a := hc.peer(url, "A", clusterstate.Options{Lease: time.Hour})
	hc.put("kv/x", []byte("x"), hc.clock.Now(), 0, 1)
	a.RecordUser(hc.user)
	a.Missed(hc.user, "kv/x", "node3")
	if !a.publish(ctx) {
		t.Fatal("publish failed")
	}
	if bs, err := a.shared.store.Claim(ctx, "A", []string{"node3"}, 10, 10); err != nil || len(bs) != 1 {
		t.Fatalf("claim: %d batches, %v", len(bs), err)
	}
	a.Close() // killed holding the claim

	again := hc.peer(url, "A", clusterstate.Options{Lease: time.Hour})
	again.replayShared(ctx, hc.h.mem.Load())
	if got := storePending(t, again); len(got) != 0 {
		t.Fatalf("store still holds %v: the last run's claim kept its batch", got)
	}
	if got := len(hc.listed(2, "kv")); got != 1 {
		t.Fatalf("node3 holds %d of kv's files after the replay, want 1", got)
	}
}

// TestSharedReplayNotDoubled: two proxies replaying the same store at once
// copy each missed key once.
func TestSharedReplayNotDoubled(t *testing.T) {
	ctx := context.Background()
	hc := newHealCluster(t, healOpts{versioned: true})
	url := pgtest.Start(t)
	a := hc.peer(url, "A", clusterstate.Options{})
	b := hc.peer(url, "B", clusterstate.Options{})
	hc.health.set(2, false)
	const dirs, per = 12, 8
	for d := range dirs {
		for k := range per {
			p := fmt.Sprintf("d%02d/%d", d, k)
			hc.put(p, []byte(p), hc.clock.Now(), 0, 1)
			// Half the hints from each proxy, some keys from both.
			if k%2 == 0 || k == 1 {
				a.Missed(hc.user, p, "node3")
			}
			if k%2 == 1 {
				b.Missed(hc.user, p, "node3")
			}
		}
	}
	if !a.publish(ctx) || !b.publish(ctx) {
		t.Fatal("publish failed")
	}
	hc.health.set(2, true)
	hc.resetCounts()
	m := hc.h.mem.Load()
	// A claims two batches and is slow to replay them; B replays the rest
	// meanwhile, leaving A's alone.
	held, err := a.shared.store.Claim(ctx, "A", []string{"node3"}, 2, batchKeys)
	if err != nil || len(held) != 2 {
		t.Fatalf("claim: %d batches, %v", len(held), err)
	}
	b.replayShared(ctx, m)
	for d := range dirs {
		dir := fmt.Sprintf("d%02d", d)
		heldByA := slices.ContainsFunc(held, func(c *clusterstate.Batch) bool { return c.Dir == dir })
		if got := len(hc.listed(2, dir)); heldByA != (got == 0) || !heldByA && got != per {
			t.Fatalf("after B's replay node3 holds %d of %s's %d files (A holds its batch: %v)", got, dir, per, heldByA)
		}
	}
	var due []*dueBatch
	for _, c := range held {
		due = append(due, &dueBatch{claim: c, names: slices.Sorted(maps.Keys(c.Names))})
	}
	a.replay(ctx, m, due)
	copies := 0
	for d := range dirs {
		if got := len(hc.listed(2, fmt.Sprintf("d%02d", d))); got != per {
			t.Fatalf("node3 holds %d of d%02d's %d files", got, d, per)
		}
		for k := range per {
			copies += hc.fronts[2].count(fmt.Sprintf("POST /v1/fs/d%02d/%d", d, k))
		}
	}
	if copies != dirs*per {
		t.Fatalf("%d copies onto node3 for %d missed keys", copies, dirs*per)
	}
	if got := storePending(t, a); len(got) != 0 {
		t.Fatalf("store still holds %v", got)
	}
}

// TestSharedHintLimitFullScan: past the store's hint limit a node is
// marked there; every proxy then skips it for reads, and a proxy that
// never saw the user runs the full scan (with no scan interval) that
// clears the mark.
func TestSharedHintLimitFullScan(t *testing.T) {
	ctx := context.Background()
	hc := newHealCluster(t, healOpts{versioned: true})
	url := pgtest.Start(t)
	a := hc.peer(url, "A", clusterstate.Options{HintLimit: 10})
	b := hc.peer(url, "B", clusterstate.Options{HintLimit: 10})
	hc.health.set(2, false)
	for k := range 15 {
		p := fmt.Sprintf("kv/%d", k)
		hc.put(p, []byte(p), hc.clock.Now(), 0, 1)
		a.RecordUser(hc.user)
		a.Missed(hc.user, p, "node3")
	}
	if !a.publish(ctx) {
		t.Fatal("publish failed")
	}
	for _, h := range []*Healer{a, b} {
		refreshNow(h)
		if st := h.Status(); !slices.Equal(st.FullScanOwed, []string{"node3"}) {
			t.Fatalf("full scan owed to %v, want node3", st.FullScanOwed)
		}
		if !h.Owed(hc.user, "kv/99", "node3") || h.Complete(hc.user, "node3") {
			t.Fatal("reads must skip a node marked for a full scan")
		}
	}
	a.Close()
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); b.Run(rctx) }()
	t.Cleanup(func() { cancel(); <-done })
	hc.health.set(2, true)
	testwait.For(t, 30*time.Second, "B's full scan", func() bool {
		return len(b.Status().FullScanOwed) == 0 && len(hc.listed(2, "kv")) == 15
	})
	nodes, err := b.shared.store.Nodes(ctx)
	if err != nil || !nodes["node3"].FullScanSince.IsZero() {
		t.Fatalf("store still marks node3: %+v %v", nodes, err)
	}
}

// TestSharedStoreDown: with the store unreachable, hints stay in the log
// and are replayed from it, as without a store.
func TestSharedStoreDown(t *testing.T) {
	hc := newHealCluster(t, healOpts{versioned: true})
	a := hc.peer("postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=1", "A", clusterstate.Options{})
	hc.health.set(2, false)
	hc.put("kv/a", []byte("a"), hc.clock.Now(), 0, 1)
	a.Missed(hc.user, "kv/a", "node3")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	testwait.For(t, 10*time.Second, "the store failing", func() bool { return a.shared.unpublished.Load() })
	hc.health.set(2, true)
	testwait.For(t, 30*time.Second, "kv/a on node3 from A's own log", func() bool {
		_, ok := hc.listed(2, "kv")["a"]
		return ok && a.Status().HintsPending["node3"] == 0
	})
}

// TestPublishWindow measures how long a hint lives only in its proxy's log
// (a proxy lost then leaves it to the scan): from Missed's return to the
// store holding it, with the publisher running.
func TestPublishWindow(t *testing.T) {
	hc := newHealCluster(t, healOpts{versioned: true})
	a := hc.peer(pgtest.Start(t), "A", clusterstate.Options{})
	hc.health.set(2, false)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	var lags []time.Duration
	for k := range 20 {
		p := fmt.Sprintf("kv/%d", k)
		a.Missed(hc.user, p, "node3")
		start := time.Now()
		testwait.For(t, 10*time.Second, "the hint in the store", func() bool {
			return storePending(t, a)["node3"] == int64(k+1)
		})
		lags = append(lags, time.Since(start))
		// The log forgets it right after the store's commit.
		testwait.For(t, 5*time.Second, "the hint gone from A's log", func() bool { return a.Status().HintsPending["node3"] == 0 })
	}
	sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
	// Includes the poll's own queries: the window is at most this.
	t.Logf("hint recorded → in the store: median %s, max %s (20 hints, one at a time)", lags[len(lags)/2], lags[len(lags)-1])
}

// TestPublishedLeavesLog: a published hint leaves the log for good (a
// restart doesn't bring it back), unless it was recorded again meanwhile.
func TestPublishedLeavesLog(t *testing.T) {
	dir := t.TempDir()
	s := openTestState(t, dir, 0, 0)
	s.share()
	for i := range 3 {
		if err := s.addHint(hintAt(i, "n3")); err != nil {
			t.Fatal(err)
		}
	}
	hs, _ := s.takeUnpublished(10)
	if len(hs) != 3 {
		t.Fatalf("took %d", len(hs))
	}
	again := hs[0].hint
	if err := s.addHint(again); err != nil {
		t.Fatal(err)
	}
	s.published(hs, nil)
	if got := s.hintCounts()["n3"]; got != 1 || !s.owed(again) {
		t.Fatalf("%d hints left, want the one recorded again", got)
	}
	if left, _ := s.takeUnpublished(10); len(left) != 1 || left[0].hint != again {
		t.Fatalf("to publish: %+v", left)
	}
	s.close()
	s2 := openTestState(t, dir, 0, 0)
	if got := s2.hintCounts()["n3"]; got != 1 {
		t.Fatalf("after a restart: %d hints, want 1", got)
	}
}
