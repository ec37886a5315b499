package chaos

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cring-dev/cring/internal/netns"
)

// With Options.Hosts every node and proxy, and the clients, are on a test
// host of their own, so every process listens on the ports it would use in
// production, on its host's address.
const (
	hostSSHPort    = 35353
	hostHTTPPort   = 35354
	hostStatsPort  = 35355
	hostHealthPort = 35356
	hostAdminPort  = 35357 // a proxy's admin address
	hostMetaPort   = 35358 // a cring node's metadata port
	hostPGPort     = 5432  // the shared state's PostgreSQL (Options.State)
)

// hostNet is a run's test hosts: one per node and proxy, and one the
// clients and the checker work from (never faulted). Nothing of it is
// reachable from this process's own namespace: every connection is made
// from the client host (dial).
type hostNet struct {
	net     *netns.Net
	client  *netns.Host
	nodes   []*netns.Host
	proxies []*netns.Host
	// The balancer and the shared state's PostgreSQL each have a host of
	// their own (nil when the run has none): no fault between proxies and
	// nodes touches them, so a partition stays one proxy's.
	balancer *netns.Host
	state    *netns.Host
}

func newHostNet(nodes, proxies int, balancer, state bool) (*hostNet, error) {
	n, err := netns.New()
	if err != nil {
		return nil, err
	}
	hn := &hostNet{net: n}
	add := func(name string) *netns.Host {
		if err != nil {
			return nil
		}
		var h *netns.Host
		h, err = n.AddHost(name)
		return h
	}
	hn.client = add("client")
	for i := range nodes {
		hn.nodes = append(hn.nodes, add(fmt.Sprintf("node%d", i+1)))
	}
	for i := range proxies {
		hn.proxies = append(hn.proxies, add(fmt.Sprintf("proxy%d", i+1)))
	}
	if balancer {
		hn.balancer = add("balancer")
	}
	if state {
		hn.state = add("state")
	}
	if err != nil {
		return nil, errors.Join(err, n.Close())
	}
	return hn, nil
}

// dial connects from the client host: the only way this process reaches
// the run's servers (from its own namespace, the machine's default route
// would take the packets elsewhere).
func (hn *hostNet) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return hn.client.DialContext(ctx, network, addr)
}

// httpClient is a client for readiness checks, from the client host.
func (hn *hostNet) httpClient() *http.Client {
	return &http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: hn.dial, DisableKeepAlives: true}}
}

// links describes the link faults of every proxy now, for progress lines.
func (hn *hostNet) links() []string {
	var out []string
	for _, p := range hn.proxies {
		for _, n := range hn.nodes {
			switch f, d := p.FaultOn(n); f {
			case netns.LinkCut:
				out = append(out, fmt.Sprintf("%s cut from %s", p.Name, n.Name))
			case netns.LinkDelay:
				out = append(out, fmt.Sprintf("%s-%s +%s", p.Name, n.Name, d))
			}
		}
	}
	return out
}

func (hn *hostNet) close() error { return hn.net.Close() }

// nodeFront is what the schedule's node faults (latency, blackhole,
// reset) act on: a toxiproxy front in the chaos process, or, with test
// hosts, firewall rules in the node's host.
type nodeFront interface {
	latency(d time.Duration) error
	blackhole() error
	reset() error
	clear() error
	state() string
	close()
}

// hostFront makes a node's faults with rules in the node's host against
// every proxy's host (the clients' host, which the checker reads from, is
// never affected).
type hostFront struct {
	node    *netns.Host
	proxies []*netns.Host

	mu    sync.Mutex
	fault string
}

// latency holds every packet from the proxies for d before the node takes
// it: each round trip of theirs (a new connection pays two: handshake and
// request) takes d longer.
func (f *hostFront) latency(d time.Duration) error {
	return f.set(fmt.Sprintf("latency %s", d), func() error { return f.node.Delay(d, f.proxies...) })
}

// blackhole drops every packet between the node and the proxies.
func (f *hostFront) blackhole() error {
	return f.set("blackhole", func() error { return f.node.Cut(f.proxies...) })
}

// reset answers every TCP packet from the proxies with a reset.
func (f *hostFront) reset() error {
	return f.set("reset", func() error { return f.node.Reset(f.proxies...) })
}

func (f *hostFront) set(desc string, apply func() error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := apply(); err != nil {
		return fmt.Errorf("%s: %s: %w", f.node.Name, desc, err)
	}
	f.fault = desc
	return nil
}

func (f *hostFront) clear() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.node.Heal(f.proxies...); err != nil {
		return fmt.Errorf("%s: clear: %w", f.node.Name, err)
	}
	f.fault = ""
	return nil
}

func (f *hostFront) state() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fault
}

// close leaves the rules to the net, which removes the host with them.
func (f *hostFront) close() {}

// adminToken is a fresh token for the proxies' admin addresses, which
// listen on their hosts' addresses (only loopback goes without one).
func adminToken() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// ProxyView is what one proxy's health checks saw of the nodes during the
// fault period (its /readyz, sampled): which nodes it marked down at least
// once.
type ProxyView struct {
	Proxy string   `json:"proxy"`
	Down  []string `json:"down"`
}

func (v ProxyView) String() string {
	if len(v.Down) == 0 {
		return v.Proxy + " saw every node up"
	}
	return v.Proxy + " saw down: " + strings.Join(v.Down, ",")
}

// watchHealth samples every proxy's /readyz every 250 ms until ctx ends.
// It returns which nodes each proxy saw down, and the nodes the proxies
// disagreed on in one sample (one saw it down, another up): what a
// partition between some proxies and a node looks like from the proxies;
// and with a balancer, the proxies it took out.
func (c *cluster) watchHealth(ctx context.Context, a *api) (views []ProxyView, disagreed, lbDown []string) {
	out := map[string]bool{} // proxies the balancer had down
	down := make([]map[string]bool, len(c.proxies))
	for i := range down {
		down[i] = map[string]bool{}
	}
	split := map[string]bool{}
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		seen := map[string]map[bool]bool{} // node → the states the proxies answering this sample saw
		for i, p := range c.proxies {
			var st struct {
				Nodes []struct {
					Name    string `json:"name"`
					Healthy bool   `json:"healthy"`
				} `json:"nodes"`
			}
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			err := getJSON(rctx, a, p.admin+"/readyz", &st)
			cancel()
			if err != nil {
				continue // a proxy that is down (or killed) sees nothing
			}
			for _, n := range st.Nodes {
				if !n.Healthy {
					down[i][n.Name] = true
				}
				if seen[n.Name] == nil {
					seen[n.Name] = map[bool]bool{}
				}
				seen[n.Name][n.Healthy] = true
			}
		}
		for n, states := range seen {
			if len(states) == 2 {
				split[n] = true
			}
		}
		if c.lb != nil {
			st, _ := c.lb.states(ctx) // none while it restarts
			for p, s := range st {
				if strings.HasPrefix(s, "DOWN") {
					out[p] = true
				}
			}
		}
		select {
		case <-ctx.Done():
			views = make([]ProxyView, len(c.proxies))
			for i, p := range c.proxies {
				views[i] = ProxyView{Proxy: p.name}
				for n := range down[i] {
					views[i].Down = append(views[i].Down, n)
				}
				slices.Sort(views[i].Down)
			}
			for n := range split {
				disagreed = append(disagreed, n)
			}
			slices.Sort(disagreed)
			for p := range out {
				lbDown = append(lbDown, p)
			}
			slices.Sort(lbDown)
			return views, disagreed, lbDown
		case <-t.C:
		}
	}
}
