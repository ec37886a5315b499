package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/testwait"
)

// TestNodeStockMode: without --accounts `cring node` is `charm serve`: it
// creates the server key and charm's sqlite under CHARM_SERVER_DATA_DIR,
// serves a real client, stops cleanly on SIGTERM and comes back with the
// same key and the same accounts.
func TestNodeStockMode(t *testing.T) {
	bin := cringBinary(t)
	data := filepath.Join(t.TempDir(), "data")
	ports, err := devcluster.FreePorts("127.0.0.1", 3)
	if err != nil {
		t.Fatal(err)
	}
	n := &pgNode{name: "stock", dataDir: data, http: ports[0], ssh: ports[1], health: ports[2]}
	run := func() *exec.Cmd {
		// No metadata endpoint: its default port is the same for every
		// node, and other tests' nodes may hold it.
		cmd := exec.Command(bin, "node", "--ssh-port", fmt.Sprint(n.ssh), "--shutdown-timeout", "2s", "--meta-port", "0")
		cmd.Env = append(os.Environ(), "CHARM_SERVER_DATA_DIR="+data, "CHARM_SERVER_BIND_ADDRESS=127.0.0.1",
			"CHARM_SERVER_HOST=127.0.0.1", fmt.Sprintf("CHARM_SERVER_HTTP_PORT=%d", n.http),
			fmt.Sprintf("CHARM_SERVER_HEALTH_PORT=%d", n.health), "CRING_ACCOUNTS=")
		out := prefixWriter{t: t, prefix: "stock: "}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		testwait.For(t, 30*time.Second, "the condition", func() bool { return healthy(n.healthURL()) })
		return cmd
	}
	stop := func(cmd *exec.Cmd) {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	}

	cmd := run()
	key, err := os.ReadFile(filepath.Join(data, ".ssh", "charm_server_ed25519.pub"))
	if err != nil {
		t.Fatalf("server key: %v", err)
	}
	if _, err := os.Stat(filepath.Join(data, "db", "charm_sqlite.db")); err != nil {
		t.Fatalf("sqlite accounts: %v", err)
	}
	dir := t.TempDir()
	first, err := clientAt(t, dir, n.ssh, n.http).ID()
	if err != nil {
		t.Fatal(err)
	}
	stop(cmd)

	cmd = run()
	defer stop(cmd)
	again, _ := os.ReadFile(filepath.Join(data, ".ssh", "charm_server_ed25519.pub"))
	if !bytes.Equal(key, again) {
		t.Fatal("server key changed across a restart")
	}
	if id, err := clientAt(t, dir, n.ssh, n.http).ID(); err != nil || id != first {
		t.Fatalf("after restart: %q %v, want %s", id, err, first)
	}

	// Bad input: one line, exit 2; a taken port: an error, not a half-up node.
	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"node", "--accounts", "mysql://x"}, 2, "want a postgres:// URL"},
		{[]string{"node", "--ssh-port", fmt.Sprint(n.ssh)}, 1, "address already in use"},
	} {
		c := exec.Command(bin, tt.args...)
		c.Env = append(os.Environ(), "CHARM_SERVER_DATA_DIR="+t.TempDir(), "CHARM_SERVER_BIND_ADDRESS=127.0.0.1",
			fmt.Sprintf("CHARM_SERVER_HTTP_PORT=%d", n.http), fmt.Sprintf("CHARM_SERVER_HEALTH_PORT=%d", n.health))
		var stderr strings.Builder
		c.Stderr = &stderr
		err := c.Run()
		code := -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		if code != tt.code || !strings.Contains(stderr.String(), tt.want) {
			t.Fatalf("%v: exit %d, stderr %q; want %d and %q", tt.args, code, stderr.String(), tt.code, tt.want)
		}
	}
}

func healthy(u string) bool {
	resp, err := http.Get(u)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}
