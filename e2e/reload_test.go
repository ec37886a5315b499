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

	"github.com/charmbracelet/keygen"
	"github.com/cring-dev/cring/internal/testwait"
	"github.com/cring-dev/cring/internal/token"
)

// TestReloadAddsNode: a running `cring serve --config` picks up a 4th node
// when the file changes and drops it again on SIGHUP after the file is
// reverted, without a restart; a write after the change lands by the new ring.
func TestReloadAddsNode(t *testing.T) {
	bin := cringBinary(t)
	dc, httpAddr, sshAddr, admin := localNodes(t, 4)
	publicURL := dc.PublicURL
	yaml := func(n int) []byte {
		var b strings.Builder
		fmt.Fprintf(&b, "public-url: %s\nreplicas: 3\nnodes:\n", publicURL)
		for _, nd := range dc.Nodes[:n] {
			fmt.Fprintf(&b, "  - {name: %s, url: %q, ssh: %q, health: %q}\n", nd.Name, nd.HTTPURL(), nd.SSHAddr(), nd.HealthURL())
		}
		return []byte(b.String())
	}
	cfgPath := filepath.Join(t.TempDir(), "cring.yaml")
	if err := os.WriteFile(cfgPath, yaml(3), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", "--config", cfgPath, "--address", httpAddr,
		"--ssh-proxy-address", sshAddr, "--admin-address", admin,
		"--data-dir", t.TempDir(), "--health-interval", "200ms")
	cmd.Stderr = testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	nodes := func() int {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err != nil {
			return -1
		}
		defer resp.Body.Close()
		var st struct {
			Healthy int `json:"healthy"`
			Nodes   []any
		}
		_ = json.NewDecoder(resp.Body).Decode(&st)
		if st.Healthy != len(st.Nodes) {
			return -1
		}
		return len(st.Nodes)
	}
	testwait.For(t, 10*time.Second, "3 nodes, all healthy", func() bool { return nodes() == 3 })

	kp, _ := keygen.New(filepath.Join(t.TempDir(), "c"), keygen.WithKeyType(keygen.Ed25519))
	id, err := dc.SeedUser(kp.RawAuthorizedKey())
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := token.LoadSigner(dc.KeyPath)
	jwt, _ := signer.Sign(id, publicURL, time.Hour)

	// The file changes: the proxy reloads within a couple of seconds. It
	// watches the mtime, which a coarse filesystem clock may leave equal
	// within a second: the new file gets one of its own, and replaces the
	// old one whole, so the proxy never sees new bytes with the old mtime.
	st, err := os.Stat(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	next := cfgPath + ".new"
	if err := os.WriteFile(next, yaml(4), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(next, time.Time{}, st.ModTime().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(next, cfgPath); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, 10*time.Second, "4 nodes, all healthy, after the file changed", func() bool { return nodes() == 4 })
	// New writes follow the 4-node ring: some land on node4.
	landed := 0
	for i := range 12 {
		name := fmt.Sprintf("after-%d", i)
		upload(t, httpAddr, jwt, name, 512)
		testwait.For(t, 5*time.Second, name+" on 3 nodes", func() bool {
			n := 0
			for _, nd := range dc.Nodes {
				if _, err := os.Stat(nd.FilePath(id, name)); err == nil {
					n++
				}
			}
			return n == 3
		})
		if _, err := os.Stat(dc.Nodes[3].FilePath(id, name)); err == nil {
			landed++
		}
	}
	if landed == 0 {
		t.Fatal("no write reached node4 after the reload")
	}
	// Reverted file + SIGHUP: back to 3 nodes.
	if err := os.WriteFile(cfgPath, yaml(3), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Process.Signal(syscall.SIGHUP)
	testwait.For(t, 10*time.Second, "3 nodes, all healthy, after SIGHUP", func() bool { return nodes() == 3 })
}
