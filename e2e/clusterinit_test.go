package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/charmbracelet/keygen"
	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/testwait"
	"github.com/cring-dev/cring/internal/token"
)

// TestClusterInit: what `cring cluster init` generates actually boots. Three
// real stock `charm serve` processes run with the generated env files and
// data directories (installed as docs/deploy.md says), the cring binary with
// the generated cring.yaml, and a file round-trips through the proxy onto
// every node's disk. A second init into the same directory is refused.
func TestClusterInit(t *testing.T) {
	charmBin := charmCLI(t)
	bin := cringBinary(t)
	base := t.TempDir()
	out := filepath.Join(base, "cluster")
	hosts := ciLoopbacks(t, 3)
	ports, err := devcluster.FreePorts("127.0.0.1", 3)
	if err != nil {
		t.Fatal(err)
	}
	httpAddr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	sshAddr := fmt.Sprintf("127.0.0.1:%d", ports[1])
	admin := fmt.Sprintf("127.0.0.1:%d", ports[2])
	publicURL := "http://" + httpAddr

	initArgs := []string{"cluster", "init", "--dir", out, "--hosts", strings.Join(hosts, ","),
		"--public-url", publicURL, "--data-dir", filepath.Join(base, "data", "{name}"), "--stock"}
	if b, err := exec.Command(bin, initArgs...).CombinedOutput(); err != nil {
		t.Fatalf("cring cluster init: %v\n%s", err, b)
	}

	// Install each node as the docs say: data/ into its data dir, then
	// `charm serve` with charm.env as its whole CHARM_* environment.
	dc := &devcluster.Cluster{} // only for SeedUser and FilePath over these data dirs
	envs := make([][]string, len(hosts))
	for i, host := range hosts {
		name := fmt.Sprintf("charm%d", i+1)
		env := ciReadEnv(t, filepath.Join(out, "nodes", name, "charm.env"))
		if env["CHARM_SERVER_BIND_ADDRESS"] != host || env["CHARM_SERVER_PUBLIC_URL"] != publicURL {
			t.Fatalf("%s charm.env: bind %q, public URL %q", name, env["CHARM_SERVER_BIND_ADDRESS"], env["CHARM_SERVER_PUBLIC_URL"])
		}
		data := env["CHARM_SERVER_DATA_DIR"]
		if err := os.MkdirAll(data, 0o700); err != nil {
			t.Fatal(err)
		}
		if b, err := exec.Command("cp", "-a", filepath.Join(out, "nodes", name, "data")+"/.", data).CombinedOutput(); err != nil {
			t.Fatalf("install %s data: %v\n%s", name, err, b)
		}
		dc.Nodes = append(dc.Nodes, &devcluster.Node{Name: name, Host: host, DataDir: data})
		envs[i] = ciCharmEnv(t, env)
	}

	// Stock nodes keep their own accounts: give every node the same user
	// before it starts (charm's own constructor creates the schema).
	kp, err := keygen.New(filepath.Join(t.TempDir(), "client"), keygen.WithKeyType(keygen.Ed25519))
	if err != nil {
		t.Fatal(err)
	}
	id, err := dc.SeedUser(kp.RawAuthorizedKey())
	if err != nil {
		t.Fatal(err)
	}

	for i, n := range dc.Nodes {
		cmd := exec.Command(charmBin, "serve")
		cmd.Env = envs[i]
		ciRun(t, n.Name, cmd, "http://"+net.JoinHostPort(n.Host, "35356")+"/")
	}
	// The key and state paths in cring.yaml are the proxy machine's
	// (/etc/cring, /var/lib/cring): flags point them here.
	proxy := exec.Command(bin, "serve", "--config", filepath.Join(out, "cring.yaml"),
		"--server-key", filepath.Join(out, "keys", "charm_server_ed25519"), "--data-dir", filepath.Join(base, "proxy"),
		"--address", httpAddr, "--ssh-proxy-address", sshAddr, "--admin-address", admin, "--health-interval", "200ms")
	ciRun(t, "cring", proxy, "http://"+admin+"/readyz")
	testwait.For(t, 15*time.Second, "every node healthy in the proxy's view", func() bool { return ciHealthy(admin) == len(hosts) })

	signer, err := token.LoadSigner(filepath.Join(out, "keys", "charm_server_ed25519"))
	if err != nil {
		t.Fatal(err)
	}
	jwt, err := signer.Sign(id, publicURL, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	const size = 2<<20 + 12345 // crosses upload's 1 MiB pattern boundary
	want := ciPattern(size)
	upload(t, httpAddr, jwt, "hello.bin", size)

	req, _ := http.NewRequest(http.MethodGet, "http://"+httpAddr+"/v1/fs/hello.bin", nil)
	req.Header.Set("Authorization", "bearer "+jwt)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET through the proxy: %d %v %.200q", resp.StatusCode, err, got)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("GET through the proxy returned %d bytes that differ from the %d uploaded", len(got), len(want))
	}

	key, err := os.ReadFile(filepath.Join(out, "keys", "charm_server_ed25519"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range dc.Nodes {
		// Acked at quorum: the last replica may land a moment later.
		var b []byte
		testwait.For(t, 5*time.Second, "hello.bin on "+n.Name, func() bool {
			b, err = os.ReadFile(n.FilePath(id, "hello.bin"))
			return err == nil && bytes.Equal(b, want)
		})
		// charm serve reused the generated key rather than making its own.
		nk, err := os.ReadFile(filepath.Join(n.DataDir, ".ssh", "charm_server_ed25519"))
		if err != nil || !bytes.Equal(nk, key) {
			t.Errorf("%s: server key is not the generated one: %v", n.Name, err)
		}
	}

	// A brand-new charm CLI user on stock nodes, the way docs/deploy.md says:
	// the first login creates the account on the SSH primary only, then
	// `cring accounts sync` (nodes running) gives every node the account, and
	// the user's files and kv work.
	home := t.TempDir()
	_, sshPort, _ := splitPort(sshAddr)
	cliEnv := append(bootBaseEnv(home), "CHARM_HOST=127.0.0.1", fmt.Sprintf("CHARM_SSH_PORT=%d", sshPort),
		fmt.Sprintf("CHARM_HTTP_PORT=%d", ports[0]), "CHARM_DATA_DIR="+filepath.Join(home, "charm"))
	charm := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, charmBin, args...)
		cmd.Env, cmd.Dir = cliEnv, home
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("charm %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		return strings.TrimSpace(string(b))
	}
	charm("id")
	syncArgs := []string{"accounts", "sync"}
	for _, n := range dc.Nodes {
		syncArgs = append(syncArgs, filepath.Join(n.DataDir, "db", "charm_sqlite.db"))
	}
	if b, err := exec.Command(bin, syncArgs...).CombinedOutput(); err != nil {
		t.Fatalf("cring accounts sync: %v\n%s", err, b)
	}
	note := filepath.Join(home, "note.txt")
	if err := os.WriteFile(note, []byte("stock words\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	charm("fs", "cp", note, "charm:note.txt")
	if got := charm("fs", "cat", "charm:note.txt"); got != "stock words" {
		t.Fatalf("fs cat = %q", got)
	}
	charm("kv", "set", "greeting", "hello")
	if got := charm("kv", "get", "greeting"); got != "hello" {
		t.Fatalf("kv get = %q", got)
	}

	// A second init must not replace the keys the running cluster uses.
	var stderr strings.Builder
	again := exec.Command(bin, initArgs...)
	again.Stderr = &stderr
	err = again.Run()
	var ee *exec.ExitError
	msg := strings.TrimSpace(stderr.String())
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(msg, "refusing to overwrite existing keys") || strings.Contains(msg, "\n") {
		t.Fatalf("second init: %v, stderr %q; want exit 2 and one line about existing keys", err, msg)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "keys", "charm_server_ed25519")); !bytes.Equal(b, key) {
		t.Fatal("second init changed the key")
	}
}

// ciLoopbacks returns n loopback addresses whose standard Charm ports are
// free: 127.0.0.2.. when possible, else another 127/8 range, so a concurrent
// run elsewhere on the machine does not collide.
func ciLoopbacks(t *testing.T, n int) []string {
	t.Helper()
	for try := 0; try < 50; try++ {
		a, b, c := 0, 0, 2
		if try > 0 {
			a, b, c = 1+rand.IntN(254), rand.IntN(256), 2+rand.IntN(200)
		}
		var hosts []string
		for i := range n {
			hosts = append(hosts, fmt.Sprintf("127.%d.%d.%d", a, b, c+i))
		}
		if ciPortsFree(hosts) {
			return hosts
		}
	}
	t.Fatal("no loopback addresses with free ports 35353-35357")
	return nil
}

func ciPortsFree(hosts []string) bool {
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	for _, h := range hosts {
		for _, p := range []int{35353, 35354, 35355, 35356, 35357} {
			l, err := net.Listen("tcp", net.JoinHostPort(h, strconv.Itoa(p)))
			if err != nil {
				return false
			}
			lns = append(lns, l)
		}
	}
	return true
}

// ciReadEnv parses an env file of plain KEY=value lines, as systemd's
// EnvironmentFile does.
func ciReadEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: line without '=': %q", path, line)
		}
		env[k] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return env
}

// ciCharmEnv is this process's environment without any CHARM_* variable,
// plus the env file and a private HOME.
func ciCharmEnv(t *testing.T, file map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CHARM_") && !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	env = append(env, "HOME="+t.TempDir())
	for k, v := range file {
		env = append(env, k+"="+v)
	}
	return env
}

// ciRun starts cmd, stops it when the test ends, and waits (bounded) until
// healthURL answers 200. Its output goes to a file shown only on failure. The
// returned stop kills it (kill -9) and waits for it; calling it again is a no-op.
func ciRun(t *testing.T, name string, cmd *exec.Cmd, healthURL string) (stop func()) {
	t.Helper()
	return ciRunWith(t, name, cmd, healthURL, nil)
}

// ciRunWith is ciRun asking healthURL with client (nil: plain HTTP), for
// an https health port.
func ciRunWith(t *testing.T, name string, cmd *exec.Cmd, healthURL string, client *http.Client) (stop func()) {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	stop = sync.OnceFunc(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	t.Cleanup(func() {
		stop()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			if len(b) > 4096 {
				b = b[len(b)-4096:]
			}
			t.Logf("%s output (tail):\n%s", name, b)
		}
	})
	if client == nil {
		client = &http.Client{Timeout: time.Second}
	}
	var lastErr error
	answered := false
	defer func() {
		if !answered && lastErr != nil { // testwait failed the test: say why
			t.Logf("%s: last error %v", healthURL, lastErr)
		}
	}()
	testwait.For(t, 20*time.Second, name+" answering 200 at "+healthURL, func() bool {
		select {
		case <-done:
			t.Fatalf("%s exited before %s answered", name, healthURL)
		default:
		}
		resp, err := client.Get(healthURL)
		if lastErr = err; err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	answered = true
	return stop
}

// ciHealthy is how many nodes the proxy's /readyz reports healthy.
func ciHealthy(admin string) int {
	resp, err := http.Get("http://" + admin + "/readyz")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var st struct {
		Healthy int `json:"healthy"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return -1
	}
	return st.Healthy
}

// ciPattern is the body upload sends for size bytes.
func ciPattern(size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte((i % (1 << 20)) * 7)
	}
	return b
}
