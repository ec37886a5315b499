package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/config"
	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/heal"
	"github.com/cring-dev/cring/internal/testwait"
)

// TestNodesOverTLS: three `cring node` processes serve TLS
// (CHARM_SERVER_USE_TLS) with a certificate from a test CA, and everything
// that talks to them does so over https trusting that CA through node-ca:
// the proxy's health checks, key set fetch, reads, writes and listings; the
// healer's hint replay to a node killed during a write, and its deep scan
// through the nodes' metadata endpoints; `cring repair --config` and
// `cring backup verify --url https://node --ca`. Plain HTTP to any node port
// gets nothing, and a proxy or tool without the CA gets certificate errors,
// not data.
func TestNodesOverTLS(t *testing.T) {
	bin := cringBinary(t)
	backupDir := t.TempDir()
	pc := startPGClusterTLS(t, 3, func(c *config.Config) {
		c.Backup = config.Backup{URL: "file://" + backupDir, Mode: "sync"}
	})
	plain := &http.Client{Timeout: 5 * time.Second}
	for _, n := range pc.nodes {
		for _, u := range []string{n.httpURL() + "/v1/public/jwks", n.healthURL(), n.metaURL() + "/v1/cring/meta/x"} {
			if !strings.HasPrefix(u, "https://") {
				t.Fatalf("node URL %s is not https", u)
			}
			if resp, err := plain.Get("http" + strings.TrimPrefix(u, "https")); err == nil {
				resp.Body.Close()
				if resp.StatusCode/100 == 2 || resp.StatusCode == http.StatusUnauthorized {
					t.Fatalf("plain HTTP to %s answered %s", u, resp.Status)
				}
			}
		}
	}

	// A brand-new user through the proxy: its token is checked against the
	// key set the proxy fetched from the nodes over TLS.
	u := pc.newUser(t)
	files := map[string][]byte{"tls/a": randBytes(t, 20<<10), "tls/b": randBytes(t, 3<<10)}
	for name, b := range files {
		u.put(t, name, b)
	}
	for name, b := range files {
		if !bytes.Equal(u.get(t, name), b) {
			t.Fatalf("%s read back differs", name)
		}
	}
	if got := u.ls(t, "tls"); !slices.Equal(slices.Sorted(slices.Values(got)), []string{"a", "b"}) {
		t.Fatalf("listing tls: %v", got)
	}
	for _, st := range nodeStatuses(t, pc.admin) {
		if !st.Healthy || st.LastError != "" {
			t.Fatalf("node %s over TLS: %+v", st.Name, st)
		}
	}

	// node3 killed: health checks notice, a write lands on the other two,
	// and the healer gives node3 the file when it returns.
	pc.stop(2, syscall.SIGKILL)
	pc.waitReady(2)
	away := randBytes(t, 8<<10)
	u.put(t, "tls/away", away)
	files["tls/away"] = away
	pc.start(2)
	pc.waitReady(3)
	copyOn := func(i int, name string) []byte {
		ep, err := u.fs.EncryptPath(name)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(filepath.Join(pc.nodes[i].dataDir, "files", u.id, ep))
		return b
	}
	want := copyOn(0, "tls/away")
	if want == nil {
		want = copyOn(1, "tls/away")
	}
	testwait.For(t, 60*time.Second, "the condition", func() bool { return want != nil && bytes.Equal(copyOn(2, "tls/away"), want) })

	// A deep scan hashes every copy on its node (the metadata endpoints,
	// over TLS) and finds nothing to repair.
	h := pc.srv.Healer()
	before := h.Status().Totals["hashed_on_node"]
	rep, err := h.Scan(context.Background(), heal.ScanOptions{Deep: true, Users: []string{u.id}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Keys < len(files) || rep.Healthy != rep.Keys || len(rep.Unreachable) > 0 {
		t.Fatalf("deep scan over TLS: %+v", rep)
	}
	if n := h.Status().Totals["hashed_on_node"] - before; n < uint64(3*len(files)) {
		t.Fatalf("copies hashed on their nodes: %d, want every copy of %d keys", n, len(files))
	}

	// A proxy without the CA: every node down with a certificate error.
	ports, err := devcluster.FreePorts("127.0.0.1", 3)
	if err != nil {
		t.Fatal(err)
	}
	untrusting := *pc.cfg
	untrusting.NodeCA, untrusting.Backup, untrusting.ServerKey = "", config.Backup{}, ""
	untrusting.Address = fmt.Sprintf("127.0.0.1:%d", ports[0])
	untrusting.SSHProxyAddress = fmt.Sprintf("127.0.0.1:%d", ports[1])
	untrusting.AdminAddress = fmt.Sprintf("127.0.0.1:%d", ports[2])
	other := serveInProcess(t, &untrusting)
	testwait.For(t, 10*time.Second, "the condition", func() bool {
		sts := nodeStatuses(t, other.admin)
		for _, st := range sts {
			if st.Healthy || !strings.Contains(st.LastError, "certificate") {
				return false
			}
		}
		return len(sts) == 3
	})

	// cring repair, with the proxy's cring.yaml: a copy removed on node1
	// comes back, through its own health checks and healer over TLS.
	ep, err := u.fs.EncryptPath("tls/a")
	if err != nil {
		t.Fatal(err)
	}
	gone := filepath.Join(pc.nodes[0].dataDir, "files", u.id, ep)
	good := copyOn(1, "tls/a")
	if err := os.Remove(gone); err != nil {
		t.Fatal(err)
	}
	yml := func(nodeCA string) string {
		var b strings.Builder
		fmt.Fprintf(&b, "public-url: %s\nserver-key: %s\n", pc.publicURL, pc.keyPath)
		if nodeCA != "" {
			fmt.Fprintf(&b, "node-ca: %s\n", nodeCA)
		}
		b.WriteString("nodes:\n")
		for _, n := range pc.cfg.Nodes {
			fmt.Fprintf(&b, "  - {name: %s, url: %q, ssh: %q, health: %q, meta: %q}\n", n.Name, n.URL, n.SSH, n.Health, n.Meta)
		}
		p := filepath.Join(t.TempDir(), "cring.yaml")
		if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cring := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+filepath.Join(t.TempDir(), "none.pem"), "SSL_CERT_DIR="+t.TempDir())
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), err
	}
	if out, err := cring("repair", "--config", yml(""), "--user", u.id, "--json"); err == nil || !strings.Contains(out, "certificate") {
		t.Fatalf("cring repair without node-ca: %v, want a certificate error\n%s", err, out)
	}
	if b, _ := os.ReadFile(gone); b != nil {
		t.Fatal("cring repair without node-ca wrote to a node it can't verify")
	}
	out, err := cring("repair", "--config", yml(pc.tls.caFile), "--user", u.id, "--json")
	if err != nil {
		t.Fatalf("cring repair over TLS: %v\n%s", err, out)
	}
	var rr heal.Report
	if err := json.Unmarshal([]byte(out), &rr); err != nil {
		t.Fatalf("decode report: %v\n%s", err, out)
	}
	if rr.Repaired != 1 || rr.Failed != 0 || len(rr.Unreachable) > 0 {
		t.Fatalf("cring repair over TLS: %+v", rr)
	}
	if b, _ := os.ReadFile(gone); !bytes.Equal(b, good) {
		t.Fatal("cring repair did not restore node1's copy")
	}

	// cring backup verify reads a node directly over TLS with --ca; the
	// system's roots alone (here: none) refuse the certificate.
	verify := []string{"backup", "verify", "--backup-url", "file://" + backupDir, "--server-key", pc.keyPath,
		"--url", pc.nodes[1].httpURL(), "--user", u.id}
	if out, err := cring(verify...); err == nil || !strings.Contains(out, "certificate") {
		t.Fatalf("backup verify without --ca: %v\n%s", err, out)
	}
	if out, err := cring(append(verify, "--ca", pc.tls.caFile)...); err != nil || !strings.Contains(out, "3 files identical") {
		t.Fatalf("backup verify over TLS: %v\n%s", err, out)
	}
}

// nodeStatus is one node as the proxy's /status shows it.
type nodeStatus struct {
	Name      string `json:"name"`
	Healthy   bool   `json:"healthy"`
	LastError string `json:"last_error"`
}

func nodeStatuses(t *testing.T, admin string) []nodeStatus {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Nodes []nodeStatus `json:"nodes"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("decode /status: %v\n%s", err, b)
	}
	return st.Nodes
}
