package postgres

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"testing"

	charm "github.com/charmbracelet/charm/proto"
	"github.com/cring-dev/cring/internal/accounts"
	"github.com/cring-dev/cring/internal/pgtest"
	gossh "golang.org/x/crypto/ssh"
)

// newKey is a fresh ed25519 public key in charm's stored form.
func newKey(t *testing.T) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := gossh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return accounts.FormatKey(pk)
}

// TestAdminAccounts: add, list, look up and remove accounts the way a
// closed server's administrator does, against a real PostgreSQL; every
// refusal changes nothing.
func TestAdminAccounts(t *testing.T) {
	ctx := context.Background()
	d := openPG(t, pgtest.Start(t))
	k1, k2, k3, k4 := newKey(t), newKey(t), newKey(t), newKey(t)

	alice, _, err := d.AddAccount(ctx, accounts.NewAccount{Name: "alice", Keys: []string{k1}})
	if err != nil || !alice.Created || len(alice.Added) != 1 || !alice.Named {
		t.Fatalf("add alice: %+v %v", alice, err)
	}
	// What a login on any node sees: the key, under that charm ID.
	if u, err := d.UserForKey(k1, false); err != nil || u.CharmID != alice.CharmID || u.Name != "alice" {
		t.Fatalf("alice's key logs in as %+v %v", u, err)
	}

	for _, tc := range []struct {
		name      string
		na        accounts.NewAccount
		wantErr   error
		conflicts int
		created   bool
		added     int
		charmID   string // "" = any
	}{
		{name: "again: nothing changes", na: accounts.NewAccount{Keys: []string{k1}}, charmID: alice.CharmID},
		{name: "again with the same name, other case", na: accounts.NewAccount{Name: "ALICE", Keys: []string{k1}}, charmID: alice.CharmID},
		{name: "a second device", na: accounts.NewAccount{CharmID: alice.CharmID, Keys: []string{k1, k2}}, added: 1, charmID: alice.CharmID},
		{name: "unknown charm ID", na: accounts.NewAccount{CharmID: "no-such-id", Keys: []string{k3}}, wantErr: accounts.ErrNoAccount},
		{name: "name taken (ASCII case ignored)", na: accounts.NewAccount{Name: "Alice", Keys: []string{k3}}, wantErr: accounts.ErrConflicts, conflicts: 1},
		{name: "alice's key in a new account", na: accounts.NewAccount{Keys: []string{k3, k1}}, wantErr: accounts.ErrConflicts, conflicts: 1},
		{name: "renaming alice", na: accounts.NewAccount{CharmID: alice.CharmID, Name: "bob", Keys: []string{k1}}, wantErr: accounts.ErrConflicts, conflicts: 1},
		{name: "bob", na: accounts.NewAccount{Name: "bob", Keys: []string{k3}}, created: true, added: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, err := d.UserCount()
			if err != nil {
				t.Fatal(err)
			}
			res, conflicts, err := d.AddAccount(ctx, tc.na)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if len(conflicts) != tc.conflicts {
				t.Fatalf("conflicts = %+v, want %d", conflicts, tc.conflicts)
			}
			after, _ := d.UserCount()
			if tc.wantErr != nil {
				if after != before {
					t.Fatalf("a refused add changed the user count: %d → %d", before, after)
				}
				if _, err := d.UserForKey(k4, false); !errors.Is(err, charm.ErrMissingUser) {
					t.Fatal("a key never added logs in")
				}
				return
			}
			if res.Created != tc.created || len(res.Added) != tc.added || (tc.charmID != "" && res.CharmID != tc.charmID) {
				t.Fatalf("result %+v", res)
			}
			if want := before + map[bool]int{true: 1}[tc.created]; after != want {
				t.Fatalf("users %d, want %d", after, want)
			}
		})
	}

	list, err := d.Accounts(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("list = %+v %v", list, err)
	}
	if list[0].CharmID != alice.CharmID || list[0].Name != "alice" || len(list[0].Keys) != 2 || list[0].Bytes != -1 {
		t.Fatalf("alice listed as %+v", list[0])
	}
	if list[1].Name != "bob" || len(list[1].Keys) != 1 || list[1].Keys[0].Key != k3 {
		t.Fatalf("bob listed as %+v", list[1])
	}

	// Lookups by charm ID, by key, by fingerprint.
	for _, target := range []string{alice.CharmID, k2, accounts.Fingerprint(k2)} {
		a, key, err := d.Lookup(ctx, target)
		if err != nil || a.CharmID != alice.CharmID {
			t.Fatalf("lookup %s: %+v %v", target, a, err)
		}
		if target != alice.CharmID && key != k2 {
			t.Fatalf("lookup %s matched key %q", target, key)
		}
	}
	if _, _, err := d.Lookup(ctx, k4); !errors.Is(err, accounts.ErrNoKey) {
		t.Fatalf("lookup of a key nobody has: %v", err)
	}

	// Removing a key: the key stops logging in, the account keeps the other.
	if err := d.RemoveKey(ctx, alice.CharmID, k2); err != nil {
		t.Fatal(err)
	}
	if _, err := d.UserForKey(k2, false); !errors.Is(err, charm.ErrMissingUser) {
		t.Fatalf("removed key still logs in: %v", err)
	}
	if err := d.RemoveKey(ctx, alice.CharmID, k1); !errors.Is(err, accounts.ErrLastKey) {
		t.Fatalf("removing the last key: %v, want ErrLastKey", err)
	}
	if _, err := d.UserForKey(k1, false); err != nil {
		t.Fatalf("the last key was refused yet removed: %v", err)
	}
	if err := d.RemoveKey(ctx, alice.CharmID, k3); !errors.Is(err, accounts.ErrNoKey) {
		t.Fatalf("removing bob's key from alice: %v", err)
	}

	// Removing the account: its user row is gone, so every node's HTTP
	// lookup (GetUserWithID) fails too.
	if err := d.RemoveAccount(ctx, alice.CharmID); err != nil {
		t.Fatal(err)
	}
	if _, err := d.GetUserWithID(alice.CharmID); !errors.Is(err, charm.ErrMissingUser) {
		t.Fatalf("removed account still found: %v", err)
	}
	if err := d.RemoveAccount(ctx, alice.CharmID); !errors.Is(err, accounts.ErrNoAccount) {
		t.Fatalf("removing it again: %v", err)
	}
	if list, _ := d.Accounts(ctx); len(list) != 1 || list[0].Name != "bob" {
		t.Fatalf("after removal: %+v", list)
	}
}
