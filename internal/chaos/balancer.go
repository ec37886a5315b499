package chaos

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"text/template"
	"time"

	"github.com/cring-dev/cring/internal/netns"
)

// balancer is HAProxy in front of every proxy (Options.Balancer), set up
// as docs/deploy.md says: HTTP passed as TCP, each proxy checked on its
// /readyz, a connection a dead proxy refuses retried on another.
type balancer struct {
	url  string // http://host:port: the clients' way in
	sock string // its stats socket, for the proxies' states
	proc *proc
}

// haproxyConfig is docs/deploy.md's haproxy.cfg for the HTTP port (the
// clients use no SSH), with short check timers and a stats socket. The
// logs name each connection's proxy.
var haproxyConfig = template.Must(template.New("haproxy").Parse(`global
	maxconn 8192
	log stdout format raw local0
	stats socket {{.Sock}} mode 600 level admin

defaults
	mode tcp
	log global
	log-format "lb %ci:%cp %b %s %ts %Tw/%Tc/%Tt"
	timeout connect 2s
	timeout client 10m
	timeout server 10m
	timeout check 2s
	retries 3
	option redispatch 1

frontend charm_http
	bind {{.HTTP}}
	stick-table type ipv6 size 100k expire 10m store conn_cur
	tcp-request connection track-sc0 src
	tcp-request connection reject if { sc0_conn_cur gt 256 }
	default_backend cring_http

backend cring_http
	balance roundrobin
	option httpchk GET /readyz
	http-check expect status 200
	default-server check inter 500ms fall 2 rise 2
{{- range .Proxies}}
	server {{.Name}} {{.HTTP}} port {{.AdminPort}}
{{- end}}
`))

// startBalancer writes haproxy.cfg for every proxy and runs HAProxy on
// addr (host:port): on the balancer host with test hosts.
func (c *cluster) startBalancer(ctx context.Context, addr string) error {
	type server struct{ Name, HTTP, AdminPort string }
	var servers []server
	for _, p := range c.proxies {
		_, port, err := net.SplitHostPort(strings.TrimPrefix(p.admin, "http://"))
		if err != nil {
			return fmt.Errorf("balancer: %s admin address: %w", p.name, err)
		}
		servers = append(servers, server{p.name, strings.TrimPrefix(p.url, "http://"), port})
	}
	// The socket's path must fit a sockaddr_un (108 bytes): in the
	// private dir, not the work dir a caller may have named.
	lb := &balancer{url: "http://" + addr, sock: filepath.Join(c.tmp, "haproxy.sock")}
	var cfg bytes.Buffer
	if err := haproxyConfig.Execute(&cfg, map[string]any{"Sock": lb.sock, "HTTP": addr, "Proxies": servers}); err != nil {
		return fmt.Errorf("balancer: haproxy.cfg: %w", err)
	}
	cfgPath := filepath.Join(c.dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, cfg.Bytes(), 0o600); err != nil {
		return fmt.Errorf("balancer: %w", err)
	}
	balancerHost := func(hn *hostNet) []*netns.Host { return []*netns.Host{hn.balancer} }
	lb.proc = &proc{name: "balancer", logPath: filepath.Join(c.dir, "logs", "balancer.log"), crashed: c.crashed,
		// Any answer through it means it passes connections to a proxy.
		ready: lb.url + "/", client: c.readyClient(),
		command: func() *exec.Cmd {
			// -db: in the foreground, so this process sees it exit.
			return c.command(balancerHost, 0, c.o.HAProxyBin, "-db", "-f", cfgPath)
		},
	}
	c.o.logf("starting the balancer (HAProxy) on %s in front of %d proxies", addr, len(c.proxies))
	if err := lb.proc.start(ctx); err != nil {
		return fmt.Errorf("balancer: %w", err)
	}
	c.lb = lb
	return nil
}

// states is each proxy's state in the balancer ("UP", "DOWN", "UP 1/2"
// while going down…), from its stats socket.
func (lb *balancer) states() (map[string]string, error) {
	conn, err := net.DialTimeout("unix", lb.sock, time.Second)
	if err != nil {
		return nil, fmt.Errorf("balancer stats: %w", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(conn, "show stat\n"); err != nil {
		return nil, fmt.Errorf("balancer stats: %w", err)
	}
	b, err := io.ReadAll(conn)
	if err != nil {
		return nil, fmt.Errorf("balancer stats: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if !strings.HasPrefix(lines[0], "# ") {
		return nil, fmt.Errorf("balancer stats: %q", b)
	}
	head := strings.Split(strings.TrimPrefix(lines[0], "# "), ",")
	col := slices.Index(head, "status")
	out := map[string]string{}
	for _, l := range lines[1:] {
		f := strings.Split(l, ",")
		if col < 0 || len(f) <= col {
			return nil, fmt.Errorf("balancer stats: %q", l)
		}
		if f[0] == "cring_http" && f[1] != "BACKEND" {
			out[f[1]] = f[col]
		}
	}
	return out, nil
}

// waitUp waits until the balancer has every proxy up.
func (lb *balancer) waitUp(ctx context.Context, proxies []*proxyProc) error {
	var last map[string]string
	err := poll(ctx, 30*time.Second, 100*time.Millisecond, func(context.Context) (bool, error) {
		st, err := lb.states()
		if err != nil {
			return false, nil
		}
		last = st
		for _, p := range proxies {
			if st[p.name] != "UP" {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("the balancer does not have every proxy up (%v): %w", last, err)
	}
	return nil
}
