package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/cring-dev/cring/internal/devcluster"
)

// The peers workloads put other reverse proxies in front of one node, in the
// same rounds as cring, to measure what each costs per request: nginx and
// HAProxy (Debian's packages, scripts/install-peers) as plain reverse
// proxies, and a bare httputil.ReverseProxy, the least a Go proxy can do.
const (
	ModeNginx   = "nginx"
	ModeHAProxy = "haproxy"
	ModeFloor   = "go-floor"
)

// peerBinaries: where each peer's binary is looked for when it is not on
// PATH (Debian puts both in /usr/sbin, which a user's PATH may lack).
var peerBinaries = map[string]string{ModeNginx: "nginx", ModeHAProxy: "haproxy"}

// peerBinary finds a peer's executable.
func peerBinary(mode string) (string, error) {
	name := peerBinaries[mode]
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	p := filepath.Join("/usr/sbin", name)
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s is not installed (scripts/install-peers installs nginx and HAProxy from Debian's packages)", name)
}

// peers are the reverse proxies other than cring, each in front of node 0,
// started once per run when a peers workload first needs them.
type peers struct {
	dir   string // their configs, logs and temporary files
	procs map[string]*proc
}

func (e *env) startPeers(ctx context.Context) (*peers, error) {
	if e.peers != nil {
		return e.peers, nil
	}
	// Its own directory, outside the bench's (which only its owner may
	// enter): nginx and HAProxy run as an unprivileged user when the bench
	// runs as root.
	dir, err := os.MkdirTemp(e.sysTmp, "cring-peers-")
	if err != nil {
		return nil, fmt.Errorf("peers dir: %w", err)
	}
	ps := &peers{dir: dir, procs: map[string]*proc{}}
	e.peers = ps
	uid, gid, drop := unprivileged()
	if drop {
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, fmt.Errorf("peers dir: %w", err)
		}
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, fmt.Errorf("peers dir: %w", err)
	}
	upstream := e.nodes[0]
	for _, mode := range []string{ModeNginx, ModeHAProxy, ModeFloor} {
		ports, err := devcluster.FreePorts("127.0.0.1", 1)
		if err != nil {
			return nil, err
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
		var name string
		var args []string
		asNobody := drop
		switch mode {
		case ModeFloor:
			// The same binary as the proxy, its own process: its CPU is
			// measured the way cring's is.
			name, args, asNobody = e.o.Binary, []string{"bench", "floor", "--address", addr, "--upstream", upstream}, false
		default:
			bin, err := peerBinary(mode)
			if err != nil {
				e.logf("peers: %s left out: %v", mode, err)
				continue
			}
			conf, err := writePeerConfig(dir, mode, addr, strings.TrimPrefix(upstream, "http://"))
			if err != nil {
				return nil, err
			}
			name, args = bin, peerArgs(mode, dir, conf)
		}
		px, err := e.startPeer(ctx, mode, addr, name, args, func(cmd *exec.Cmd) {
			if asNobody {
				runAs(cmd, uid, gid)
			}
		})
		if err != nil {
			return nil, err
		}
		ps.procs[mode] = px
	}
	return ps, nil
}

func peerArgs(mode, dir, conf string) []string {
	if mode == ModeNginx {
		return []string{"-p", dir, "-e", filepath.Join(dir, "nginx-error.log"), "-c", conf}
	}
	return []string{"-db", "-f", conf} // HAProxy in the foreground
}

// Plain reverse proxies as an operator would first write them: keep-alive
// to the node (a new connection per request would cost the node more than
// the proxy), no body size limit (Charm uploads), defaults otherwise
// (nginx keeps its access log, HAProxy has none without a syslog target;
// cring logs every request). Workers and threads: one per CPU, as the Go
// runtime uses.
var peerConfigs = map[string]*template.Template{
	ModeNginx: template.Must(template.New("nginx").Parse(`daemon off;
worker_processes auto;
pid {{.Dir}}/nginx.pid;
error_log {{.Dir}}/nginx-error.log warn;
events { worker_connections 4096; }
http {
	access_log {{.Dir}}/nginx-access.log;
	client_body_temp_path {{.Dir}}/body;
	proxy_temp_path {{.Dir}}/proxy;
	fastcgi_temp_path {{.Dir}}/fastcgi;
	uwsgi_temp_path {{.Dir}}/uwsgi;
	scgi_temp_path {{.Dir}}/scgi;
	client_max_body_size 0;
	upstream node {
		server {{.Upstream}};
		keepalive 128;
	}
	server {
		listen {{.Addr}};
		location / {
			proxy_pass http://node;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
		}
	}
}
`)),
	ModeHAProxy: template.Must(template.New("haproxy").Parse(`global
	maxconn 4096
defaults
	mode http
	timeout connect 5s
	timeout client 60s
	timeout server 60s
frontend front
	bind {{.Addr}}
	default_backend node
backend node
	server node {{.Upstream}}
`)),
}

// writePeerConfig writes mode's config for a proxy on addr in front of
// upstream (host:port) into dir and returns its path.
func writePeerConfig(dir, mode, addr, upstream string) (string, error) {
	ext := ".conf"
	if mode == ModeHAProxy {
		ext = ".cfg"
	}
	p := filepath.Join(dir, mode+ext)
	f, err := os.Create(p)
	if err != nil {
		return "", fmt.Errorf("%s config: %w", mode, err)
	}
	err = peerConfigs[mode].Execute(f, struct{ Dir, Addr, Upstream string }{dir, addr, upstream})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("%s config: %w", mode, err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		return "", fmt.Errorf("%s config: %w", mode, err)
	}
	return p, nil
}

// startPeer runs one peer (setup adjusts its command) and waits until it
// answers HTTP on addr.
func (e *env) startPeer(ctx context.Context, mode, addr, name string, args []string, setup func(*exec.Cmd)) (*proc, error) {
	px := &proc{url: "http://" + addr, tree: mode == ModeNginx}
	var err error
	if px.log, err = os.Create(filepath.Join(e.dir, "peer-"+mode+".log")); err != nil {
		return nil, fmt.Errorf("%s log: %w", mode, err)
	}
	pctx, cancel := context.WithCancel(context.Background())
	px.stop = cancel
	cmd := exec.CommandContext(pctx, name, args...)
	cmd.Stdout = px.log
	cmd.Stderr = px.log
	cmd.Env = cleanEnv()
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	setDeathSignal(cmd)
	setup(cmd)
	e.logf("starting %s: %s %s", mode, name, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		cancel()
		_ = px.log.Close()
		return nil, fmt.Errorf("start %s: %w", mode, err)
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
		err := e.answers(ctx, px.url)
		if err == nil {
			return px, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("%s did not come up (log: %s): %w", mode, px.log.Name(), errors.Join(err, ctx.Err()))
		}
		select {
		case <-px.done:
			return nil, fmt.Errorf("%s exited: %v (log: %s)", mode, px.err, px.log.Name())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// answers checks that base passes a request on to the node: the node's
// answer to an unauthenticated GET is 401 or 404, a proxy without its
// upstream answers 502 or 503.
func (e *env) answers(ctx context.Context, base string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	u, err := fsURL(base, "bench", nil)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return err
	}
	_ = drain(resp, "probe", nil)
	if resp.StatusCode >= 500 {
		return fmt.Errorf("%s answers %s", base, resp.Status)
	}
	return nil
}

func (ps *peers) close() {
	if ps != nil && ps.dir != "" {
		_ = os.RemoveAll(ps.dir)
	}
}

// Floor serves a bare httputil.ReverseProxy in front of upstream on addr
// until ctx ends: the least a Go reverse proxy does per request (no auth,
// no replication, no failover, no log, no metrics), with the node transport
// cring uses, so the difference to cring is what cring adds.
func Floor(ctx context.Context, addr, upstream string) error {
	u, err := url.Parse(upstream)
	if err != nil || u.Host == "" {
		return fmt.Errorf("upstream %q: want http://host:port", upstream)
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:          512,
			MaxIdleConnsPerHost:   128,
			IdleConnTimeout:       90 * time.Second,
			ResponseHeaderTimeout: 30 * time.Second,
			DisableCompression:    true,
			WriteBufferSize:       64 << 10,
			ReadBufferSize:        64 << 10,
		},
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{Handler: rp, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
