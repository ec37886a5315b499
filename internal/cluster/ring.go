package cluster

// Ring placement (Dynamo-style preference lists): rendezvous (highest random
// weight) hashing. Every node gets a pseudo-random score per key and the key
// goes to the highest-scored nodes. Adding or removing a node moves only the
// keys that gain or lose that node (minimal movement), there are no virtual
// nodes to tune for balance, and the placement depends only on key, node
// names, zones and drain, so every proxy computes the identical preference
// list without coordination.

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Ring places keys on nodes. It is immutable and safe for concurrent use.
type Ring struct {
	nodes  []Node
	n      int   // replicas, clamped to len(nodes)
	zone   []int // zone id per node; ids are only compared for equality
	nzones int
	zoned  bool // some node has a non-empty Zone
	active int  // nodes not draining
}

// NewRing builds a ring. replicas is N; it is clamped to len(nodes). Errors: no nodes, empty name, duplicate name, replicas < 1.
func NewRing(nodes []Node, replicas int) (*Ring, error) {
	if len(nodes) == 0 {
		return nil, errors.New("ring: no nodes")
	}
	if replicas < 1 {
		return nil, fmt.Errorf("ring: replicas must be >= 1, got %d", replicas)
	}
	r := &Ring{
		nodes: slices.Clone(nodes),
		zone:  make([]int, len(nodes)),
	}
	names := make(map[string]struct{}, len(nodes))
	zones := make(map[string]int)
	for i, nd := range nodes {
		if nd.Name == "" {
			return nil, fmt.Errorf("ring: node %d has an empty name", i)
		}
		if _, dup := names[nd.Name]; dup {
			return nil, fmt.Errorf("ring: duplicate node name %q", nd.Name)
		}
		names[nd.Name] = struct{}{}
		if nd.Drain {
			r.zone[i] = -1
			continue
		}
		r.active++
		id, ok := zones[nd.Zone]
		if !ok {
			id = len(zones)
			zones[nd.Zone] = id
		}
		r.zone[i] = id
		if nd.Zone != "" {
			r.zoned = true
		}
	}
	if r.active == 0 {
		return nil, errors.New("ring: every node is draining")
	}
	r.n = min(replicas, r.active)
	r.nzones = len(zones)
	return r, nil
}

// Replicas returns N (after clamping to the nodes not draining).
func (r *Ring) Replicas() int { return r.n }

// Nodes returns a copy of the nodes in configured order.
func (r *Ring) Nodes() []Node { return slices.Clone(r.nodes) }

// Preference returns the full ordered preference list for key as indexes into the nodes passed to NewRing:
// the first Replicas() entries are the key's replicas, the rest are handoff nodes in order.
// Every node appears exactly once.
func (r *Ring) Preference(key string) []int {
	n := len(r.nodes)
	p := make([]int, n)
	var buf [64]uint64 // stays on the stack for typical cluster sizes
	var scores []uint64
	if n <= len(buf) {
		scores = buf[:n]
	} else {
		scores = make([]uint64, n)
	}
	h := fnvAdd(offset64, key)
	h *= prime64 // FNV-1a step for the "\x00" separator
	for i := range r.nodes {
		scores[i] = mix(fnvAdd(h, r.nodes[i].Name))
		p[i] = i
	}
	slices.SortFunc(p, func(a, b int) int {
		if da, db := r.nodes[a].Drain, r.nodes[b].Drain; da != db {
			if da {
				return 1
			}
			return -1
		}
		switch {
		case scores[a] > scores[b]:
			return -1
		case scores[a] < scores[b]:
			return 1
		}
		return strings.Compare(r.nodes[a].Name, r.nodes[b].Name)
	})
	if r.zoned {
		r.spread(p)
	}
	return p
}

// spread reorders the score-ordered list p so that its first N entries are
// the best node of each distinct zone (in score order, until N are picked or
// every zone is used) followed by the best remaining nodes. Nodes not moved to
// the front keep their relative score order.
func (r *Ring) spread(p []int) {
	k := 0
	for i := 0; i < r.active && k < r.n && k < r.nzones; i++ {
		z := r.zone[p[i]]
		used := false
		for _, j := range p[:k] {
			if r.zone[j] == z {
				used = true
				break
			}
		}
		if used {
			continue
		}
		v := p[i]
		copy(p[k+1:i+1], p[k:i])
		p[k] = v
		k++
	}
}

const (
	offset64 = 14695981039346656037
	prime64  = 1099511628211
)

// fnvAdd continues an FNV-1a 64 hash h over s.
func fnvAdd(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= prime64
	}
	return h
}

// mix is the splitmix64 finalizer.
func mix(z uint64) uint64 {
	z ^= z >> 30
	z *= 0xbf58476d1ce4e5b9
	z ^= z >> 27
	z *= 0x94d049bb133111eb
	z ^= z >> 31
	return z
}

// score is the rendezvous weight of name for key.
func score(key, name string) uint64 {
	return mix(fnvAdd(fnvAdd(offset64, key)*prime64, name))
}
