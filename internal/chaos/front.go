package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// fronts is the fault-injecting TCP layer between the proxies and the
// nodes: one toxiproxy listener per node port the proxies use (HTTP, and a
// cring node's metadata port), run in this process. A fault on a node's
// front applies to all of its listeners, to open connections and new ones.
type fronts struct {
	api *toxiproxy.ApiServer
}

func newFronts() *fronts {
	return &fronts{api: toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())}
}

// front is one node's listeners.
type front struct {
	name    string
	proxies []*toxiproxy.Proxy

	mu    sync.Mutex
	fault string // "" when clean
}

// open starts a listener on a free loopback port for each upstream
// (host:port), in that order.
func (fs *fronts) open(name string, upstreams ...string) (*front, error) {
	f := &front{name: name}
	for i, up := range upstreams {
		p := toxiproxy.NewProxy(fs.api, fmt.Sprintf("%s-%d", name, i), "127.0.0.1:0", up)
		if err := p.Start(); err != nil {
			f.close()
			return nil, fmt.Errorf("front for %s (%s): %w", name, up, err)
		}
		f.proxies = append(f.proxies, p)
	}
	return f, nil
}

// addr is the listen address (host:port) of the i-th upstream's listener.
func (f *front) addr(i int) string {
	f.proxies[i].Lock()
	defer f.proxies[i].Unlock()
	return f.proxies[i].Listen
}

// toxic is toxiproxy's JSON description of one toxic.
type toxic struct {
	Name       string         `json:"name"`
	Type       string         `json:"type"`
	Stream     string         `json:"stream"`
	Toxicity   float32        `json:"toxicity"`
	Attributes map[string]any `json:"attributes"`
}

// latency delays every answer by d (±10%).
func (f *front) latency(d time.Duration) error {
	ms := d.Milliseconds()
	return f.set(fmt.Sprintf("latency %s", d), toxic{Name: "latency", Type: "latency", Stream: "downstream",
		Attributes: map[string]any{"latency": ms, "jitter": ms / 10}})
}

// blackhole drops every byte both ways and keeps connections open: the
// node looks alive to TCP and never answers.
func (f *front) blackhole() error {
	return f.set("blackhole",
		toxic{Name: "blackhole-up", Type: "timeout", Stream: "upstream", Attributes: map[string]any{"timeout": 0}},
		toxic{Name: "blackhole-down", Type: "timeout", Stream: "downstream", Attributes: map[string]any{"timeout": 0}})
}

// reset answers every request with a TCP reset.
func (f *front) reset() error {
	return f.set("reset", toxic{Name: "reset", Type: "reset_peer", Stream: "upstream", Attributes: map[string]any{"timeout": 0}})
}

// set replaces the front's toxics with ts on every listener.
func (f *front) set(desc string, ts ...toxic) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clearLocked()
	for _, p := range f.proxies {
		for _, t := range ts {
			t.Toxicity = 1
			b, err := json.Marshal(t)
			if err != nil {
				return fmt.Errorf("front %s: %w", f.name, err)
			}
			if _, err := p.Toxics.AddToxicJson(bytes.NewReader(b)); err != nil {
				return fmt.Errorf("front %s: add %s: %w", f.name, t.Name, err)
			}
		}
	}
	f.fault = desc
	return nil
}

// clear removes every toxic: the node is reachable as it is again.
func (f *front) clear() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clearLocked()
	return nil
}

func (f *front) clearLocked() {
	for _, p := range f.proxies {
		p.Toxics.ResetToxics(context.Background())
	}
	f.fault = ""
}

// state is the front's current fault, "" when clean.
func (f *front) state() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fault
}

// close stops every listener and cuts its connections.
func (f *front) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.proxies {
		p.Toxics.ResetToxics(context.Background())
		p.Stop()
	}
	f.proxies = nil
}
