// Package health tracks which nodes are up: active probes at an interval plus
// passive marking when a request to a node fails at the transport level.
package health

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/cring-dev/cring/internal/cluster"
)

// Status is a node's current state.
type Status struct {
	Name      string    `json:"name"`
	Healthy   bool      `json:"healthy"`
	LastError string    `json:"last_error,omitempty"`
	Since     time.Time `json:"since"`
	LastCheck time.Time `json:"last_check"`
}

// Checker probes nodes and remembers their state. Nodes start healthy so a
// fresh proxy tries them; the first probe round runs at once.
type Checker struct {
	nodes    []cluster.Node
	interval time.Duration
	timeout  time.Duration
	client   *http.Client
	log      *slog.Logger
	onChange func(i int, healthy bool)

	mu    sync.RWMutex
	state []Status
}

// Options tune a Checker.
type Options struct {
	Interval  time.Duration
	Timeout   time.Duration // per probe; default min(Interval, 2s)
	Transport http.RoundTripper
	Logger    *slog.Logger
	OnChange  func(i int, healthy bool) // called on every transition
}

// New returns a checker for nodes (each probed at its HealthURL).
func New(nodes []cluster.Node, o Options) *Checker {
	if o.Timeout <= 0 {
		o.Timeout = min(o.Interval, 2*time.Second)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	now := time.Now()
	st := make([]Status, len(nodes))
	for i, t := range nodes {
		st[i] = Status{Name: t.Name, Healthy: true, Since: now}
	}
	return &Checker{
		nodes:    nodes,
		interval: o.Interval,
		timeout:  o.Timeout,
		client:   &http.Client{Transport: o.Transport, Timeout: o.Timeout},
		log:      o.Logger,
		onChange: o.OnChange,
		state:    st,
	}
}

// Run probes every target until ctx ends.
func (c *Checker) Run(ctx context.Context) {
	t := time.NewTicker(c.interval)
	defer t.Stop()
	for {
		c.CheckAll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// CheckAll probes every target once, concurrently.
func (c *Checker) CheckAll(ctx context.Context) {
	var wg sync.WaitGroup
	for i := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := c.probe(ctx, &c.nodes[i])
			if ctx.Err() != nil {
				return
			}
			c.set(i, err)
		}()
	}
	wg.Wait()
}

func (c *Checker) probe(ctx context.Context, n *cluster.Node) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.HealthURL(), nil)
	if err != nil {
		return err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("health check %s answered %s", n.HealthURL(), resp.Status)
	}
	return nil
}

func (c *Checker) set(i int, err error) {
	healthy := err == nil
	c.mu.Lock()
	s := &c.state[i]
	now := time.Now()
	s.LastCheck = now
	changed := s.Healthy != healthy
	if changed {
		s.Healthy = healthy
		s.Since = now
	}
	if err != nil {
		s.LastError = err.Error()
	} else {
		s.LastError = ""
	}
	c.mu.Unlock()
	if changed {
		if healthy {
			c.log.Info("node up", "node", c.nodes[i].Name)
		} else {
			c.log.Warn("node down", "node", c.nodes[i].Name, "err", err)
		}
		if c.onChange != nil {
			c.onChange(i, healthy)
		}
	}
}

// MarkDown records a failed request to node i; the next successful probe
// brings it back.
func (c *Checker) MarkDown(i int, err error) { c.set(i, err) }

// Healthy reports whether node i is believed up.
func (c *Checker) Healthy(i int) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.state[i].Healthy
}

// HealthyCount is the number of nodes believed up.
func (c *Checker) HealthyCount() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	n := 0
	for _, s := range c.state {
		if s.Healthy {
			n++
		}
	}
	return n
}

// Snapshot copies every node's state.
func (c *Checker) Snapshot() []Status {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return append([]Status(nil), c.state...)
}
