package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/pgtest"
	"github.com/cring-dev/cring/internal/testwait"
)

// TestClusterInitBoot: the cluster `cring cluster init` generates by default
// boots as generated and a brand-new user just works, with healing on.
//
// Each "machine" is a directory standing for its root file system: the
// generated files are installed there as README.txt says (every absolute
// install path prefixed with that root), and each unit is started the way
// systemd would: its EnvironmentFile, its StateDirectory, its ExecStart. The
// nodes are three `cring node` processes on one real PostgreSQL, the proxy a
// `cring serve` process; the only addition is the proxy's listen addresses as
// CRING_* variables (a `systemctl edit` drop-in), since all four machines
// share this host's loopback. Then the real charm CLI, with no key yet, runs
// `fs cp` and `kv set` through the proxy, over HTTPS (the public URL is
// https, the certificate from a test CA it trusts through SSL_CERT_FILE); a
// node killed during a write gets the file back from the healer when it
// returns. With --node-tls the nodes serve TLS with the certificates init
// generated, and the proxy reaches them over https trusting the generated
// node CA: health checks, key set, files and the healer's repairs.
func TestClusterInitBoot(t *testing.T) {
	charmBin := charmCLI(t)
	bin := cringBinary(t)
	pgURL := pgtest.Start(t)
	hosts := ciLoopbacks(t, 4) // three nodes, then the proxy
	nodeHosts, proxyHost := hosts[:3], hosts[3]
	publicURL := "https://" + net.JoinHostPort(proxyHost, "35354")
	out := filepath.Join(t.TempDir(), "cluster")
	if b, err := exec.Command(bin, "cluster", "init", "--dir", out, "--hosts", strings.Join(nodeHosts, ","),
		"--public-url", publicURL, "--accounts", pgURL, "--node-tls").CombinedOutput(); err != nil {
		t.Fatalf("cring cluster init: %v\n%s", err, b)
	}

	// This test's own checks of the nodes' health trust the generated CA.
	roots := x509.NewCertPool()
	if b, err := os.ReadFile(filepath.Join(out, "keys", "node-ca.pem")); err != nil || !roots.AppendCertsFromPEM(b) {
		t.Fatalf("keys/node-ca.pem: %v", err)
	}
	nodeClient := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	var nodes []*bootMachine
	for i := range nodeHosts {
		name := "charm" + string(rune('1'+i))
		m := newBootMachine(t, name, bin)
		m.install(filepath.Join(out, "nodes", name, "charm.env"), "/etc/charm/charm.env", 0o600)
		m.install(filepath.Join(out, "nodes", name, "charm.service"), "/etc/systemd/system/charm.service", 0o644)
		m.copyDir(filepath.Join(out, "nodes", name, "data"), "/var/lib/charm")
		for f, perm := range map[string]os.FileMode{"node.pem": 0o644, "node.key": 0o600, "ca.pem": 0o644} {
			m.install(filepath.Join(out, "nodes", name, "tls", f), "/etc/charm/tls/"+f, perm)
		}
		m.unit = "/etc/systemd/system/charm.service"
		m.health = "https://" + net.JoinHostPort(nodeHosts[i], "35356") + "/"
		m.client = nodeClient
		m.start()
		nodes = append(nodes, m)
	}

	proxy := newBootMachine(t, "proxy", bin)
	proxy.install(filepath.Join(out, "cring.yaml"), "/etc/cring/cring.yaml", 0o644)
	proxy.install(filepath.Join(out, "keys", "charm_server_ed25519"), "/etc/cring/charm_server_ed25519", 0o640)
	proxy.install(filepath.Join(out, "keys", "node-ca.pem"), "/etc/cring/node-ca.pem", 0o644)
	proxy.install(filepath.Join(out, "cring.service"), "/etc/systemd/system/cring.service", 0o644)
	// The public URL is https: cring.yaml names a certificate, here one from
	// a test CA the charm CLI trusts through SSL_CERT_FILE.
	caPEM, certPEM, keyPEM := testCA(t, proxyHost)
	tlsDir := t.TempDir()
	for name, b := range map[string][]byte{"ca.pem": caPEM, "fullchain.pem": certPEM, "privkey.pem": keyPEM} {
		if err := os.WriteFile(filepath.Join(tlsDir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	proxy.install(filepath.Join(tlsDir, "fullchain.pem"), "/etc/cring/tls/fullchain.pem", 0o640)
	proxy.install(filepath.Join(tlsDir, "privkey.pem"), "/etc/cring/tls/privkey.pem", 0o640)
	proxy.unit = "/etc/systemd/system/cring.service"
	admin := net.JoinHostPort(proxyHost, "35356")
	proxy.dropIn = []string{
		"CRING_ADDRESS=" + net.JoinHostPort(proxyHost, "35354"),
		"CRING_SSH_PROXY_ADDRESS=" + net.JoinHostPort(proxyHost, "35353"),
		"CRING_ADMIN_ADDRESS=" + admin,
		"CRING_HEALTH_INTERVAL=200ms",
	}
	proxy.health = "http://" + admin + "/healthz"
	proxy.start()
	testwait.For(t, 20*time.Second, "the condition", func() bool { return ciHealthy(admin) == 3 })

	st := bootStatus(t, admin)
	if st.Heal == nil {
		t.Fatal("the generated proxy runs with healing off (/status has no heal section)")
	}
	if _, err := os.Stat(proxy.path("/var/lib/cring/heal")); err != nil {
		t.Fatalf("the proxy keeps no state in its StateDirectory: %v", err)
	}

	// A brand-new user: no key, no account anywhere.
	home := t.TempDir()
	env := append(bootBaseEnv(home), "CHARM_HOST="+proxyHost, "CHARM_DATA_DIR="+filepath.Join(home, "charm"),
		"SSL_CERT_FILE="+filepath.Join(tlsDir, "ca.pem"), "SSL_CERT_DIR="+t.TempDir())
	charm := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, charmBin, args...)
		cmd.Env, cmd.Dir = env, home
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("charm %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		return strings.TrimSpace(string(b))
	}
	note := filepath.Join(home, "note.txt")
	if err := os.WriteFile(note, []byte("first words\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	charm("fs", "cp", note, "charm:notes/note.txt")
	if got := charm("fs", "cat", "charm:notes/note.txt"); got != "first words" {
		t.Fatalf("fs cat = %q", got)
	}
	charm("kv", "set", "greeting", "hello")
	if got := charm("kv", "get", "greeting"); got != "hello" {
		t.Fatalf("kv get = %q", got)
	}
	id := charm("id")

	// Healing: charm3 is killed, a write lands on the other two, and once
	// charm3 is back the healer gives it the file, with no operator.
	nodes[2].kill()
	testwait.For(t, 10*time.Second, "the condition", func() bool { return ciHealthy(admin) == 2 })
	if err := os.WriteFile(note, []byte("while charm3 was away\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	charm("fs", "cp", note, "charm:notes/later.txt")
	nodes[2].start()
	files := func(m *bootMachine) []string { return bootFiles(t, m.path("/var/lib/charm/files/"+id)) }
	want := files(nodes[0])
	if len(want) < 3 { // two notes and at least one kv backup
		t.Fatalf("charm1 holds %v", want)
	}
	testwait.For(t, 30*time.Second, "the condition", func() bool { return slices.Equal(files(nodes[2]), want) })
	if got := charm("fs", "cat", "charm:notes/later.txt"); got != "while charm3 was away" {
		t.Fatalf("fs cat after healing = %q", got)
	}
}

// bootMachine is one machine of a generated cluster: a root directory and
// the unit it runs.
type bootMachine struct {
	t      *testing.T
	name   string
	root   string
	unit   string   // the installed unit's path on the machine
	dropIn []string // extra environment, as a systemd drop-in would give
	health string
	client *http.Client // for health; nil: plain HTTP
	stop   func()
}

func newBootMachine(t *testing.T, name, cringBin string) *bootMachine {
	m := &bootMachine{t: t, name: name, root: t.TempDir()}
	if err := os.MkdirAll(m.path("/usr/local/bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(cringBin, m.path("/usr/local/bin/cring")); err != nil {
		t.Fatal(err)
	}
	return m
}

// path is where an absolute path of the machine lives in this test.
func (m *bootMachine) path(p string) string { return filepath.Join(m.root, p) }

// rooted rewrites the generated files' absolute install paths into the root.
func (m *bootMachine) rooted(text string) string {
	var pairs []string
	for _, p := range []string{"/usr/local/bin/", "/etc/charm/", "/etc/cring/", "/etc/systemd/", "/var/lib/"} {
		pairs = append(pairs, p, m.path(p)+"/")
	}
	return strings.NewReplacer(pairs...).Replace(text)
}

func (m *bootMachine) install(src, dst string, perm os.FileMode) {
	m.t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		m.t.Fatal(err)
	}
	if !strings.Contains(dst, "charm_server_ed25519") && !strings.HasSuffix(dst, ".pem") && !strings.HasSuffix(dst, ".key") {
		b = []byte(m.rooted(string(b)))
	}
	if err := os.MkdirAll(filepath.Dir(m.path(dst)), 0o755); err != nil {
		m.t.Fatal(err)
	}
	if err := os.WriteFile(m.path(dst), b, perm); err != nil {
		m.t.Fatal(err)
	}
}

// copyDir is `cp -a src/. dst`, which keeps the key's modes.
func (m *bootMachine) copyDir(src, dst string) {
	m.t.Helper()
	if err := os.MkdirAll(m.path(dst), 0o700); err != nil {
		m.t.Fatal(err)
	}
	if b, err := exec.Command("cp", "-a", src+"/.", m.path(dst)).CombinedOutput(); err != nil {
		m.t.Fatalf("copy %s: %v\n%s", src, err, b)
	}
}

// start does what systemd does with the unit: StateDirectory, then ExecStart
// with EnvironmentFile's variables (and the drop-in's), and waits for health.
func (m *bootMachine) start() {
	t := m.t
	t.Helper()
	b, err := os.ReadFile(m.path(m.unit))
	if err != nil {
		t.Fatal(err)
	}
	unit := bootUnit(string(b))
	env := bootBaseEnv(t.TempDir())
	for _, f := range unit["EnvironmentFile"] {
		for k, v := range ciReadEnv(t, f) {
			env = append(env, k+"="+v)
		}
	}
	env = append(env, m.dropIn...)
	for _, d := range unit["StateDirectory"] {
		if err := os.MkdirAll(m.path("/var/lib/"+d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	exe := unit["ExecStart"]
	if len(exe) != 1 {
		t.Fatalf("%s: %d ExecStart lines", m.unit, len(exe))
	}
	argv := strings.Fields(exe[0])
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	m.stop = ciRunWith(t, m.name, cmd, m.health, m.client)
}

func (m *bootMachine) kill() { m.stop() }

// bootUnit reads a unit's [Service] settings (no quoting or continuation
// lines: the generated units use none).
func bootUnit(text string) map[string][]string {
	out := map[string][]string{}
	section := ""
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "[") {
			section = line
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok && section == "[Service]" {
			out[k] = append(out[k], v)
		}
	}
	return out
}

// bootBaseEnv is what a service gets before its own variables: PATH and a
// HOME, none of this test's CHARM_* or CRING_* settings.
func bootBaseEnv(home string) []string {
	return []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home}
}

type bootStatusT struct {
	Heal json.RawMessage `json:"heal"`
}

func bootStatus(t *testing.T, admin string) bootStatusT {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st bootStatusT
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// bootFiles lists the regular files under dir, relative and sorted.
func bootFiles(t *testing.T, dir string) []string {
	var out []string
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		out = append(out, rel)
		return nil
	})
	slices.Sort(out)
	return out
}
