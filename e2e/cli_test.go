package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/charmbracelet/keygen"
)

// charmVersion is the charm CLI the end-to-end test drives.
const charmVersion = "v0.12.6"

// charmCLI finds the real charm CLI: $CRING_CHARM_BIN, then PATH, else it is
// built once from the Go module proxy into the user cache.
func charmCLI(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CRING_CHARM_BIN"); p != "" {
		return p
	}
	if p, err := exec.LookPath("charm"); err == nil {
		return p
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(cache, "cring-test", "charm-"+charmVersion)
	bin := filepath.Join(dir, "charm")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	cmd := exec.Command("go", "install", "github.com/charmbracelet/charm@"+charmVersion)
	cmd.Env = append(os.Environ(), "GOBIN="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("install charm CLI: %v\n%s", err, out)
	}
	return bin
}

// TestCharmCLI drives the real charm CLI through the proxy: fs cp, cat, ls,
// rm and kv set/get, then again with the SSH primary node stopped.
func TestCharmCLI(t *testing.T) {
	bin := charmCLI(t)
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2})
	home := t.TempDir()
	data := filepath.Join(home, "charm")
	kp, err := keygen.New(filepath.Join(data, "127.0.0.1", "charm_ed25519"), keygen.WithKeyType(keygen.Ed25519), keygen.WithWrite())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tc.dc.SeedUser(kp.RawAuthorizedKey()); err != nil {
		t.Fatal(err)
	}
	_, sshPort, _ := splitPort(tc.sshAddr)
	_, httpPort, _ := splitPort(tc.httpAddr)
	env := append(os.Environ(),
		"HOME="+home,
		"CHARM_HOST=127.0.0.1",
		fmt.Sprintf("CHARM_SSH_PORT=%d", sshPort),
		fmt.Sprintf("CHARM_HTTP_PORT=%d", httpPort),
		"CHARM_DATA_DIR="+data,
	)
	charm := func(args ...string) (string, error) {
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		cmd.Dir = home
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	must := func(args ...string) string {
		t.Helper()
		out, err := charm(args...)
		if err != nil {
			t.Fatalf("charm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	local := filepath.Join(home, "notes.txt")
	if err := os.WriteFile(local, []byte("ring ring\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	must("fs", "cp", local, "charm:docs/notes.txt")
	if out := must("fs", "cat", "charm:docs/notes.txt"); out != "ring ring\n" {
		t.Fatalf("fs cat = %q", out)
	}
	if out := must("fs", "ls", "charm:docs"); !strings.Contains(out, "notes.txt") {
		t.Fatalf("fs ls = %q", out)
	}
	must("kv", "set", "color", "violet")
	if out := must("kv", "get", "color"); strings.TrimSpace(out) != "violet" {
		t.Fatalf("kv get = %q", out)
	}

	// Node 1 is the SSH primary: every CLI call logs in anew over SSH.
	tc.stop(0)
	tc.waitReady(2)
	if out := must("fs", "cat", "charm:docs/notes.txt"); out != "ring ring\n" {
		t.Fatalf("fs cat with node1 down = %q", out)
	}
	must("fs", "cp", local, "charm:docs/second.txt")
	if out := must("fs", "ls", "charm:docs"); !strings.Contains(out, "second.txt") || !strings.Contains(out, "notes.txt") {
		t.Fatalf("fs ls with node1 down = %q", out)
	}
	must("kv", "set", "shape", "ring")
	if out := must("kv", "get", "color"); strings.TrimSpace(out) != "violet" {
		t.Fatalf("kv get with node1 down = %q", out)
	}
	// Every login above went to node2: each is an SSH failover, although
	// the proxy didn't even dial node1 (known down).
	if n := metricValue(t, tc.admin, "cring_ssh_failovers_total"); n < 4 {
		t.Fatalf("cring_ssh_failovers_total = %v after 4 logins with node1 down", n)
	}
	tc.start(0)
	tc.waitReady(3)

	must("fs", "rm", "charm:docs/notes.txt")
	if out, err := charm("fs", "cat", "charm:docs/notes.txt"); err == nil {
		t.Fatalf("fs cat after rm succeeded: %q", out)
	}
	if out := must("fs", "ls", "charm:docs"); strings.Contains(out, "notes.txt") {
		t.Fatalf("fs ls after rm still lists notes.txt: %q", out)
	}
}

// metricValue scrapes one unlabeled metric from a proxy's admin address.
func metricValue(t *testing.T, admin, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("%s not in the scrape", name)
	return 0
}
