package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/charmbracelet/keygen"
	charmlog "github.com/charmbracelet/log"

	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/token"
)

// env is a running cluster, the proxy process in front of it and a client
// with a valid token for one seeded user.
type env struct {
	o *Options

	dir     string
	tempDir bool
	// removed at the end even in a given Dir: the nodes' data and their
	// temporary files
	scratch []string
	dc      *devcluster.Cluster

	proxyURL string // http://127.0.0.1:port: the proxy, and the tokens' issuer
	proxy    *proc  // the proxy every workload but read-slow uses
	procs    []*proc

	nodes       []string // every node's base URL
	replicas    int      // N as the proxy reports it
	writeQuorum int

	client *http.Client
	auth   string // Authorization header value

	userID    string   // the seeded user's charm ID
	readFiles []string // written to every node once, for the reads

	restoreLogs func()
	pin         *pinning // nil: not pinned
	nodeTmp     string   // the in-process nodes' TMPDIR
	sysTmp      string   // the temporary directory before the bench changed TMPDIR
	peers       *peers   // nginx, HAProxy and the Go floor, once a peers workload started them
}

func (e *env) logf(format string, args ...any) {
	fmt.Fprintf(e.o.Progress, format+"\n", args...)
}

// start brings everything up; on error whatever started is stopped.
func start(ctx context.Context, o *Options) (_ *env, err error) {
	e := &env{o: o}
	defer func() {
		if err != nil {
			e.close()
		}
	}()

	// The in-process Charm servers log every request through the standard
	// and charmbracelet loggers: costly noise in a benchmark.
	stdOut, charmOut := stdlog.Writer(), io.Writer(os.Stderr)
	stdlog.SetOutput(io.Discard)
	charmlog.SetOutput(io.Discard)
	e.restoreLogs = func() { stdlog.SetOutput(stdOut); charmlog.SetOutput(charmOut) }

	if o.PinProxy {
		if e.pin, err = newPinning(); err != nil {
			return nil, err
		}
		if err := e.pin.pinSelf(); err != nil {
			return nil, err
		}
		e.logf("pinned: %s", e.pin)
	}

	e.dir = o.Dir
	if e.dir == "" {
		if e.dir, err = os.MkdirTemp("", "cring-bench-"); err != nil {
			return nil, fmt.Errorf("temp dir: %w", err)
		}
		e.tempDir = true
	} else if err := os.MkdirAll(e.dir, 0o700); err != nil {
		return nil, fmt.Errorf("bench dir: %w", err)
	}

	ports, err := devcluster.FreePorts("127.0.0.1", 1)
	if err != nil {
		return nil, err
	}
	httpAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	e.proxyURL = "http://" + httpAddr

	// Charm nodes leave a temporary file behind for every upload larger
	// than 32 MiB (charm's handlers parse the multipart form on a copy of
	// the request, so net/http never removes it): the in-process nodes get
	// their own temporary directory, removed with the rest.
	tmp, err := os.MkdirTemp(e.dir, "tmp-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	e.scratch = append(e.scratch, tmp)
	e.nodeTmp = tmp
	e.sysTmp = os.TempDir()
	prevTmp, hadTmp := os.LookupEnv("TMPDIR")
	_ = os.Setenv("TMPDIR", tmp)
	restore := e.restoreLogs
	e.restoreLogs = func() {
		restore()
		if hadTmp {
			_ = os.Setenv("TMPDIR", prevTmp)
		} else {
			_ = os.Unsetenv("TMPDIR")
		}
	}

	where := "as `cring node` processes"
	if o.NodesInProcess {
		where = "in this process"
	}
	e.logf("starting %d Charm nodes %s in %s", o.Nodes, where, e.dir)
	// Each run gets fresh nodes: results must not depend on what an earlier
	// run left behind, and the nodes' public URL is this run's proxy port.
	clusterDir, err := os.MkdirTemp(e.dir, "cluster-")
	if err != nil {
		return nil, fmt.Errorf("cluster dir: %w", err)
	}
	e.scratch = append(e.scratch, clusterDir)
	dco := devcluster.Options{Nodes: o.Nodes, PublicURL: e.proxyURL}
	if !o.NodesInProcess {
		dco.Binary = o.Binary
		if e.pin != nil {
			dco.Wrap = e.pin.benchCommand
		}
	}
	e.dc, err = devcluster.New(clusterDir, dco)
	if err != nil {
		return nil, err
	}
	if err := e.dc.StartAll(ctx); err != nil {
		return nil, err
	}
	for _, n := range e.dc.Nodes {
		e.nodes = append(e.nodes, n.HTTPURL())
	}

	kp, err := keygen.New(filepath.Join(clusterDir, "client_ed25519"), keygen.WithKeyType(keygen.Ed25519))
	if err != nil {
		return nil, fmt.Errorf("client key: %w", err)
	}
	id, err := e.dc.SeedUser(kp.RawAuthorizedKey())
	if err != nil {
		return nil, err
	}
	e.userID = id
	signer, err := token.LoadSigner(e.dc.KeyPath)
	if err != nil {
		return nil, err
	}
	// Nodes and proxy accept the same token: same key, issuer = proxy URL.
	jwt, err := signer.Sign(id, e.proxyURL, 24*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("sign token: %w", err)
	}
	e.auth = "bearer " + jwt

	e.client = &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		WriteBufferSize:     64 << 10,
		ReadBufferSize:      64 << 10,
	}}

	if e.proxy, err = e.startProxy(ctx, httpAddr, e.nodes, "proxy.log"); err != nil {
		return nil, err
	}
	st, err := e.status(ctx, e.proxy)
	if err != nil {
		return nil, err
	}
	e.replicas, e.writeQuorum = st.Replicas, st.WriteQuorum
	return e, nil
}

// proc is a `cring serve` process the bench runs, or a peer (nginx,
// HAProxy, the Go floor).
type proc struct {
	url   string // http://127.0.0.1:port
	admin string // http://127.0.0.1:port
	cmd   *exec.Cmd
	done  chan struct{} // closed when the process exited
	err   error         // its Wait error, once done is closed
	stop  context.CancelFunc
	log   *os.File
	tree  bool // its CPU is its own and its descendants' (nginx's workers)
}

func (px *proc) pid() int { return px.cmd.Process.Pid }

// cpu is the CPU time the process (and its descendants, for a tree) used
// so far.
func (px *proc) cpu() (time.Duration, bool) {
	if px.tree {
		return treeCPU(px.pid())
	}
	return cpuTime(px.pid())
}

// sweepTmp removes the temporary files the nodes leaked (charm keeps a
// copy of every upload over 32 MiB), or 64 MiB uploads would fill the disk
// in a long run. Only files untouched for a while: a write the proxy
// finishes in the background may still be reading its own.
func (e *env) sweepTmp() {
	ents, err := os.ReadDir(e.nodeTmp)
	if err != nil {
		return
	}
	for _, d := range ents {
		if fi, err := d.Info(); err == nil && time.Since(fi.ModTime()) > 10*time.Second {
			_ = os.RemoveAll(filepath.Join(e.nodeTmp, d.Name()))
		}
	}
}

// stopProxy ends a proxy process and waits for it.
func (e *env) stopProxy(px *proc) {
	px.stop()
	<-px.done
	_ = px.log.Close()
	e.procs = slices.DeleteFunc(e.procs, func(q *proc) bool { return q == px })
}

// startProxy runs `cring serve` in front of nodes as its own process,
// listening on httpAddr and logging to logName in the bench directory, and
// waits until it answers an authenticated request.
func (e *env) startProxy(ctx context.Context, httpAddr string, nodes []string, logName string, extra ...string) (*proc, error) {
	ports, err := devcluster.FreePorts("127.0.0.1", 2)
	if err != nil {
		return nil, err
	}
	px := &proc{url: "http://" + httpAddr, admin: "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))}
	args := []string{"serve",
		"--address", httpAddr,
		"--ssh-proxy-address", net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])),
		"--admin-address", strings.TrimPrefix(px.admin, "http://"),
		"--public-url", e.proxyURL, // the tokens' issuer, whichever proxy checks them
		"--pprof", // `go tool pprof <admin>/debug/pprof/profile` during a run
	}
	for _, u := range nodes {
		args = append(args, "--host", u)
	}
	args = append(args, extra...)
	// The proxy's durable state (hints, known users) stays in the bench's
	// scratch, not in the user's data directory.
	data, err := os.MkdirTemp(e.dir, "proxy-data-")
	if err != nil {
		return nil, fmt.Errorf("proxy data dir: %w", err)
	}
	e.scratch = append(e.scratch, data)
	args = append(args, "--data-dir", data)
	if px.log, err = os.Create(filepath.Join(e.dir, logName)); err != nil {
		return nil, fmt.Errorf("proxy log: %w", err)
	}
	pctx, cancel := context.WithCancel(context.Background())
	px.stop = cancel
	name := e.o.Binary
	if e.pin != nil {
		name, args = e.pin.command(name, args...)
	}
	cmd := exec.CommandContext(pctx, name, args...)
	cmd.Stdout = px.log
	cmd.Stderr = px.log
	cmd.Env = cleanEnv()
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	setDeathSignal(cmd)
	e.logf("starting the proxy: %s %s", name, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		cancel()
		_ = px.log.Close()
		return nil, fmt.Errorf("start proxy %s: %w", e.o.Binary, err)
	}
	px.cmd = cmd
	px.done = make(chan struct{})
	go func() {
		px.err = cmd.Wait()
		close(px.done)
	}()
	e.procs = append(e.procs, px)

	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := e.status(ctx, px)
		if err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("proxy did not come up (log: %s): %w", px.log.Name(), errors.Join(err, ctx.Err()))
		}
		select {
		case <-px.done:
			return nil, fmt.Errorf("proxy exited: %v (log: %s)", px.err, px.log.Name())
		case <-time.After(50 * time.Millisecond):
		}
	}
	// The first authenticated request makes the proxy fetch the key set;
	// wait until uploads go through.
	for {
		err := e.upload(ctx, px.url, "bench/warm", 1<<10)
		if err == nil {
			return px, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("proxy does not accept uploads (log: %s): %w", px.log.Name(), errors.Join(err, ctx.Err()))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// cleanEnv is this process's environment without CRING_* variables: the
// proxy's configuration is exactly the flags the bench gives it.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CRING_") {
			out = append(out, kv)
		}
	}
	return out
}

type proxyStatus struct {
	Replicas    int   `json:"replicas"`
	WriteQuorum int   `json:"write_quorum"`
	PeakRSS     int64 `json:"peak_rss_bytes"`
}

func (e *env) status(ctx context.Context, px *proc) (*proxyStatus, error) {
	st := &proxyStatus{}
	return st, e.getStatus(ctx, px, st)
}

// getStatus decodes a proxy's /status into st.
func (e *env) getStatus(ctx context.Context, px *proc, st any) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, px.admin+"/status", nil)
	if err != nil {
		return err
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("proxy /status: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(st); err != nil {
		return fmt.Errorf("proxy /status: %w", err)
	}
	return nil
}

// peakRSS is a proxy's peak RSS as it reports it on /status.
func (e *env) peakRSS(ctx context.Context, px *proc) (int64, error) {
	st, err := e.status(ctx, px)
	if err != nil {
		return 0, err
	}
	if st.PeakRSS <= 0 {
		return 0, errors.New("proxy /status has no peak_rss_bytes")
	}
	return st.PeakRSS, nil
}

// resetPeakRSS lowers a proxy's RSS high-water mark to its current RSS
// (Linux: /proc/<pid>/clear_refs), so the next peak is one run's own.
func resetPeakRSS(px *proc) bool {
	if runtime.GOOS != "linux" {
		return false
	}
	err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", px.pid()), []byte("5"), 0)
	return err == nil
}

func (e *env) close() {
	for _, px := range slices.Clone(e.procs) { // stopProxy removes from e.procs
		e.stopProxy(px)
	}
	if e.client != nil {
		e.client.CloseIdleConnections()
	}
	e.peers.close()
	if e.dc != nil {
		_ = e.dc.Close()
		e.dc = nil
	}
	for _, d := range e.scratch {
		_ = os.RemoveAll(d)
	}
	if e.tempDir {
		_ = os.RemoveAll(e.dir)
	}
	if e.restoreLogs != nil {
		e.restoreLogs()
		e.restoreLogs = nil
	}
}
