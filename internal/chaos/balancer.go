package chaos

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cring-dev/cring/internal/haproxy"
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

// startBalancer writes haproxy.cfg for every proxy and runs HAProxy on
// addr (host:port): on the balancer host with test hosts.
func (c *cluster) startBalancer(ctx context.Context, addr string) error {
	// docs/deploy.md's haproxy.cfg for the HTTP port (the clients use no
	// SSH), with short check timers and a stats socket. The logs name
	// each connection's proxy.
	cfg := haproxy.Config{HTTP: addr, CheckInterval: 500 * time.Millisecond,
		LogFormat: "lb %ci:%cp %b %s %ts %Tw/%Tc/%Tt"}
	for _, p := range c.proxies {
		_, port, err := net.SplitHostPort(strings.TrimPrefix(p.admin, "http://"))
		if err != nil {
			return fmt.Errorf("balancer: %s admin address: %w", p.name, err)
		}
		adminPort, err := strconv.Atoi(port)
		if err != nil {
			return fmt.Errorf("balancer: %s admin port: %w", p.name, err)
		}
		cfg.Servers = append(cfg.Servers, haproxy.Server{Name: p.name, HTTP: strings.TrimPrefix(p.url, "http://"), AdminPort: adminPort})
	}
	// The socket's path must fit a sockaddr_un (108 bytes): in the
	// private dir, not the work dir a caller may have named.
	lb := &balancer{url: "http://" + addr, sock: filepath.Join(c.tmp, "haproxy.sock")}
	cfg.StatsSocket = lb.sock
	text, err := cfg.Render()
	if err != nil {
		return fmt.Errorf("balancer: %w", err)
	}
	cfgPath := filepath.Join(c.dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, text, 0o600); err != nil {
		return fmt.Errorf("balancer: %w", err)
	}
	balancerHost := func(hn *hostNet) []*netns.Host { return []*netns.Host{hn.balancer} }
	lb.proc = &proc{name: "balancer", logPath: filepath.Join(c.dir, "logs", "balancer.log"), crashed: c.crashed,
		// Any answer through it means it passes connections to a proxy.
		ready: lb.url + "/", client: c.readyClient(),
		command: func() *exec.Cmd {
			return c.command(balancerHost, 0, c.o.HAProxyBin, haproxy.Args(cfgPath)...)
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
func (lb *balancer) states(ctx context.Context) (map[string]string, error) {
	st, err := haproxy.ServerStates(ctx, lb.sock)
	if err != nil {
		return nil, fmt.Errorf("balancer: %w", err)
	}
	out := map[string]string{}
	for server, state := range st {
		if name, ok := strings.CutPrefix(server, haproxy.HTTPBackend+"/"); ok {
			out[name] = state
		}
	}
	return out, nil
}

// waitUp waits until the balancer has every proxy up.
func (lb *balancer) waitUp(ctx context.Context, proxies []*proxyProc) error {
	var last map[string]string
	err := poll(ctx, 30*time.Second, 100*time.Millisecond, func(ctx context.Context) (bool, error) {
		st, err := lb.states(ctx)
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
