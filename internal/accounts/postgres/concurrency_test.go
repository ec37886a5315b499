package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	charm "github.com/charmbracelet/charm/proto"
	"github.com/cring-dev/cring/internal/pgtest"
)

// nodes opens n handles on one database, as n `cring node`s would.
func nodes(t *testing.T, url string, n int) []*DB {
	t.Helper()
	var out []*DB
	for range n {
		out = append(out, openPG(t, url))
	}
	return out
}

// TestSeqConcurrent: many goroutines on several nodes incrementing one seq
// never see a value twice, each sees its own values increase, and together
// they get exactly 0..total-1.
func TestSeqConcurrent(t *testing.T) {
	dbs := nodes(t, pgtest.Start(t), 4)
	u, err := dbs[0].UserForKey("ssh-ed25519 AAAA-seq", true)
	if err != nil {
		t.Fatal(err)
	}
	const perNode, each = 6, 40
	var mu sync.Mutex
	seen := map[uint64]int{}
	var wg sync.WaitGroup
	errc := make(chan error, len(dbs)*perNode)
	for _, d := range dbs {
		for range perNode {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var last uint64
				for i := range each {
					v, err := d.NextSeq(u, "counter")
					if err != nil {
						errc <- err
						return
					}
					if i > 0 && v <= last {
						errc <- fmt.Errorf("seq went from %d to %d", last, v)
						return
					}
					last = v
					mu.Lock()
					seen[v]++
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	total := len(dbs) * perNode * each
	for v := range uint64(total) {
		if seen[v] != 1 {
			t.Fatalf("value %d seen %d times", v, seen[v])
		}
	}
	if len(seen) != total {
		t.Fatalf("%d distinct values, want %d", len(seen), total)
	}
	if got, err := dbs[1].GetSeq(u, "counter"); err != nil || got != uint64(total-1) {
		t.Fatalf("GetSeq = %d, %v; want %d", got, err, total-1)
	}
}

// TestGetSeqConcurrentCreate: nodes reading a new seq at once all create it
// at 0; none increments it.
func TestGetSeqConcurrentCreate(t *testing.T) {
	dbs := nodes(t, pgtest.Start(t), 4)
	u, err := dbs[0].UserForKey("ssh-ed25519 AAAA-get", true)
	if err != nil {
		t.Fatal(err)
	}
	for round := range 20 {
		name := fmt.Sprintf("new%d", round)
		vals := make([]uint64, 8)
		errs := make([]error, 8)
		var wg sync.WaitGroup
		for i := range vals {
			wg.Add(1)
			go func() {
				defer wg.Done()
				vals[i], errs[i] = dbs[i%len(dbs)].GetSeq(u, name)
			}()
		}
		wg.Wait()
		for i := range vals {
			if errs[i] != nil || vals[i] != 0 {
				t.Fatalf("round %d: GetSeq = %d, %v; want 0", round, vals[i], errs[i])
			}
		}
	}
}

// TestNameRace: two users on two nodes claiming one name at once: exactly
// one wins, the other gets charm.ErrNameTaken; also when the names differ
// only in case, which charm treats as the same name.
func TestNameRace(t *testing.T) {
	dbs := nodes(t, pgtest.Start(t), 2)
	for round := range 25 {
		a, err := dbs[0].UserForKey(fmt.Sprintf("ssh-ed25519 AAAA-na%d", round), true)
		if err != nil {
			t.Fatal(err)
		}
		b, err := dbs[1].UserForKey(fmt.Sprintf("ssh-ed25519 AAAA-nb%d", round), true)
		if err != nil {
			t.Fatal(err)
		}
		nameA, nameB := fmt.Sprintf("racer%d", round), fmt.Sprintf("racer%d", round)
		if round%2 == 1 {
			nameB = strings.ToUpper(nameB)
		}
		var wg sync.WaitGroup
		var errA, errB error
		wg.Add(2)
		go func() { defer wg.Done(); _, errA = dbs[0].SetUserName(a.CharmID, nameA) }()
		go func() { defer wg.Done(); _, errB = dbs[1].SetUserName(b.CharmID, nameB) }()
		wg.Wait()
		wins := 0
		for _, err := range []error{errA, errB} {
			switch {
			case err == nil:
				wins++
			case err != charm.ErrNameTaken: // == on purpose: charm compares with ==
				t.Fatalf("round %d: %v", round, err)
			}
		}
		if wins != 1 {
			t.Fatalf("round %d: %d winners (%v, %v)", round, wins, errA, errB)
		}
		if n, err := dbs[0].UserNameCount(); err != nil || n != round+1 {
			t.Fatalf("round %d: %d names, %v", round, n, err)
		}
	}
}

// TestUserForKeyRace: a new key arriving on several nodes at once (a user's
// first login racing a retry through another node) makes one user.
func TestUserForKeyRace(t *testing.T) {
	dbs := nodes(t, pgtest.Start(t), 4)
	for round := range 20 {
		key := fmt.Sprintf("ssh-ed25519 AAAA-race%d", round)
		ids := make([]string, 8)
		errs := make([]error, 8)
		var wg sync.WaitGroup
		for i := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				u, err := dbs[i%len(dbs)].UserForKey(key, true)
				errs[i] = err
				if err == nil {
					ids[i] = u.CharmID
				}
			}()
		}
		wg.Wait()
		for i := range ids {
			if errs[i] != nil || ids[i] != ids[0] {
				t.Fatalf("round %d: %q %v, first %q", round, ids[i], errs[i], ids[0])
			}
		}
	}
	if n, err := dbs[0].UserCount(); err != nil || n != 20 {
		t.Fatalf("%d users, %v; want 20", n, err)
	}
}

// TestMigrateConcurrently: nodes starting together on an empty database
// create the schema once; starting again changes nothing; a schema newer
// than this build is refused with a clear error.
func TestMigrateConcurrently(t *testing.T) {
	url := pgtest.Start(t)
	errs := make([]error, 8)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := Open(context.Background(), url, Options{})
			if err == nil {
				d.Close()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	d := openPG(t, url)
	var rows, top int
	if err := d.Pool().QueryRow(context.Background(), `SELECT count(*), max(version) FROM schema_version`).Scan(&rows, &top); err != nil {
		t.Fatal(err)
	}
	if rows != SchemaVersion || top != SchemaVersion {
		t.Fatalf("schema_version has %d rows up to %d, want %d", rows, top, SchemaVersion)
	}
	if _, err := d.Pool().Exec(context.Background(), `INSERT INTO schema_version (version) VALUES ($1)`, SchemaVersion+1); err != nil {
		t.Fatal(err)
	}
	_, err := Open(context.Background(), url, Options{})
	if err == nil || !strings.Contains(err.Error(), "newer than this cring understands") {
		t.Fatalf("open on a newer schema: %v", err)
	}
}

// TestOpenBadURL: an unreachable database is an error, quickly.
func TestOpenBadURL(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5e9)
	defer cancel()
	if _, err := Open(ctx, "postgres://postgres@127.0.0.1:1/x?sslmode=disable&connect_timeout=2", Options{}); err == nil {
		t.Fatal("open of a closed port succeeded")
	}
	if _, err := Open(ctx, "mysql://nope", Options{}); err == nil {
		t.Fatal("open of a non-postgres url succeeded")
	}
}
