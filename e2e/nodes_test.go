package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/charmbracelet/charm/client"
	charmfs "github.com/charmbracelet/charm/fs"
	"github.com/charmbracelet/keygen"
	"github.com/cring-dev/cring/internal/cluster"
	"github.com/cring-dev/cring/internal/config"
	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/pgtest"
	"github.com/cring-dev/cring/internal/serve"
	"github.com/cring-dev/cring/internal/testwait"
)

// pgCluster is `cring node` processes (the built binary) sharing one real
// PostgreSQL, behind an in-process cring proxy with accounts: shared.
type pgCluster struct {
	t         *testing.T
	bin       string
	pgURL     string
	keyPath   string // the shared server key every node copies
	publicURL string
	nodes     []*pgNode
	cfg       *config.Config
	httpAddr  string
	sshAddr   string
	admin     string
	srv       *serve.Server
	tls       *pgTLS // nodes serve TLS (nil: plain HTTP)
}

// pgTLS is what nodes serving TLS use: a certificate for 127.0.0.1 from a
// test CA, which the proxy trusts through node-ca.
type pgTLS struct {
	caFile, certFile, keyFile string
	client                    *http.Client // trusts the CA
}

// pgNode is one `cring node` process and what it needs to restart.
type pgNode struct {
	name              string
	dataDir           string
	http, ssh, health int
	meta              int // cring node's metadata endpoint
	cmd               *exec.Cmd
	done              chan struct{}
	accountsFromEnv   bool // CRING_ACCOUNTS instead of --accounts
	tls               bool // its HTTP, health and meta ports serve TLS
}

func (n *pgNode) scheme() string {
	if n.tls {
		return "https"
	}
	return "http"
}
func (n *pgNode) httpURL() string   { return fmt.Sprintf("%s://127.0.0.1:%d", n.scheme(), n.http) }
func (n *pgNode) sshAddr() string   { return fmt.Sprintf("127.0.0.1:%d", n.ssh) }
func (n *pgNode) healthURL() string { return fmt.Sprintf("%s://127.0.0.1:%d/", n.scheme(), n.health) }
func (n *pgNode) metaURL() string   { return fmt.Sprintf("%s://127.0.0.1:%d", n.scheme(), n.meta) }

func startPGCluster(t *testing.T, nodes int, tune ...func(*config.Config)) *pgCluster {
	t.Helper()
	return newPGCluster(t, nodes, nil, tune...)
}

// startPGClusterTLS is startPGCluster with nodes serving TLS
// (CHARM_SERVER_USE_TLS) with a certificate from a test CA, reached at
// https URLs by a proxy whose node-ca is that CA.
func startPGClusterTLS(t *testing.T, nodes int, tune ...func(*config.Config)) *pgCluster {
	t.Helper()
	dir := t.TempDir()
	caPEM, certPEM, keyPEM := testCA(t, "127.0.0.1")
	nt := &pgTLS{caFile: filepath.Join(dir, "ca.pem"), certFile: filepath.Join(dir, "node.pem"), keyFile: filepath.Join(dir, "node.key")}
	for f, b := range map[string][]byte{nt.caFile: caPEM, nt.certFile: certPEM, nt.keyFile: keyPEM} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	nt.client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	return newPGCluster(t, nodes, nt, tune...)
}

func newPGCluster(t *testing.T, nodes int, nt *pgTLS, tune ...func(*config.Config)) *pgCluster {
	t.Helper()
	pc := &pgCluster{t: t, bin: cringBinary(t), pgURL: pgtest.Start(t), tls: nt}
	ports, err := devcluster.FreePorts("127.0.0.1", 3)
	if err != nil {
		t.Fatal(err)
	}
	pc.publicURL = fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	dir := t.TempDir()
	pc.keyPath = filepath.Join(dir, "key", "charm_server_ed25519")
	if _, err := keygen.New(pc.keyPath, keygen.WithKeyType(keygen.Ed25519), keygen.WithWrite()); err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{
		Replicas:        3,
		WriteQuorum:     2,
		PublicURL:       pc.publicURL,
		Address:         fmt.Sprintf("127.0.0.1:%d", ports[0]),
		SSHProxyAddress: fmt.Sprintf("127.0.0.1:%d", ports[1]),
		AdminAddress:    fmt.Sprintf("127.0.0.1:%d", ports[2]),
		HealthInterval:  200 * time.Millisecond,
		NodeTimeout:     10 * time.Second,
		Accounts:        config.AccountsShared,
		// Healing on, so a node that was away catches up.
		ServerKey:    pc.keyPath,
		DataDir:      filepath.Join(dir, "proxy"),
		ScanInterval: time.Hour,
	}
	if nt != nil {
		cfg.NodeCA = nt.caFile
	}
	for i := range nodes {
		np, err := devcluster.FreePorts("127.0.0.1", 4)
		if err != nil {
			t.Fatal(err)
		}
		n := &pgNode{
			name:    fmt.Sprintf("node%d", i+1),
			dataDir: filepath.Join(dir, fmt.Sprintf("node%d", i+1)),
			http:    np[0], ssh: np[1], health: np[2], meta: np[3],
			accountsFromEnv: i%2 == 1,
			tls:             nt != nil,
		}
		// Like a real deployment: the shared key copied into each data dir.
		for _, suffix := range []string{"", ".pub"} {
			b, err := os.ReadFile(pc.keyPath + suffix)
			if err != nil {
				t.Fatal(err)
			}
			dst := filepath.Join(n.dataDir, ".ssh", "charm_server_ed25519"+suffix)
			if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		pc.nodes = append(pc.nodes, n)
		cfg.Nodes = append(cfg.Nodes, cluster.Node{Name: n.name, URL: n.httpURL(), SSH: n.sshAddr(), Health: n.healthURL(), Meta: n.metaURL()})
		pc.start(i)
	}
	t.Cleanup(func() {
		for i := range pc.nodes {
			pc.stop(i, syscall.SIGKILL)
		}
	})
	for _, f := range tune {
		f(cfg)
	}
	p := serveInProcess(t, cfg)
	pc.cfg, pc.srv = cfg, p.srv
	pc.httpAddr, pc.sshAddr, pc.admin = p.httpAddr, p.sshAddr, p.admin
	pc.waitReady(nodes)
	return pc
}

// start runs node i and waits for its health port.
func (pc *pgCluster) start(i int) {
	t, n := pc.t, pc.nodes[i]
	t.Helper()
	args := []string{"node", "--shutdown-timeout", "2s", "--meta-port", fmt.Sprint(n.meta)}
	env := append(os.Environ(),
		"CHARM_SERVER_BIND_ADDRESS=127.0.0.1",
		"CHARM_SERVER_HOST=127.0.0.1",
		fmt.Sprintf("CHARM_SERVER_HTTP_PORT=%d", n.http),
		fmt.Sprintf("CHARM_SERVER_SSH_PORT=%d", n.ssh),
		fmt.Sprintf("CHARM_SERVER_HEALTH_PORT=%d", n.health),
		"CHARM_SERVER_DATA_DIR="+n.dataDir,
		"CHARM_SERVER_PUBLIC_URL="+pc.publicURL,
	)
	if n.accountsFromEnv {
		env = append(env, "CRING_ACCOUNTS="+pc.pgURL)
	} else {
		args = append(args, "--accounts", pc.pgURL)
	}
	client := http.DefaultClient
	if pc.tls != nil {
		env = append(env, "CHARM_SERVER_USE_TLS=true", "CHARM_SERVER_TLS_CERT_FILE="+pc.tls.certFile, "CHARM_SERVER_TLS_KEY_FILE="+pc.tls.keyFile)
		client = pc.tls.client
	}
	cmd := exec.Command(pc.bin, args...)
	cmd.Env = env
	out := prefixWriter{t: t, prefix: n.name + ": "}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.cmd, n.done = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(n.done) }()
	testwait.For(t, 30*time.Second, "the condition", func() bool {
		select {
		case <-n.done:
			t.Fatalf("%s exited while starting: %v", n.name, cmd.ProcessState)
		default:
		}
		resp, err := client.Get(n.healthURL())
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// stop ends node i: SIGTERM is a graceful shutdown, SIGKILL a crash.
func (pc *pgCluster) stop(i int, sig syscall.Signal) {
	n := pc.nodes[i]
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Signal(sig)
	select {
	case <-n.done:
	case <-time.After(40 * time.Second):
		_ = n.cmd.Process.Kill()
		<-n.done
		pc.t.Errorf("%s did not stop on %v", n.name, sig)
	}
	if sig == syscall.SIGTERM && n.cmd.ProcessState.ExitCode() != 0 {
		pc.t.Errorf("%s exited with %v after SIGTERM", n.name, n.cmd.ProcessState)
	}
	n.cmd = nil
}

// waitReady waits until the proxy sees exactly want healthy nodes.
func (pc *pgCluster) waitReady(want int) {
	pc.t.Helper()
	tc := &testCluster{t: pc.t, admin: pc.admin}
	tc.waitReady(want)
}

// clientAt is a charm client with the key in dataDir (created when missing),
// talking to host ports sshPort/httpPort.
func clientAt(t *testing.T, dataDir string, sshPort, httpPort int) *client.Client {
	t.Helper()
	cc, err := client.NewClient(&client.Config{Host: "127.0.0.1", SSHPort: sshPort, HTTPPort: httpPort, DataDir: dataDir, KeyType: "ed25519"})
	if err != nil {
		t.Fatal(err)
	}
	return cc
}

// newUser is a brand-new charm user through the proxy: a fresh key whose
// first login (api-auth) creates the account. Nothing is seeded.
func (pc *pgCluster) newUser(t *testing.T) *user {
	t.Helper()
	u, sshPort, httpPort := userAt(t, pc.sshAddr, pc.httpAddr)
	cc := clientAt(t, u.env["CHARM_DATA_DIR"], sshPort, httpPort)
	auth, err := cc.Auth()
	if err != nil {
		t.Fatalf("first login: %v", err)
	}
	pub, err := os.ReadFile(cc.AuthKeyPaths()[0] + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	cfs, err := charmfs.NewFSWithClient(cc)
	if err != nil {
		t.Fatal(err)
	}
	u.cc, u.fs, u.id, u.pubKey = cc, cfs, auth.ID, pub
	return u
}

// sameKeyClient is another device with a copy of u's key, talking to
// sshPort/httpPort (the proxy or one node directly).
func sameKeyClient(t *testing.T, u *user, sshPort, httpPort int) *client.Client {
	t.Helper()
	src := filepath.Dir(u.cc.AuthKeyPaths()[0])
	dataDir := t.TempDir()
	dst := filepath.Join(dataDir, "127.0.0.1")
	if err := os.MkdirAll(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"charm_ed25519", "charm_ed25519.pub"} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return clientAt(t, dataDir, sshPort, httpPort)
}

// prefixWriter logs a child process's output lines into the test log.
type prefixWriter struct {
	t      *testing.T
	prefix string
}

func (w prefixWriter) Write(p []byte) (int, error) {
	w.t.Log(w.prefix + string(p))
	return len(p), nil
}

var _ io.Writer = prefixWriter{}
