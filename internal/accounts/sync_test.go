package accounts

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	charm "github.com/charmbracelet/charm/proto"
	"github.com/charmbracelet/charm/server/db/sqlite"
)

// store is a charm sqlite account database built with charm's own code.
type store struct {
	path string
	db   *sqlite.DB
}

func newStore(t *testing.T, name string) *store {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	d := sqlite.NewDB(p)
	t.Cleanup(func() { d.Close() })
	return &store{path: p, db: d}
}

// seed gives the store a user with a chosen charm ID, as copying one
// node's file to another would.
func (s *store) seed(t *testing.T, charmID, key string) *charm.User {
	t.Helper()
	raw, err := sql.Open("sqlite", s.path+sqlite.DbOptions)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	res, err := raw.Exec(`INSERT INTO charm_user (charm_id) VALUES (?)`, charmID)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := res.LastInsertId()
	if _, err := raw.Exec(`INSERT INTO public_key (user_id, public_key) VALUES (?, ?)`, id, key); err != nil {
		t.Fatal(err)
	}
	return s.user(t, key)
}

func (s *store) user(t *testing.T, key string) *charm.User {
	t.Helper()
	u, err := s.db.UserForKey(key, false)
	if err != nil {
		t.Fatalf("%s: user for %s: %v", s.path, key, err)
	}
	return u
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func fileSum(t *testing.T, p string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// TestSyncMerges: after a sync both files hold every user, key, encrypt
// key, name and seq (at its max), read back through charm's own store; a
// second sync changes nothing.
func TestSyncMerges(t *testing.T) {
	a, b := newStore(t, "a.db"), newStore(t, "b.db")
	dated := time.Date(2021, 5, 6, 7, 8, 9, 0, time.UTC)

	u1a := a.seed(t, "11111111-1111-1111-1111-111111111111", "ssh-ed25519 K1")
	u1b := b.seed(t, "11111111-1111-1111-1111-111111111111", "ssh-ed25519 K1")
	_, err := a.db.SetUserName(u1a.CharmID, "alice")
	must(t, err)
	must(t, a.db.AddEncryptKeyForPublicKey(u1a, "ssh-ed25519 K1", "g1", "enc-g1", &dated))
	for range 4 {
		_, err = a.db.NextSeq(u1a, "kv") // 0..3
		must(t, err)
	}
	for range 6 {
		_, err = b.db.NextSeq(u1b, "kv") // 0..5: b is ahead
		must(t, err)
	}
	_, err = b.db.NextSeq(u1b, "other")
	must(t, err)
	must(t, b.db.LinkUserKey(u1b, "ssh-ed25519 K1b"))
	u2, err := a.db.UserForKey("ssh-ed25519 K2", true) // only on a
	must(t, err)
	must(t, a.db.AddEncryptKeyForPublicKey(u2, "ssh-ed25519 K2", "g2", "enc-g2", nil))
	u3, err := b.db.UserForKey("ssh-ed25519 K3", true) // only on b
	must(t, err)
	_, err = b.db.SetUserName(u3.CharmID, "carol")
	must(t, err)

	rep, err := Sync(context.Background(), []string{a.path, b.path}, false)
	must(t, err)
	if rep.Users != 3 || rep.Keys != 4 || rep.EncryptKeys != 2 {
		t.Fatalf("union %+v", rep)
	}
	wantA := Changes{Store: a.path, Users: 1, Keys: 2, Seqs: 2}
	wantB := Changes{Store: b.path, Users: 1, UsersUpdated: 1, Keys: 1, EncryptKeys: 2}
	if rep.Files[0] != wantA || rep.Files[1] != wantB {
		t.Fatalf("changes\n got %+v\n     %+v\nwant %+v\n     %+v", rep.Files[0], rep.Files[1], wantA, wantB)
	}

	for _, s := range []*store{a, b} {
		for key, id := range map[string]string{"ssh-ed25519 K1": u1a.CharmID, "ssh-ed25519 K1b": u1a.CharmID, "ssh-ed25519 K2": u2.CharmID, "ssh-ed25519 K3": u3.CharmID} {
			if got := s.user(t, key).CharmID; got != id {
				t.Fatalf("%s: %s belongs to %s, want %s", s.path, key, got, id)
			}
		}
		u1 := s.user(t, "ssh-ed25519 K1")
		if u1.Name != "alice" {
			t.Fatalf("%s: name %q", s.path, u1.Name)
		}
		if n, err := s.db.GetUserWithName("carol"); err != nil || n.CharmID != u3.CharmID {
			t.Fatalf("%s: carol: %v %v", s.path, n, err)
		}
		if keys, err := s.db.KeysForUser(u1); err != nil || len(keys) != 2 {
			t.Fatalf("%s: keys %v %v", s.path, keys, err)
		}
		eks, err := s.db.EncryptKeysForPublicKey(u1.PublicKey)
		if err != nil || len(eks) != 1 || eks[0].ID != "g1" || eks[0].Key != "enc-g1" || !eks[0].CreatedAt.Equal(dated) {
			t.Fatalf("%s: encrypt keys %+v %v", s.path, eks, err)
		}
		eks, err = s.db.EncryptKeysForPublicKey(s.user(t, "ssh-ed25519 K2").PublicKey)
		if err != nil || len(eks) != 1 || eks[0].ID != "g2" {
			t.Fatalf("%s: encrypt keys of K2 %+v %v", s.path, eks, err)
		}
		if v, err := s.db.GetSeq(u1, "kv"); err != nil || v != 5 {
			t.Fatalf("%s: kv seq %d %v, want 5", s.path, v, err)
		}
		if v, err := s.db.GetSeq(u1, "other"); err != nil || v != 0 {
			t.Fatalf("%s: other seq %d %v, want 0", s.path, v, err)
		}
	}
	_, err = b.db.NextSeq(u1b, "other")
	must(t, err)

	// b's "other" moved on: a second sync only carries that to a.
	rep, err = Sync(context.Background(), []string{a.path, b.path}, false)
	must(t, err)
	if rep.Files[0].Total() != 1 || rep.Files[0].Seqs != 1 || rep.Files[1].Total() != 0 {
		t.Fatalf("second sync: %+v", rep.Files)
	}
	rep, err = Sync(context.Background(), []string{a.path, b.path}, false)
	must(t, err)
	if rep.Files[0].Total()+rep.Files[1].Total() != 0 {
		t.Fatalf("third sync changed something: %+v", rep.Files)
	}
}

// TestSyncRefuses: what a merge would have to guess about is listed, and
// no file changes.
func TestSyncRefuses(t *testing.T) {
	for _, tt := range []struct {
		name  string
		setup func(t *testing.T, a, b *store)
		kind  string
	}{
		{"key under two charm IDs", func(t *testing.T, a, b *store) {
			// One person's first login went to different nodes.
			_, err := a.db.UserForKey("ssh-ed25519 SPLIT", true)
			must(t, err)
			_, err = b.db.UserForKey("ssh-ed25519 SPLIT", true)
			must(t, err)
		}, "key"},
		{"name under two charm IDs", func(t *testing.T, a, b *store) {
			ua, err := a.db.UserForKey("ssh-ed25519 A", true)
			must(t, err)
			ub, err := b.db.UserForKey("ssh-ed25519 B", true)
			must(t, err)
			_, err = a.db.SetUserName(ua.CharmID, "Bob")
			must(t, err)
			_, err = b.db.SetUserName(ub.CharmID, "bob") // charm compares names ignoring case
			must(t, err)
		}, "name"},
		{"one user, two names", func(t *testing.T, a, b *store) {
			ua := a.seed(t, "22222222-2222-2222-2222-222222222222", "ssh-ed25519 S")
			ub := b.seed(t, "22222222-2222-2222-2222-222222222222", "ssh-ed25519 S")
			_, err := a.db.SetUserName(ua.CharmID, "sam")
			must(t, err)
			_, err = b.db.SetUserName(ub.CharmID, "samuel")
			must(t, err)
		}, "field"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a, b := newStore(t, "a.db"), newStore(t, "b.db")
			// Something mergeable too, to prove nothing of it is written.
			_, err := a.db.UserForKey("ssh-ed25519 ONLY-A", true)
			must(t, err)
			tt.setup(t, a, b)
			before := [][32]byte{fileSum(t, a.path), fileSum(t, b.path)}
			rep, err := Sync(context.Background(), []string{a.path, b.path}, false)
			if !errors.Is(err, ErrConflicts) {
				t.Fatalf("err %v, want ErrConflicts", err)
			}
			if len(rep.Conflicts) != 1 || rep.Conflicts[0].Kind != tt.kind || len(rep.Conflicts[0].Values) != 2 {
				t.Fatalf("conflicts %+v", rep.Conflicts)
			}
			t.Log(rep.Conflicts[0])
			if after := [][32]byte{fileSum(t, a.path), fileSum(t, b.path)}; after[0] != before[0] || after[1] != before[1] {
				t.Fatal("a refused sync changed a file")
			}
			if _, err := b.db.UserForKey("ssh-ed25519 ONLY-A", false); err != charm.ErrMissingUser {
				t.Fatalf("b gained a user: %v", err)
			}
		})
	}
}

// TestSyncDryRun reports changes and writes nothing; bad input is refused.
func TestSyncDryRun(t *testing.T) {
	a, b := newStore(t, "a.db"), newStore(t, "b.db")
	_, err := a.db.UserForKey("ssh-ed25519 A", true)
	must(t, err)
	before := fileSum(t, b.path)
	rep, err := Sync(context.Background(), []string{a.path, b.path}, true)
	must(t, err)
	if rep.Files[1].Users != 1 || fileSum(t, b.path) != before {
		t.Fatalf("dry run: %+v, file changed: %v", rep.Files, fileSum(t, b.path) != before)
	}
	for _, args := range [][]string{
		{a.path},
		{a.path, a.path},
		{a.path, filepath.Join(t.TempDir(), "missing.db")},
	} {
		if _, err := Sync(context.Background(), args, false); err == nil {
			t.Fatalf("sync %v succeeded", args)
		}
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(b.path), "missing.db")); err == nil {
		t.Fatal("sync created a missing database")
	}
}
