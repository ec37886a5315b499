package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/charmbracelet/charm/client"
	charmfs "github.com/charmbracelet/charm/fs"
	"github.com/cring-dev/cring/internal/cluster"
	"github.com/cring-dev/cring/internal/config"
	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/serve"
	"github.com/cring-dev/cring/internal/testwait"
)

// testCluster is real Charm servers in-process behind a real cring proxy.
type testCluster struct {
	t        testing.TB
	dc       *devcluster.Cluster
	cfg      *config.Config
	srv      *serve.Server
	httpAddr string
	sshAddr  string
	admin    string
	counters []*atomic.Int64 // non-public requests that reached each node (counted clusters only)
	srvStop  func()          // stops the first proxy
}

type clusterOpts struct {
	nodes    int
	replicas int
	quorum   int
	// count puts a counting reverse proxy in front of each node's HTTP API,
	// to prove what never reaches a node.
	count bool
	// observe, when set, sees every request a node gets through its front
	// (which it then forwards), in the order the fronts received them.
	observe func(node int, r *http.Request)
	// heal gives the proxy the server key and a data dir: self-healing on.
	heal bool
	// proxyNodes: how many of the nodes the proxy fronts (default all).
	proxyNodes int
	// backup: the proxy's backup target (URL, bucket, mode); dataDir keeps
	// its durable state across a proxy restart (default: a temp dir).
	backup  config.Backup
	dataDir string
	pprof   bool // --pprof: Go profiles on the admin address
	// scrub: time between scrub passes (default: no scrub; tests that
	// don't test it must not see it repair behind their back).
	scrub     time.Duration
	scrubRate int64 // bytes per second per node (default: the product's)
	// tune, when set, changes the proxy's config before it starts (bounds,
	// node URLs behind instrumentation).
	tune func(*config.Config)
}

func startCluster(t testing.TB, o clusterOpts) *testCluster {
	t.Helper()
	ctx := context.Background()
	ports, err := devcluster.FreePorts("127.0.0.1", 1)
	if err != nil {
		t.Fatal(err)
	}
	httpAddr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	publicURL := "http://" + httpAddr
	dc, err := devcluster.New(t.TempDir(), devcluster.Options{Nodes: o.nodes, PublicURL: publicURL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dc.Close() })
	if err := dc.StartAll(ctx); err != nil {
		t.Fatal(err)
	}
	tc := &testCluster{t: t, dc: dc}
	if o.proxyNodes == 0 {
		o.proxyNodes = o.nodes
	}
	p := tc.startProxy(o, o.proxyNodes, httpAddr)
	tc.cfg, tc.srv, tc.srvStop = p.cfg, p.srv, p.stop
	tc.httpAddr, tc.sshAddr, tc.admin = p.httpAddr, p.sshAddr, p.admin
	return tc
}

// proxyInst is one running cring proxy.
type proxyInst struct {
	cfg                      *config.Config
	srv                      *serve.Server
	httpAddr, sshAddr, admin string
	stop                     func() // graceful shutdown (also run at cleanup)
}

// startProxy runs a proxy over the cluster's first n nodes, on httpAddr
// ("" picks a port). Every proxy uses the cluster's public URL as issuer.
func (tc *testCluster) startProxy(o clusterOpts, n int, httpAddr string) *proxyInst {
	t := tc.t
	t.Helper()
	ports, err := devcluster.FreePorts("127.0.0.1", 3)
	if err != nil {
		t.Fatal(err)
	}
	if httpAddr == "" {
		httpAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
	}
	cfg := &config.Config{
		Replicas:        o.replicas,
		WriteQuorum:     o.quorum,
		PublicURL:       tc.dc.PublicURL,
		Address:         httpAddr,
		SSHProxyAddress: fmt.Sprintf("127.0.0.1:%d", ports[1]),
		AdminAddress:    fmt.Sprintf("127.0.0.1:%d", ports[2]),
		HealthInterval:  200 * time.Millisecond,
		NodeTimeout:     10 * time.Second,
	}
	cfg.Pprof = o.pprof
	cfg.DataDir = o.dataDir
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	cfg.Backup = o.backup
	if o.heal {
		cfg.ServerKey = tc.dc.KeyPath
		cfg.ScanInterval = time.Hour // tests run scans themselves
		cfg.RepairRate = 1000
		cfg.ScrubInterval = -1
		if o.scrub > 0 {
			cfg.ScrubInterval = o.scrub
			cfg.ScrubRate = o.scrubRate
		}
	}
	for k, nd := range tc.dc.Nodes[:n] {
		u := nd.HTTPURL()
		if o.count || o.observe != nil {
			c := &atomic.Int64{}
			tc.counters = append(tc.counters, c)
			u = countingFront(t, u, c, func(r *http.Request) {
				if o.observe != nil {
					o.observe(k, r)
				}
			})
		}
		cfg.Nodes = append(cfg.Nodes, cluster.Node{Name: nd.Name, URL: u, SSH: nd.SSHAddr(), Health: nd.HealthURL()})
	}
	if o.tune != nil {
		o.tune(cfg)
	}
	// A port picked free can be taken before the proxy binds it (other
	// packages' tests run at the same time): pick again. The public URL is
	// only the tokens' issuer, so it may keep the first port.
	for try := 0; ; try++ {
		p, err := tryServe(t, cfg)
		if err == nil {
			return p
		}
		if try == 3 || !errors.Is(err, syscall.EADDRINUSE) {
			t.Fatal(err)
		}
		ports, perr := devcluster.FreePorts("127.0.0.1", 3)
		if perr != nil {
			t.Fatal(perr)
		}
		cfg.Address = fmt.Sprintf("127.0.0.1:%d", ports[0])
		cfg.SSHProxyAddress = fmt.Sprintf("127.0.0.1:%d", ports[1])
		cfg.AdminAddress = fmt.Sprintf("127.0.0.1:%d", ports[2])
	}
}

// serveInProcess normalizes cfg and runs a proxy on it until the test ends.
func serveInProcess(t testing.TB, cfg *config.Config) *proxyInst {
	t.Helper()
	p, err := tryServe(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// tryServe is serveInProcess that returns a failure to listen.
func tryServe(t testing.TB, cfg *config.Config) (*proxyInst, error) {
	t.Helper()
	if err := cfg.Normalize(); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := serve.New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		return nil, err // what New opened (the healer's state files) is left to the process's end
	}
	sctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(sctx) }()
	stop := sync.OnceFunc(func() { cancel(); <-done })
	t.Cleanup(stop)
	p := &proxyInst{cfg: cfg, srv: srv, stop: stop}
	p.httpAddr, p.sshAddr, p.admin = srv.Addrs()
	return p, nil
}

// localNodes starts n in-process Charm nodes whose public URL is a free
// local address (for a proxy the test starts itself), stopped at cleanup.
func localNodes(t testing.TB, n int) (dc *devcluster.Cluster, httpAddr, sshAddr, admin string) {
	t.Helper()
	ports, err := devcluster.FreePorts("127.0.0.1", 3)
	if err != nil {
		t.Fatal(err)
	}
	httpAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
	dc, err = devcluster.New(t.TempDir(), devcluster.Options{Nodes: n, PublicURL: "http://" + httpAddr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dc.Close() })
	if err := dc.StartAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	return dc, httpAddr, fmt.Sprintf("127.0.0.1:%d", ports[1]), fmt.Sprintf("127.0.0.1:%d", ports[2])
}

// countingFront is instrumentation, not a fake: it forwards to the real node
// and counts authenticated-route requests.
func countingFront(t testing.TB, target string, c *atomic.Int64, observe func(*http.Request)) string {
	u, _ := url.Parse(target)
	rp := httputil.NewSingleHostReverseProxy(u)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/v1/public/") && !strings.HasPrefix(r.URL.Path, "/.well-known/") {
			c.Add(1)
			observe(r)
		}
		rp.ServeHTTP(w, r)
	})}
	ports, err := devcluster.FreePorts("127.0.0.1", 1)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	srv.Addr = addr
	go func() { _ = srv.ListenAndServe() }()
	t.Cleanup(func() { _ = srv.Close() })
	testwait.For(t, 5*time.Second, "the condition", func() bool {
		resp, err := http.Get("http://" + addr + "/v1/public/jwks")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})
	return "http://" + addr
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// user is a charm client with its own key, seeded on every node.
type user struct {
	cc     *client.Client
	fs     *charmfs.FS
	id     string
	pubKey []byte
	env    map[string]string
}

func (tc *testCluster) newUser(t *testing.T) *user {
	t.Helper()
	u, sshPort, httpPort := userAt(t, tc.sshAddr, tc.httpAddr)
	dataDir := u.env["CHARM_DATA_DIR"]
	cc, err := client.NewClient(&client.Config{
		Host:     "127.0.0.1",
		SSHPort:  sshPort,
		HTTPPort: httpPort,
		DataDir:  dataDir,
		KeyType:  "ed25519",
	})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := os.ReadFile(cc.AuthKeyPaths()[0] + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	id, err := tc.dc.SeedUser(pub)
	if err != nil {
		t.Fatal(err)
	}
	cfs, err := charmfs.NewFSWithClient(cc)
	if err != nil {
		t.Fatal(err)
	}
	u.cc, u.fs, u.id, u.pubKey = cc, cfs, id, pub
	return u
}

// userAt is a user whose CHARM_* settings point at a proxy, with its own
// data dir, made current for charm's env-configured helpers.
func userAt(t *testing.T, sshAddr, httpAddr string) (u *user, sshPort, httpPort int) {
	_, sshPort, _ = splitPort(sshAddr)
	_, httpPort, _ = splitPort(httpAddr)
	u = &user{env: map[string]string{
		"CHARM_HOST":      "127.0.0.1",
		"CHARM_SSH_PORT":  fmt.Sprint(sshPort),
		"CHARM_HTTP_PORT": fmt.Sprint(httpPort),
		"CHARM_DATA_DIR":  t.TempDir(),
	}}
	u.use(t)
	return u, sshPort, httpPort
}

// use points charm's env-configured helpers at this user: charm's crypt
// package builds its own client from CHARM_* variables.
func (u *user) use(t *testing.T) {
	for k, v := range u.env {
		t.Setenv(k, v)
	}
}

func splitPort(addr string) (string, int, error) {
	u, err := url.Parse("tcp://" + addr)
	if err != nil {
		return "", 0, err
	}
	var p int
	_, err = fmt.Sscan(u.Port(), &p)
	return u.Hostname(), p, err
}

// put writes data as name through charm's fs client.
func (u *user) put(t testing.TB, name string, data []byte) {
	t.Helper()
	if err := u.fs.WriteFile(name, memFile(name, data)); err != nil {
		t.Fatalf("write %s: %v", name, err)
	}
}

func (u *user) get(t testing.TB, name string) []byte {
	t.Helper()
	b, err := u.fs.ReadFile(name)
	if err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	return b
}

func (u *user) ls(t testing.TB, dir string) []string {
	t.Helper()
	des, err := u.fs.ReadDir(dir)
	if err != nil {
		t.Fatalf("list %s: %v", dir, err)
	}
	var names []string
	for _, d := range des {
		names = append(names, d.Name())
	}
	return names
}

// onDisk returns which nodes store the file name of u, and its bytes there.
func (tc *testCluster) onDisk(t testing.TB, u *user, name string) map[string][]byte {
	t.Helper()
	ep, err := u.fs.EncryptPath(name)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, n := range tc.dc.Nodes {
		b, err := os.ReadFile(n.FilePath(u.id, ep))
		if err == nil {
			out[n.Name] = b
		}
	}
	return out
}

func (tc *testCluster) stop(i int) {
	tc.t.Helper()
	if err := tc.dc.Stop(tc.dc.Nodes[i]); err != nil {
		tc.t.Fatal(err)
	}
}

func (tc *testCluster) start(i int) {
	tc.t.Helper()
	if err := tc.dc.Start(context.Background(), tc.dc.Nodes[i]); err != nil {
		tc.t.Fatal(err)
	}
}

// waitHealthy waits until the proxy's view of node health matches want.
func (tc *testCluster) waitReady(want int) {
	tc.t.Helper()
	testwait.For(tc.t, 10*time.Second, fmt.Sprintf("the proxy seeing %d nodes healthy", want), func() bool {
		resp, err := http.Get("http://" + tc.admin + "/readyz")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var st struct {
			Healthy int `json:"healthy"`
		}
		b, _ := io.ReadAll(resp.Body)
		_ = json.Unmarshal(b, &st)
		return st.Healthy == want
	})
}

// memFile is an fs.File over bytes, what charm's WriteFile wants.
type memFileT struct {
	*bytes.Reader
	name string
	size int64
}

func memFile(name string, b []byte) fs.File {
	return &memFileT{Reader: bytes.NewReader(b), name: filepath.Base(name), size: int64(len(b))}
}

func (m *memFileT) Stat() (fs.FileInfo, error) { return m, nil }
func (m *memFileT) Close() error               { return nil }
func (m *memFileT) Name() string               { return m.name }
func (m *memFileT) Size() int64                { return m.size }
func (m *memFileT) Mode() fs.FileMode          { return 0o644 }
func (m *memFileT) ModTime() time.Time         { return time.Now() }
func (m *memFileT) IsDir() bool                { return false }
func (m *memFileT) Sys() any                   { return nil }
