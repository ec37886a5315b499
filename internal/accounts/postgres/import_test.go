package postgres

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/charmbracelet/charm/server/db/sqlite"
	"github.com/cring-dev/cring/internal/accounts"
	"github.com/cring-dev/cring/internal/pgtest"
)

// TestImport: a charm sqlite store made with charm's own code arrives in
// PostgreSQL field for field; importing again adds nothing; a key that
// PostgreSQL gives to another charm ID is a conflict that changes nothing.
func TestImport(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), sqlite.DbName)
	lite := sqlite.NewDB(path)
	t.Cleanup(func() { lite.Close() })
	dated := time.Date(2022, 3, 4, 5, 6, 7, 0, time.UTC)
	a, err := lite.UserForKey("ssh-ed25519 A", true)
	must(t, err)
	_, err = lite.SetUserName(a.CharmID, "alice")
	must(t, err)
	must(t, lite.LinkUserKey(a, "ssh-ed25519 A2"))
	must(t, lite.AddEncryptKeyForPublicKey(a, "ssh-ed25519 A", "ga", "enc-a", nil))
	must(t, lite.AddEncryptKeyForPublicKey(a, "ssh-ed25519 A", "gb", "enc-b", &dated))
	must(t, lite.AddEncryptKeyForPublicKey(a, "ssh-ed25519 A2", "ga", "enc-a-for-a2", nil))
	for range 3 {
		_, err = lite.NextSeq(a, "kv")
		must(t, err)
	}
	b, err := lite.UserForKey("ssh-ed25519 B", true)
	must(t, err)
	_, err = lite.GetSeq(b, "kv")
	must(t, err)
	must(t, lite.PostNews("hello", "world", []string{"server"}))

	pg := openPG(t, pgtest.Start(t))
	snap, err := accounts.ReadSQLite(ctx, path)
	must(t, err)
	ch, conflicts, err := pg.Import(ctx, path, snap, false)
	must(t, err)
	want := accounts.Changes{Store: "postgres", Users: 2, Keys: 3, EncryptKeys: 3, Seqs: 2, News: 1}
	if ch != want || conflicts != nil {
		t.Fatalf("import: %+v %v, want %+v", ch, conflicts, want)
	}
	keys := []string{"ssh-ed25519 A", "ssh-ed25519 A2", "ssh-ed25519 B"}
	if err := accounts.Compare(lite, pg, keys, []string{"kv", "never"}); err != nil {
		t.Fatal(err)
	}
	ln, _ := lite.GetNewsList("server", 0)
	pn, _ := pg.GetNewsList("server", 0)
	if len(ln) != 1 || len(pn) != 1 || ln[0].Subject != pn[0].Subject || !ln[0].CreatedAt.Equal(pn[0].CreatedAt) {
		t.Fatalf("news: %+v vs %+v", ln, pn)
	}
	if n, _ := pg.UserNameCount(); n != 1 {
		t.Fatalf("%d names", n)
	}

	// Again: nothing new, even after the nodes used the accounts (a seq
	// moved ahead in PostgreSQL is kept, not lowered).
	pa, err := pg.UserForKey("ssh-ed25519 A", false)
	must(t, err)
	_, err = pg.NextSeq(pa, "kv")
	must(t, err)
	snap, err = accounts.ReadSQLite(ctx, path)
	must(t, err)
	ch, _, err = pg.Import(ctx, path, snap, false)
	must(t, err)
	if ch.Total() != 0 {
		t.Fatalf("second import changed %+v", ch)
	}
	if v, _ := pg.GetSeq(pa, "kv"); v != 3 {
		t.Fatalf("kv seq %d after re-import, want 3", v)
	}

	// A key the cluster already gave to someone else: refuse, change nothing.
	c, err := lite.UserForKey("ssh-ed25519 C", true)
	must(t, err)
	_, err = lite.NextSeq(c, "kv")
	must(t, err)
	if _, err := pg.UserForKey("ssh-ed25519 C", true); err != nil {
		t.Fatal(err)
	}
	before, _ := pg.UserCount()
	snap, err = accounts.ReadSQLite(ctx, path)
	must(t, err)
	_, conflicts, err = pg.Import(ctx, path, snap, false)
	if !errors.Is(err, accounts.ErrConflicts) || len(conflicts) != 1 || conflicts[0].Kind != "key" {
		t.Fatalf("import with a split key: %v %+v", err, conflicts)
	}
	if after, _ := pg.UserCount(); after != before {
		t.Fatalf("a refused import changed users: %d → %d", before, after)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
