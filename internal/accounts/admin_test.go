package accounts

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	charm "github.com/charmbracelet/charm/proto"
	gossh "golang.org/x/crypto/ssh"
)

func genKey(t *testing.T) gossh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := gossh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pk
}

func TestParseKeys(t *testing.T) {
	a, b := genKey(t), genKey(t)
	line := func(pk gossh.PublicKey) string { return strings.TrimSpace(string(gossh.MarshalAuthorizedKey(pk))) }
	for _, tc := range []struct {
		name, in string
		want     []string
		err      string
	}{
		{name: "a .pub file", in: line(a) + " alice@laptop\n", want: []string{FormatKey(a)}},
		{name: "authorized_keys with comments and options", in: "# devices\n\n" + line(a) + "\nno-pty " + line(b) + " bob\n", want: []string{FormatKey(a), FormatKey(b)}},
		{name: "empty", in: "\n# nothing\n", err: "no public key"},
		{name: "garbage", in: "hello world\n", err: "k.pub:1: not a public key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseKeys(strings.NewReader(tc.in), "k.pub")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Fatalf("got %q %v, want %q", got, err, tc.want)
			}
		})
	}
	// charm's own form of a session's key (server.keyText): "<type> <base64>".
	if k := FormatKey(a); strings.Count(k, " ") != 1 || !strings.HasPrefix(k, "ssh-ed25519 ") {
		t.Fatalf("FormatKey = %q", k)
	}
	if !MatchKey(FormatKey(a), gossh.FingerprintSHA256(a)) || MatchKey(FormatKey(a), gossh.FingerprintSHA256(b)) {
		t.Fatal("MatchKey by fingerprint")
	}
}

// TestAddSQLite: an account admitted into stock nodes' sqlite files appears
// in every one with one charm ID, as charm's own store reads it; running it
// again changes nothing; a key or name another charm ID has anywhere is a
// conflict and nothing changes.
func TestAddSQLite(t *testing.T) {
	ctx := context.Background()
	s1, s2 := newStore(t, "n1.db"), newStore(t, "n2.db")
	paths := []string{s1.path, s2.path}
	k1, k2, other := FormatKey(genKey(t)), FormatKey(genKey(t)), FormatKey(genKey(t))
	s2.seed(t, "someone-else", other)

	rep, err := AddSQLite(ctx, paths, NewAccount{Name: "alice", Keys: []string{k1}}, false)
	if err != nil || !rep.Created || len(rep.Added) != 1 {
		t.Fatalf("add: %+v %v", rep, err)
	}
	for _, s := range []*store{s1, s2} {
		u := s.user(t, k1)
		if u.CharmID != rep.CharmID || u.Name != "alice" {
			t.Fatalf("%s: %+v, want %s alice", s.path, u, rep.CharmID)
		}
	}
	// The other account stays where it was: add writes only its account.
	if _, err := s1.db.UserForKey(other, false); !errors.Is(err, charm.ErrMissingUser) {
		t.Fatalf("add copied an unrelated account: %v", err)
	}

	again, err := AddSQLite(ctx, paths, NewAccount{Keys: []string{k1}}, false)
	if err != nil || again.Created || again.CharmID != rep.CharmID || len(again.Added) != 0 {
		t.Fatalf("again: %+v %v", again, err)
	}
	for _, f := range again.Files {
		if f.Total() != 0 {
			t.Fatalf("again changed %+v", f)
		}
	}
	dev, err := AddSQLite(ctx, paths, NewAccount{CharmID: rep.CharmID, Keys: []string{k2}}, false)
	if err != nil || len(dev.Added) != 1 {
		t.Fatalf("second device: %+v %v", dev, err)
	}
	if u := s1.user(t, k2); u.CharmID != rep.CharmID {
		t.Fatalf("second device is %s", u.CharmID)
	}

	for _, tc := range []struct {
		name string
		na   NewAccount
		want error
	}{
		{"a key of another account", NewAccount{Keys: []string{FormatKey(genKey(t)), other}}, ErrConflicts},
		{"a name another account has", NewAccount{Name: "ALICE", Keys: []string{FormatKey(genKey(t))}}, ErrConflicts},
		{"an unknown charm ID", NewAccount{CharmID: "nope", Keys: []string{FormatKey(genKey(t))}}, ErrNoAccount},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := sums(t, paths...)
			if _, err := AddSQLite(ctx, paths, tc.na, false); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if after := sums(t, paths...); after != before {
				t.Fatal("a refused add changed a file")
			}
		})
	}
}

// sums is the files' contents, hashed, to see that nothing changed.
func sums(t *testing.T, paths ...string) string {
	t.Helper()
	var out []string
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%x", sha256.Sum256(b)))
	}
	return strings.Join(out, ",")
}

func TestAppendAuthorizedKeys(t *testing.T) {
	a, b := genKey(t), genKey(t)
	dbPath := filepath.Join(t.TempDir(), "data", "db", "charm_sqlite.db")
	p := AuthorizedKeysFor(dbPath)
	if want := filepath.Join(filepath.Dir(filepath.Dir(dbPath)), ".ssh", "authorized_keys"); p != want {
		t.Fatalf("AuthorizedKeysFor = %s, want %s", p, want)
	}
	for _, step := range []struct {
		keys  []string
		added int
		lines int
	}{
		{[]string{FormatKey(a)}, 1, 1},
		{[]string{FormatKey(a), FormatKey(b)}, 1, 2},
		{[]string{FormatKey(b), FormatKey(a)}, 0, 2},
	} {
		n, err := AppendAuthorizedKeys(p, step.keys)
		if err != nil || n != step.added {
			t.Fatalf("append %d keys: added %d %v, want %d", len(step.keys), n, err, step.added)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := ParseKeys(bytes.NewReader(b), p); err != nil || len(got) != step.lines {
			t.Fatalf("file holds %q %v, want %d keys", got, err, step.lines)
		}
		if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
			t.Fatalf("mode %v", fi.Mode())
		}
	}
}
