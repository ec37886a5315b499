package clusterstate

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/accounts/postgres"
	"github.com/cring-dev/cring/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

// clock is the store's time, moved by the test.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newClock() *clock { return &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

func openStore(t *testing.T, url string, c *clock, limit int64) *Store {
	t.Helper()
	s, err := New(url, Options{Now: c.Now, Lease: time.Minute, HintLimit: limit})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func hints(node, user, dir string, at time.Time, names ...string) []Hint {
	var out []Hint
	for _, n := range names {
		out = append(out, Hint{Node: node, User: user, Dir: dir, Name: n, Recorded: at})
	}
	return out
}

func claimNames(bs []*Batch) map[string][]string {
	out := map[string][]string{}
	for _, b := range bs {
		out[b.Node+":"+b.User+"/"+b.Dir] = slices.Sorted(maps.Keys(b.Names))
	}
	return out
}

func pending(t *testing.T, s *Store) map[string]int64 {
	t.Helper()
	nodes, err := s.Nodes(context.Background())
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

// TestPublishClaimSettle: hints are claimed by (node, user, directory)
// batch for the nodes asked about only, settled hints are deleted, the
// rest is due again at once, and a batch with no hint left is gone.
func TestPublishClaimSettle(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := openStore(t, pgtest.Start(t), c, 0)
	var hs []Hint
	hs = append(hs, hints("n3", "u1", "kv", c.Now(), "a", "b", "c")...)
	hs = append(hs, hints("n3", "u1", ".cring/versions/x", c.Now(), "s1")...)
	hs[3].Reserved = true
	hs = append(hs, hints("n2", "u2", "", c.Now(), "top")...)
	hs = append(hs, hints("n3", "u1", "kv", c.Now(), "a")...) // twice: one hint
	if _, err := s.Publish(ctx, hs, nil); err != nil {
		t.Fatal(err)
	}
	if got := pending(t, s); !maps.Equal(got, map[string]int64{"n3": 4, "n2": 1}) {
		t.Fatalf("pending %v", got)
	}
	got, err := s.Claim(ctx, "p1", []string{"n3"}, 10, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Dir != "kv" || got[1].Dir != ".cring/versions/x" {
		t.Fatalf("claimed %v: want n3's two batches, clients' keys first", claimNames(got))
	}
	if want := []string{"a", "b", "c"}; !slices.Equal(claimNames(got)["n3:u1/kv"], want) {
		t.Fatalf("claimed %v", claimNames(got))
	}
	if again, err := s.Claim(ctx, "p1", []string{"n3"}, 10, 100); err != nil || len(again) != 0 {
		t.Fatalf("claimed batches twice: %v %v", claimNames(again), err)
	}
	if err := s.Release(ctx, got[0], []string{"a", "b"}, false); err != nil {
		t.Fatal(err)
	}
	if err := s.Release(ctx, got[1], []string{"s1"}, false); err != nil {
		t.Fatal(err)
	}
	if got := pending(t, s); !maps.Equal(got, map[string]int64{"n3": 1, "n2": 1}) {
		t.Fatalf("pending after settling 3: %v", got)
	}
	left, err := s.Claim(ctx, "p2", []string{"n3"}, 10, 100)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.EqualFunc(claimNames(left), map[string][]string{"n3:u1/kv": {"c"}}, slices.Equal) {
		t.Fatalf("due again: %v, want kv's c only", claimNames(left))
	}
	if err := s.Release(ctx, left[0], []string{"c"}, false); err != nil {
		t.Fatal(err)
	}
	var batches int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM cring_hint_batches WHERE node = 'n3'`).Scan(&batches); err != nil {
		t.Fatal(err)
	}
	if batches != 0 || pending(t, s)["n3"] != 0 {
		t.Fatalf("n3: %d batches, %d hints left", batches, pending(t, s)["n3"])
	}
}

// TestClaimLeaseExpires: a batch claimed by a proxy that never releases
// it (it died) is claimed by another once the lease has passed; the first
// one's late release keeps the new lease but its settled work counts.
func TestClaimLeaseExpires(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := openStore(t, pgtest.Start(t), c, 0)
	if _, err := s.Publish(ctx, hints("n3", "u1", "kv", c.Now(), "a", "b"), nil); err != nil {
		t.Fatal(err)
	}
	a, err := s.Claim(ctx, "dead", []string{"n3"}, 10, 100)
	if err != nil || len(a) != 1 {
		t.Fatalf("claim: %v %v", claimNames(a), err)
	}
	lease := s.Lease()
	for _, d := range []time.Duration{lease / 2, lease/2 - time.Second} {
		c.add(d)
		if b, err := s.Claim(ctx, "alive", []string{"n3"}, 10, 100); err != nil || len(b) != 0 {
			t.Fatalf("claimed a leased batch: %v %v", claimNames(b), err)
		}
	}
	// Renewed: a live proxy keeps it past the first lease.
	if err := s.Renew(ctx, a); err != nil {
		t.Fatal(err)
	}
	c.add(lease - time.Second)
	if b, err := s.Claim(ctx, "alive", []string{"n3"}, 10, 100); err != nil || len(b) != 0 {
		t.Fatalf("claimed a renewed batch: %v %v", claimNames(b), err)
	}
	c.add(2 * time.Second)
	b, err := s.Claim(ctx, "alive", []string{"n3"}, 10, 100)
	if err != nil || len(b) != 1 {
		t.Fatalf("expired lease not claimed: %v %v", claimNames(b), err)
	}
	if err := s.Release(ctx, a[0], []string{"a"}, true); err != nil {
		t.Fatal(err)
	}
	var owner string
	if err := s.pool.QueryRow(ctx, `SELECT lease_owner FROM cring_hint_batches`).Scan(&owner); err != nil || owner != "alive" {
		t.Fatalf("lease owner %q %v: the late release took it", owner, err)
	}
	if err := s.Release(ctx, b[0], []string{"a", "b"}, false); err != nil {
		t.Fatal(err)
	}
	if got := pending(t, s); len(got) != 0 {
		t.Fatalf("pending %v", got)
	}
}

// TestRepublishedHintSurvivesSettle: a hint published again while its
// batch is claimed (a newer write missed the node) is not settled by the
// claim, which read the nodes before that write.
func TestRepublishedHintSurvivesSettle(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := openStore(t, pgtest.Start(t), c, 0)
	if _, err := s.Publish(ctx, hints("n3", "u1", "kv", c.Now(), "a", "b"), nil); err != nil {
		t.Fatal(err)
	}
	got, err := s.Claim(ctx, "p1", []string{"n3"}, 10, 100)
	if err != nil || len(got) != 1 {
		t.Fatal(claimNames(got), err)
	}
	if _, err := s.Publish(ctx, hints("n3", "u1", "kv", c.Now(), "a", "new"), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Release(ctx, got[0], []string{"a", "b"}, false); err != nil {
		t.Fatal(err)
	}
	left, err := s.Claim(ctx, "p1", []string{"n3"}, 10, 100)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string][]string{"n3:u1/kv": {"a", "new"}}; !maps.EqualFunc(claimNames(left), want, slices.Equal) {
		t.Fatalf("left %v, want %v", claimNames(left), want)
	}
	if p := pending(t, s)["n3"]; p != 2 {
		t.Fatalf("n3 counted %d hints, want 2", p)
	}
}

// TestFailedBatchBacksOff: a batch whose keys failed waits 1 s, then 2 s,
// …, never more than MaxBackoff (what failed may have ended a moment
// later); MakeDue (its node came back) makes it due at once.
func TestFailedBatchBacksOff(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := openStore(t, pgtest.Start(t), c, 0)
	if _, err := s.Publish(ctx, hints("n3", "u1", "kv", c.Now(), "a"), nil); err != nil {
		t.Fatal(err)
	}
	claim := func() []*Batch {
		t.Helper()
		b, err := s.Claim(ctx, "p1", []string{"n3"}, 10, 100)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	waits := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, MaxBackoff, MaxBackoff}
	for _, wait := range waits {
		b := claim()
		if len(b) != 1 {
			t.Fatalf("not due")
		}
		if err := s.Release(ctx, b[0], nil, true); err != nil {
			t.Fatal(err)
		}
		c.add(wait - time.Millisecond)
		if len(claim()) != 0 {
			t.Fatalf("due before its %s backoff", wait)
		}
		c.add(time.Millisecond)
	}
	b := claim()
	if err := s.Release(ctx, b[0], nil, true); err != nil {
		t.Fatal(err)
	}
	if len(claim()) != 0 {
		t.Fatal("due during its backoff")
	}
	if err := s.MakeDue(ctx, "n3"); err != nil {
		t.Fatal(err)
	}
	if len(claim()) != 1 {
		t.Fatal("MakeDue left it waiting")
	}
}

// TestReleaseOwner: a proxy killed mid-replay and started again under its
// id gives its last run's claims back at once, not after their lease;
// other proxies' claims stay theirs.
func TestReleaseOwner(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := openStore(t, pgtest.Start(t), c, 0)
	hs := append(hints("n3", "u1", "a", c.Now(), "x"), hints("n3", "u1", "b", c.Now(), "x")...)
	if _, err := s.Publish(ctx, hs, nil); err != nil {
		t.Fatal(err)
	}
	if b, err := s.Claim(ctx, "p1", []string{"n3"}, 1, 100); err != nil || len(b) != 1 {
		t.Fatalf("claim: %v %v", claimNames(b), err)
	}
	if b, err := s.Claim(ctx, "p2", []string{"n3"}, 1, 100); err != nil || len(b) != 1 {
		t.Fatalf("claim: %v %v", claimNames(b), err)
	}
	if err := s.ReleaseOwner(ctx, "p1"); err != nil {
		t.Fatal(err)
	}
	b, err := s.Claim(ctx, "p1", []string{"n3"}, 10, 100)
	if err != nil || len(b) != 1 {
		t.Fatalf("after the release, claimed %v (%v), want p1's one batch back", claimNames(b), err)
	}
}

// TestHintLimitMarksFullScan: past the limit a node's hints are dropped
// and it is marked for a full scan, which only a scan started after the
// mark clears; a proxy's own mark (its log passed its limit) does the same.
func TestHintLimitMarksFullScan(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := openStore(t, pgtest.Start(t), c, 5)
	marked, err := s.Publish(ctx, hints("n3", "u1", "kv", c.Now(), "a", "b", "c"), nil)
	if err != nil || len(marked) != 0 {
		t.Fatal(marked, err)
	}
	marked, err = s.Publish(ctx, append(hints("n3", "u1", "kv", c.Now(), "c", "d", "e", "f"), hints("n2", "u1", "kv", c.Now(), "a")...), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(marked, []string{"n3"}) {
		t.Fatalf("marked %v, want n3 (6 hints, limit 5)", marked)
	}
	nodes, err := s.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st := nodes["n3"]; st.Hints != 0 || !st.FullScanSince.Equal(c.Now()) || nodes["n2"].Hints != 1 {
		t.Fatalf("nodes %+v", nodes)
	}
	if b, err := s.Claim(ctx, "p1", []string{"n3"}, 10, 100); err != nil || len(b) != 0 {
		t.Fatalf("dropped hints claimed: %v %v", claimNames(b), err)
	}
	mark := c.Now()
	if err := s.ClearFullScan(ctx, "n3", mark); err != nil {
		t.Fatal(err)
	}
	if nodes, _ := s.Nodes(ctx); nodes["n3"].FullScanSince.IsZero() {
		t.Fatal("a scan that started with the mark cleared it")
	}
	if err := s.ClearFullScan(ctx, "n3", mark.Add(time.Microsecond)); err != nil {
		t.Fatal(err)
	}
	if nodes, _ := s.Nodes(ctx); !nodes["n3"].FullScanSince.IsZero() {
		t.Fatal("a scan after the mark did not clear it")
	}

	// A proxy's own mark drops what the store holds too.
	c.add(time.Minute)
	if _, err := s.Publish(ctx, nil, map[string]time.Time{"n2": c.Now()}); err != nil {
		t.Fatal(err)
	}
	if nodes, _ := s.Nodes(ctx); nodes["n2"].Hints != 0 || !nodes["n2"].FullScanSince.Equal(c.Now()) {
		t.Fatalf("n2 after its mark: %+v", nodes["n2"])
	}
}

// TestClaimsAreDisjoint: proxies claiming at once never get the same batch.
func TestClaimsAreDisjoint(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := openStore(t, pgtest.Start(t), c, 0)
	var hs []Hint
	for d := range 200 {
		hs = append(hs, hints("n3", "u1", fmt.Sprintf("d%03d", d), c.Now(), "a", "b")...)
	}
	if _, err := s.Publish(ctx, hs, nil); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]string{}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for p := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			owner := fmt.Sprintf("p%d", p)
			for {
				bs, err := s.Claim(ctx, owner, []string{"n3"}, 7, 100)
				if err != nil {
					errs <- err
					return
				}
				if len(bs) == 0 {
					return
				}
				mu.Lock()
				for _, b := range bs {
					if other, ok := seen[b.Dir]; ok {
						errs <- fmt.Errorf("%s claimed by %s and %s", b.Dir, other, owner)
					}
					seen[b.Dir] = owner
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(seen) != 200 {
		t.Fatalf("%d of 200 batches claimed", len(seen))
	}
}

// TestOwedDirs: the directories each node is owed hints in, bounded.
func TestOwedDirs(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := openStore(t, pgtest.Start(t), c, 0)
	hs := append(hints("n3", "u1", "a", c.Now(), "x", "y"), hints("n3", "u1", "b", c.Now(), "x")...)
	hs = append(hs, hints("n3", "u2", "a", c.Now(), "x")...)
	hs = append(hs, hints("n1", "u2", "a", c.Now(), "x")...)
	if _, err := s.Publish(ctx, hs, nil); err != nil {
		t.Fatal(err)
	}
	owed, complete, err := s.OwedDirs(ctx, 10)
	if err != nil || !complete {
		t.Fatal(complete, err)
	}
	slices.SortFunc(owed, func(a, b Owed) int { return strings.Compare(a.Node+a.User+a.Dir, b.Node+b.User+b.Dir) })
	want := []Owed{{"n1", "u2", "a"}, {"n3", "u1", "a"}, {"n3", "u1", "b"}, {"n3", "u2", "a"}}
	if !slices.Equal(owed, want) {
		t.Fatalf("owed %v, want %v", owed, want)
	}
	if got, complete, err := s.OwedDirs(ctx, 3); err != nil || complete || len(got) != 3 {
		t.Fatalf("4 directories under a bound of 3: %d, complete %v (%v)", len(got), complete, err)
	}
}

// TestUsers: users are recorded once whoever records them.
func TestUsers(t *testing.T) {
	ctx := context.Background()
	url := pgtest.Start(t)
	c := newClock()
	a, b := openStore(t, url, c, 0), openStore(t, url, c, 0)
	if err := a.AddUsers(ctx, []string{"u2", "u1", "u2"}); err != nil {
		t.Fatal(err)
	}
	if err := b.AddUsers(ctx, []string{"u3", "u1"}); err != nil {
		t.Fatal(err)
	}
	got, err := b.Users(ctx)
	if err != nil || !slices.Equal(got, []string{"u1", "u2", "u3"}) {
		t.Fatalf("users %v %v", got, err)
	}
	if n, err := a.UserCount(ctx); err != nil || n != 3 {
		t.Fatalf("count %d %v", n, err)
	}
}

// TestHeartbeats: a proxy not seen for more than three of its intervals is
// down; one not seen for a week is forgotten.
func TestHeartbeats(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := openStore(t, pgtest.Start(t), c, 0)
	started := c.Now()
	beat := func(id string, every time.Duration) {
		t.Helper()
		if err := s.Heartbeat(ctx, Proxy{ID: id, Host: "h-" + id, Addresses: []string{"127.0.0.1:35354"}, Version: "v1",
			Started: started, Interval: every, HintsPending: 7}); err != nil {
			t.Fatal(err)
		}
	}
	down := func() map[string]bool {
		t.Helper()
		ps, err := s.Proxies(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, p := range ps {
			out[p.ID] = p.Down
			if p.HintsPending != 7 || p.Host != "h-"+p.ID || !p.Started.Equal(started) {
				t.Fatalf("proxy %+v", p)
			}
		}
		return out
	}
	beat("a", 5*time.Second)
	beat("b", 5*time.Second)
	beat("slow", time.Minute)
	for _, tc := range []struct {
		after time.Duration
		beats []string
		want  map[string]bool
	}{
		{0, nil, map[string]bool{"a": false, "b": false, "slow": false}},
		{15 * time.Second, []string{"b"}, map[string]bool{"a": false, "b": false, "slow": false}},
		{time.Second, []string{"b"}, map[string]bool{"a": true, "b": false, "slow": false}},
		{3 * time.Minute, []string{"b"}, map[string]bool{"a": true, "b": false, "slow": true}},
		{7 * 24 * time.Hour, []string{"b"}, map[string]bool{"b": false}},
	} {
		c.add(tc.after)
		for _, id := range tc.beats {
			beat(id, 5*time.Second)
		}
		if got := down(); !maps.Equal(got, tc.want) {
			t.Fatalf("after %s more: down %v, want %v", tc.after, got, tc.want)
		}
	}
}

// TestSchemaBesideAccounts: the store's tables are created on a database
// that holds charm's accounts (cring node's), idempotently, all named
// cring_, and leave the accounts' tables as they were.
func TestSchemaBesideAccounts(t *testing.T) {
	ctx := context.Background()
	url := pgtest.Start(t)
	db, err := postgres.Open(ctx, url, postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tables := func() []string {
		t.Helper()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		rows, err := conn.Query(ctx, `SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1`)
		if err != nil {
			t.Fatal(err)
		}
		out, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	before := tables()
	c := newClock()
	for range 2 {
		s := openStore(t, url, c, 0)
		if err := s.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	}
	after := tables()
	var added []string
	for _, tb := range after {
		if !slices.Contains(before, tb) {
			added = append(added, tb)
		}
	}
	want := []string{"cring_hint_batches", "cring_hint_nodes", "cring_hints", "cring_proxies", "cring_users"}
	if !slices.Equal(added, want) || len(after) != len(before)+len(want) {
		t.Fatalf("tables added %v, want %v (before %v)", added, want, before)
	}
}
