package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/accounts"
	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/testwait"
)

// TestClosedStockNodes: stock `charm serve` nodes closed with charm's own
// <data>/.ssh/authorized_keys admit a key only after `cring accounts add
// --sqlite … --authorized-keys`, which writes one account (one charm ID)
// into every node's database and the key into every node's file, while the
// nodes run. A key never added still gets in nowhere and creates nothing.
func TestClosedStockNodes(t *testing.T) {
	bin := charmCLI(t)
	type stock struct {
		data           string
		ssh, http, hea int
	}
	var nodes []stock
	for i := range 2 {
		ports, err := devcluster.FreePorts("127.0.0.1", 4)
		if err != nil {
			t.Fatal(err)
		}
		n := stock{data: filepath.Join(t.TempDir(), fmt.Sprintf("node%d", i+1)), ssh: ports[0], http: ports[1], hea: ports[2]}
		// The file must exist when charm starts: that is what closes it.
		if err := os.MkdirAll(filepath.Join(n.data, ".ssh"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(n.data, ".ssh", "authorized_keys"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "serve")
		cmd.Env = append(os.Environ(), "CHARM_SERVER_BIND_ADDRESS=127.0.0.1", "CHARM_SERVER_HOST=127.0.0.1",
			fmt.Sprintf("CHARM_SERVER_SSH_PORT=%d", n.ssh), fmt.Sprintf("CHARM_SERVER_HTTP_PORT=%d", n.http),
			fmt.Sprintf("CHARM_SERVER_HEALTH_PORT=%d", n.hea), fmt.Sprintf("CHARM_SERVER_STATS_PORT=%d", ports[3]),
			"CHARM_SERVER_DATA_DIR="+n.data)
		out := prefixWriter{t: t, prefix: fmt.Sprintf("stock%d: ", i+1)}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		t.Cleanup(func() {
			_ = cmd.Process.Signal(syscall.SIGKILL)
			<-done
		})
		testwait.For(t, 30*time.Second, "the condition", func() bool {
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", n.hea))
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
		nodes = append(nodes, n)
	}
	dbs := []string{filepath.Join(nodes[0].data, "db", "charm_sqlite.db"), filepath.Join(nodes[1].data, "db", "charm_sqlite.db")}

	dev := newCharmDevice(t, nodes[0].ssh, nodes[0].http)
	for _, n := range nodes {
		if out, err := dev.at(n.ssh, n.http).run("id"); err == nil {
			t.Fatalf("a stock node closed by authorized_keys let an unknown key in: %s", out)
		} else {
			t.Logf("unknown key on a closed stock node: %s", strings.TrimSpace(out))
		}
	}

	out, errOut, code := runCring(t, "accounts", "add", dev.pubFile, "--name", "bob", "--sqlite", strings.Join(dbs, ","), "--authorized-keys", "--json")
	if code != 0 {
		t.Fatalf("accounts add --sqlite: %d %s %s", code, out, errOut)
	}
	var rep accounts.SQLiteAddReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil || !rep.Created || len(rep.Files) != 2 {
		t.Fatalf("accounts add --sqlite: %+v %v", rep, err)
	}
	for _, n := range nodes {
		if id := strings.TrimSpace(dev.at(n.ssh, n.http).must("id")); id != rep.CharmID {
			t.Fatalf("charm id on a stock node = %q, want %s", id, rep.CharmID)
		}
	}
	// Again: nothing changes, in the databases or the files.
	before := sums(t, append(dbs, accounts.AuthorizedKeysFor(dbs[0]), accounts.AuthorizedKeysFor(dbs[1]))...)
	if _, errOut, code := runCring(t, "accounts", "add", dev.pubFile, "--sqlite", strings.Join(dbs, ","), "--authorized-keys"); code != 0 {
		t.Fatalf("second add: %d %s", code, errOut)
	}
	if after := sums(t, append(dbs, accounts.AuthorizedKeysFor(dbs[0]), accounts.AuthorizedKeysFor(dbs[1]))...); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatal("adding the same key again changed a file")
	}

	stranger := newCharmDevice(t, nodes[1].ssh, nodes[1].http)
	if out, err := stranger.run("id"); err == nil {
		t.Fatalf("a key never added got in: %s", out)
	}
	for _, db := range dbs {
		snap, err := accounts.ReadSQLite(t.Context(), db)
		if err != nil || len(snap.Users) != 1 || snap.Users[0].CharmID != rep.CharmID || snap.Users[0].Name != "bob" {
			t.Fatalf("%s holds %+v %v, want only bob", db, snap, err)
		}
	}
}
