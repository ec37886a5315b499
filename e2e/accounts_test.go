package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/charmbracelet/charm/client"
	charm "github.com/charmbracelet/charm/proto"
	"github.com/cring-dev/cring/internal/accounts"
	"github.com/cring-dev/cring/internal/accounts/postgres"
	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/pgtest"
)

// realUser is a charm client talking straight to one stock node: its first
// login creates the account there.
type realUser struct {
	cc   *client.Client
	auth *charm.Auth
}

func loginAt(t *testing.T, n *devcluster.Node, dataDir string) realUser {
	t.Helper()
	cc := clientAt(t, dataDir, n.SSHPort, n.HTTPPort)
	auth, err := cc.Auth()
	if err != nil {
		t.Fatalf("login at %s: %v", n.Name, err)
	}
	return realUser{cc: cc, auth: auth}
}

func (u realUser) bumpSeq(t *testing.T, name string, times int) uint64 {
	t.Helper()
	var m charm.SeqMsg
	for range times {
		if err := u.cc.AuthedJSONRequest("POST", "/v1/seq/"+name, nil, &m); err != nil {
			t.Fatalf("seq: %v", err)
		}
	}
	return m.Seq
}

func runCring(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(cringBinary(t), args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code = 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// TestAccountsImportRealServer: the sqlite of a real charm server, with
// accounts made through real SSH logins, names, encrypt keys (the client
// creates one on first use) and seqs, imported by `cring accounts import`,
// answers identically from PostgreSQL, field by field through charm's own
// db.DB; a second import adds nothing.
func TestAccountsImportRealServer(t *testing.T) {
	dc, err := devcluster.New(t.TempDir(), devcluster.Options{Nodes: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dc.Close() })
	if err := dc.StartAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	n := dc.Nodes[0]
	var keys []string
	for i := range 3 {
		u := loginAt(t, n, t.TempDir())
		if i == 0 {
			if _, err := u.cc.SetName("alice"); err != nil {
				t.Fatal(err)
			}
		}
		if i < 2 {
			if _, err := u.cc.EncryptKeys(); err != nil { // creates and stores one
				t.Fatal(err)
			}
		}
		u.bumpSeq(t, "kv", i+1)
		keys = append(keys, u.auth.PublicKey)
	}
	if err := dc.Stop(n); err != nil {
		t.Fatal(err)
	}

	url := pgtest.Start(t)
	out, errOut, code := runCring(t, "accounts", "import", "--from-sqlite", n.DBPath(), "--to", url)
	if code != 0 {
		t.Fatalf("import: exit %d\n%s%s", code, out, errOut)
	}
	t.Log(out)
	if !strings.Contains(out, "3 users") || !strings.Contains(out, "2 encrypt keys") {
		t.Fatalf("import report: %s", out)
	}

	lite, err := accounts.OpenSQLite(n.DBPath())
	if err != nil {
		t.Fatal(err)
	}
	defer lite.Close()
	pg, err := postgres.Open(context.Background(), url, postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close()
	if err := accounts.Compare(lite, pg, keys, []string{"kv", "unused"}); err != nil {
		t.Fatal(err)
	}
	if u, err := pg.GetUserWithName("alice"); err != nil || u.PublicKey != nil && u.CharmID == "" {
		t.Fatalf("alice in PostgreSQL: %v %v", u, err)
	}

	out, errOut, code = runCring(t, "accounts", "import", "--from-sqlite", n.DBPath(), "--to", url, "--json")
	if code != 0 {
		t.Fatalf("second import: exit %d\n%s%s", code, out, errOut)
	}
	var rep struct {
		Source   accounts.Changes `json:"source"`
		Imported accounts.Changes `json:"imported"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if rep.Imported.Total() != 0 || rep.Source.Users != 3 {
		t.Fatalf("second import: %s", out)
	}
	if n, _ := pg.UserCount(); n != 3 {
		t.Fatalf("%d users after importing twice", n)
	}
}

func sums(t *testing.T, paths ...string) [][32]byte {
	var out [][32]byte
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, sha256.Sum256(b))
	}
	return out
}

// TestAccountsSyncCLI: `cring accounts sync` on two real stock nodes'
// databases gives each node the other's users (they log in there with the
// same charm ID, seqs and encrypt keys); a second run changes nothing; a
// key that got two charm IDs (first login on each node) is refused with
// exit status 2, both IDs listed, nothing changed.
func TestAccountsSyncCLI(t *testing.T) {
	ctx := context.Background()
	dc, err := devcluster.New(t.TempDir(), devcluster.Options{Nodes: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dc.Close() })
	if err := dc.StartAll(ctx); err != nil {
		t.Fatal(err)
	}
	n1, n2 := dc.Nodes[0], dc.Nodes[1]
	yDir := t.TempDir()
	y := loginAt(t, n1, yDir)
	yKeys, err := y.cc.EncryptKeys()
	if err != nil {
		t.Fatal(err)
	}
	y.bumpSeq(t, "kv", 3)
	z := loginAt(t, n2, t.TempDir())
	if _, err := z.cc.EncryptKeys(); err != nil {
		t.Fatal(err)
	}
	stopAll := func() {
		for _, n := range dc.Nodes {
			if err := dc.Stop(n); err != nil {
				t.Fatal(err)
			}
		}
	}
	stopAll()

	out, errOut, code := runCring(t, "accounts", "sync", n1.DBPath(), n2.DBPath())
	if code != 0 {
		t.Fatalf("sync: exit %d\n%s%s", code, out, errOut)
	}
	t.Log(out)
	out, _, code = runCring(t, "accounts", "sync", n1.DBPath(), n2.DBPath())
	if code != 0 || !strings.Contains(out, "already in sync") {
		t.Fatalf("second sync: exit %d\n%s", code, out)
	}

	// y, who only ever used node1, is the same person on node2 now.
	if err := dc.Start(ctx, n2); err != nil {
		t.Fatal(err)
	}
	y2 := loginAt(t, n2, yDir)
	if y2.auth.ID != y.auth.ID {
		t.Fatalf("y on node2: %s, want %s", y2.auth.ID, y.auth.ID)
	}
	if len(y2.auth.EncryptKeys) != 1 || y2.auth.EncryptKeys[0].ID != yKeys[0].ID {
		t.Fatalf("y's encrypt keys on node2: %+v", y2.auth.EncryptKeys)
	}
	var m charm.SeqMsg
	if err := y2.cc.AuthedJSONRequest("GET", "/v1/seq/kv", nil, &m); err != nil || m.Seq != 2 {
		t.Fatalf("y's seq on node2: %d %v, want 2", m.Seq, err)
	}

	// One key, first login on each node: two charm IDs for one person.
	if err := dc.Start(ctx, n1); err != nil {
		t.Fatal(err)
	}
	splitDir := t.TempDir()
	s1 := loginAt(t, n1, splitDir)
	s2 := loginAt(t, n2, splitDir)
	if s1.auth.ID == s2.auth.ID {
		t.Fatal("stock nodes agreed on a new user's charm ID")
	}
	stopAll()
	before := sums(t, n1.DBPath(), n2.DBPath())
	out, errOut, code = runCring(t, "accounts", "sync", n1.DBPath(), n2.DBPath())
	if code != 2 {
		t.Fatalf("sync with a split identity: exit %d, want 2\n%s%s", code, out, errOut)
	}
	for _, want := range []string{s1.auth.ID, s2.auth.ID, "belongs to 2 charm IDs", "nothing changed"} {
		if !strings.Contains(errOut, want) {
			t.Fatalf("stderr lacks %q:\n%s", want, errOut)
		}
	}
	t.Log(errOut)
	after := sums(t, n1.DBPath(), n2.DBPath())
	if before[0] != after[0] || before[1] != after[1] {
		t.Fatal("a refused sync changed a database")
	}
}
