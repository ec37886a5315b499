// Package cluster is a cluster's membership as every part of cring sees it:
// its nodes, where keys go (the ring), N and W, and which nodes are up. It is
// built once from the config and shared by the proxy, the healer, status and
// the commands; a reload builds a new one and swaps it in whole, so nothing
// ever sees nodes from one config and a ring or quorum from another.
package cluster

import (
	"fmt"
	"net/url"
)

// Node is one Charm server behind the proxy, as the config declares it.
// The membership's copies also carry its parsed URLs.
type Node struct {
	Name   string `yaml:"name"`
	URL    string `yaml:"url"`    // HTTP base URL, e.g. http://charm1:35354
	SSH    string `yaml:"ssh"`    // host:port of its SSH server
	Health string `yaml:"health"` // URL answering 200 when healthy; empty: check the HTTP API
	// Meta is a cring node's metadata endpoint (http://host:35357): exact
	// size, mtime and SHA-256 for the healer. Empty for stock nodes.
	Meta string `yaml:"meta"`
	Zone string `yaml:"zone"`
	// Drain moves the node's data to the others: it holds no replicas,
	// still serves reads, and can be removed once a scan emptied it.
	Drain bool `yaml:"drain"`

	api, meta *url.URL // parsed by New
}

// API is the node's HTTP API base URL (set on the membership's nodes).
func (n *Node) API() *url.URL { return n.api }

// MetaAPI is a cring node's metadata endpoint; nil for a stock node.
func (n *Node) MetaAPI() *url.URL { return n.meta }

// Stock reports whether the node is taken for a stock charm serve: it has
// no metadata endpoint, so it can't keep stamps or refuse an older write.
func (n *Node) Stock() bool { return n.Meta == "" }

// HealthURL is what the health checks GET: the configured one, or the
// node's public JWKS (any Charm server answers it without a token).
func (n *Node) HealthURL() string {
	if n.Health != "" {
		return n.Health
	}
	return n.URL + "/v1/public/jwks"
}

// Health is which nodes are up (internal/health checks them): by index into
// the membership's nodes.
type Health interface {
	Healthy(i int) bool
	MarkDown(i int, err error)
}

// Membership is the cluster as configured: its nodes in configured order,
// the ring over them, the write quorum and (once set) their health.
// Immutable once shared.
type Membership struct {
	Nodes  []Node
	Ring   *Ring
	W      int
	Health Health
}

// New builds a membership from the config's nodes, N and W. Its Health is
// set by whoever starts the checks, before it is shared.
func New(nodes []Node, replicas, quorum int) (*Membership, error) {
	m := &Membership{Nodes: make([]Node, len(nodes)), W: quorum}
	for i, n := range nodes {
		var err error
		if n.api, err = url.Parse(n.URL); err != nil {
			return nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
		if n.Meta != "" {
			if n.meta, err = url.Parse(n.Meta); err != nil {
				return nil, fmt.Errorf("node %s meta: %w", n.Name, err)
			}
		}
		m.Nodes[i] = n
	}
	r, err := NewRing(m.Nodes, replicas)
	if err != nil {
		return nil, fmt.Errorf("build ring: %w", err)
	}
	m.Ring = r
	return m, nil
}

// N is the replica count (clamped to the nodes not draining).
func (m *Membership) N() int { return m.Ring.Replicas() }

// Index is the position of the named node, -1 if it is not a member.
func (m *Membership) Index(name string) int {
	for i := range m.Nodes {
		if m.Nodes[i].Name == name {
			return i
		}
	}
	return -1
}

// Replicas are the indexes of key's N replicas, in preference order.
func (m *Membership) Replicas(key string) []int { return m.Ring.Preference(key)[:m.Ring.Replicas()] }

// AnyStock reports whether some node is taken for a stock charm serve:
// every upload then also writes a version record (docs/design.md,
// "Versions").
func (m *Membership) AnyStock() bool {
	for i := range m.Nodes {
		if m.Nodes[i].Stock() {
			return true
		}
	}
	return false
}
