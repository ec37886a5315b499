package cluster

import (
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"strconv"
	"testing"
)

const numKeys = 100_000

func key(i int) string { return "key-" + strconv.Itoa(i) }

func plain(names ...string) []Node {
	ns := make([]Node, len(names))
	for i, n := range names {
		ns[i] = Node{Name: n}
	}
	return ns
}

func mustNew(t testing.TB, nodes []Node, n int) *Ring {
	t.Helper()
	r, err := NewRing(nodes, n)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return r
}

// prefNames returns the preference list of key as node names.
func prefNames(r *Ring, key string) []string {
	out := make([]string, 0, len(r.nodes))
	for _, i := range r.Preference(key) {
		out = append(out, r.nodes[i].Name)
	}
	return out
}

// replicaSet returns the names of key's replicas.
func replicaSet(r *Ring, key string) map[string]bool {
	s := make(map[string]bool, r.n)
	for _, name := range prefNames(r, key)[:r.n] {
		s[name] = true
	}
	return s
}

func TestScoreMatchesSpec(t *testing.T) {
	// Reference: FNV-1a 64 over key+"\x00"+name, then splitmix64 finalizer.
	for _, tc := range []struct{ key, name string }{
		{"", "a"}, {"key-1", "node-1"}, {"key-1", "node-2"}, {"héllo", "n"},
	} {
		h := fnv.New64a()
		h.Write([]byte(tc.key + "\x00" + tc.name))
		if got, want := score(tc.key, tc.name), mix(h.Sum64()); got != want {
			t.Errorf("score(%q, %q) = %#x, want %#x", tc.key, tc.name, got, want)
		}
	}
	// Golden values guard against accidental changes: every proxy must agree.
	if got := score("key-1", "node-1"); got != goldenScore {
		t.Errorf("score(key-1, node-1) = %#x, want %#x", got, goldenScore)
	}
	r := mustNew(t, plain("a", "b", "c", "d", "e"), 3)
	for k, want := range goldenPrefs {
		if got := prefNames(r, k); !slices.Equal(got, want) {
			t.Errorf("Preference(%q) = %v, want %v", k, got, want)
		}
	}
}

var (
	goldenScore = uint64(0x184c93d3d2c83d25)
	goldenPrefs = map[string][]string{
		"":            {"d", "c", "e", "a", "b"},
		"key-1":       {"e", "b", "d", "c", "a"},
		"user:42":     {"b", "a", "d", "c", "e"},
		"photo/7.jpg": {"e", "a", "b", "d", "c"},
	}
)

func TestDeterministicAcrossNodeOrder(t *testing.T) {
	for _, tc := range []struct {
		name  string
		nodes []Node
	}{
		{"plain", plain("n1", "n2", "n3", "n4", "n5", "n6", "n7")},
		{"zoned", []Node{{Name: "n1", Zone: "a"}, {Name: "n2", Zone: "a"}, {Name: "n3", Zone: "b"}, {Name: "n4", Zone: "b"}, {Name: "n5", Zone: "c"}, {Name: "n6", Zone: ""}, {Name: "n7", Zone: "c"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rev := slices.Clone(tc.nodes)
			slices.Reverse(rev)
			shuf := []Node{tc.nodes[3], tc.nodes[6], tc.nodes[0], tc.nodes[5], tc.nodes[2], tc.nodes[4], tc.nodes[1]}
			base := mustNew(t, tc.nodes, 3)
			others := []*Ring{mustNew(t, rev, 3), mustNew(t, shuf, 3)}
			for i := range 10_000 {
				want := prefNames(base, key(i))
				for _, o := range others {
					if got := prefNames(o, key(i)); !slices.Equal(got, want) {
						t.Fatalf("key %q: %v vs %v", key(i), got, want)
					}
				}
			}
		})
	}
}

func TestPermutationAndClamp(t *testing.T) {
	for _, tc := range []struct {
		name  string
		nodes []Node
		n     int
		wantN int
	}{
		{"clamp", plain("a", "b", "c"), 5, 3},
		{"single", plain("a"), 1, 1},
		{"n1", plain("a", "b", "c", "d"), 1, 1},
		{"zoned", []Node{{Name: "a", Zone: "x"}, {Name: "b", Zone: "x"}, {Name: "c", Zone: "y"}, {Name: "d", Zone: ""}}, 3, 3},
		{"big", plain(bigNames(100)...), 3, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := mustNew(t, tc.nodes, tc.n)
			if r.Replicas() != tc.wantN {
				t.Fatalf("Replicas() = %d, want %d", r.Replicas(), tc.wantN)
			}
			if !slices.Equal(r.Nodes(), tc.nodes) {
				t.Fatalf("Nodes() = %v, want %v", r.Nodes(), tc.nodes)
			}
			for i := range 1000 {
				p := r.Preference(key(i))
				s := slices.Clone(p)
				slices.Sort(s)
				for j := range s {
					if s[j] != j {
						t.Fatalf("key %q: preference %v is not a permutation", key(i), p)
					}
				}
			}
		})
	}
}

func bigNames(n int) []string {
	s := make([]string, n)
	for i := range s {
		s[i] = "node-" + strconv.Itoa(i)
	}
	return s
}

func TestNodesIsCopy(t *testing.T) {
	in := plain("a", "b")
	r := mustNew(t, in, 1)
	in[0].Name = "z"
	got := r.Nodes()
	got[1].Name = "y"
	if want := plain("a", "b"); !slices.Equal(r.Nodes(), want) {
		t.Fatalf("Nodes() = %v, want %v", r.Nodes(), want)
	}
}

func TestBalance(t *testing.T) {
	r := mustNew(t, plain("node-1", "node-2", "node-3", "node-4", "node-5"), 3)
	count := make([]int, 5)
	for i := range numKeys {
		p := r.Preference(key(i))
		reps := slices.Clone(p[:3])
		slices.Sort(reps)
		if reps[0] == reps[1] || reps[1] == reps[2] {
			t.Fatalf("key %q: replicas not distinct: %v", key(i), p[:3])
		}
		for _, n := range reps {
			count[n]++
		}
	}
	fair := float64(numKeys) * 3 / 5
	worst := 0.0
	for n, c := range count {
		dev := (float64(c) - fair) / fair
		worst = max(worst, math.Abs(dev))
		if math.Abs(dev) > 0.05 {
			t.Errorf("node %d holds %d keys, fair share %.0f (%+.2f%%)", n, c, fair, dev*100)
		}
	}
	t.Logf("load per node %v, fair %.0f, worst deviation %.2f%%", count, fair, worst*100)
}

func TestAddNodeMovement(t *testing.T) {
	for _, tc := range []struct {
		n      int
		lo, hi float64
	}{{1, 0.20, 0.30}, {2, 0.20, 0.30}, {3, 0.20, 0.30}} {
		t.Run("N="+strconv.Itoa(tc.n), func(t *testing.T) {
			old := mustNew(t, plain("node-1", "node-2", "node-3"), tc.n)
			grown := mustNew(t, plain("node-1", "node-2", "node-3", "node-4"), tc.n)
			moved := 0
			for i := range numKeys {
				k := key(i)
				before, after := replicaSet(old, k), replicaSet(grown, k)
				for name := range after {
					if !before[name] {
						if name != "node-4" {
							t.Fatalf("key %q: gained %q, only node-4 may gain keys", k, name)
						}
						moved++
					}
				}
				// The handoff order of old nodes is unchanged too.
				a := slices.DeleteFunc(prefNames(grown, k), func(s string) bool { return s == "node-4" })
				if b := prefNames(old, k); !slices.Equal(a, b) {
					t.Fatalf("key %q: old nodes reordered: %v -> %v", k, b, a)
				}
			}
			frac := float64(moved) / float64(numKeys*tc.n)
			t.Logf("N=%d: %.4f of replica copies moved to the new node", tc.n, frac)
			if frac < tc.lo || frac > tc.hi {
				t.Errorf("moved fraction %.4f outside [%.2f, %.2f]", frac, tc.lo, tc.hi)
			}
		})
	}
}

func TestRemoveNode(t *testing.T) {
	for _, tc := range []struct {
		name   string
		nodes  []Node
		remove string
		n      int
	}{
		{"plain", plain("a", "b", "c", "d", "e"), "c", 2},
		{"plainN1", plain("a", "b", "c", "d", "e"), "a", 1},
		{"zoned", []Node{{Name: "a", Zone: "x"}, {Name: "b", Zone: "x"}, {Name: "c", Zone: "y"}, {Name: "d", Zone: "y"}, {Name: "e", Zone: "z"}, {Name: "f", Zone: ""}}, "d", 3},
		{"zonedLastOfZone", []Node{{Name: "a", Zone: "x"}, {Name: "b", Zone: "x"}, {Name: "c", Zone: "y"}, {Name: "d", Zone: "y"}, {Name: "e", Zone: "z"}}, "e", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			full := mustNew(t, tc.nodes, tc.n)
			less := mustNew(t, slices.DeleteFunc(slices.Clone(tc.nodes), func(n Node) bool { return n.Name == tc.remove }), tc.n)
			affected := 0
			for i := range 20_000 {
				k := key(i)
				before := prefNames(full, k)[:tc.n]
				if slices.Contains(before, tc.remove) {
					affected++
					continue
				}
				if after := prefNames(less, k)[:tc.n]; !slices.Equal(before, after) {
					t.Fatalf("key %q: replicas changed %v -> %v without involving %q", k, before, after, tc.remove)
				}
			}
			t.Logf("%d of 20000 keys had %q as a replica", affected, tc.remove)
		})
	}
}

func TestZones(t *testing.T) {
	t.Run("three zones", func(t *testing.T) {
		r := mustNew(t, []Node{{Name: "a1", Zone: "a"}, {Name: "a2", Zone: "a"}, {Name: "b1", Zone: "b"}, {Name: "b2", Zone: "b"}, {Name: "c1", Zone: "c"}, {Name: "c2", Zone: "c"}}, 3)
		count := map[string]int{}
		for i := range 20_000 {
			zones := map[string]bool{}
			for _, j := range r.Preference(key(i))[:3] {
				zones[r.nodes[j].Zone] = true
				count[r.nodes[j].Name]++
			}
			if len(zones) != 3 {
				t.Fatalf("key %q: replicas span %d zones", key(i), len(zones))
			}
		}
		t.Logf("load: %v", count)
	})
	t.Run("lopsided", func(t *testing.T) {
		r := mustNew(t, []Node{{Name: "a1", Zone: "a"}, {Name: "a2", Zone: "a"}, {Name: "a3", Zone: "a"}, {Name: "b1", Zone: "b"}}, 3)
		for i := range 20_000 {
			zones := map[string]int{}
			for _, j := range r.Preference(key(i))[:3] {
				zones[r.nodes[j].Zone]++
			}
			if zones["a"] != 2 || zones["b"] != 1 {
				t.Fatalf("key %q: replica zones %v, want a:2 b:1", key(i), zones)
			}
		}
	})
	t.Run("empty zone counts as zone", func(t *testing.T) {
		r := mustNew(t, []Node{{Name: "a1", Zone: "a"}, {Name: "a2", Zone: "a"}, {Name: "a3", Zone: "a"}, {Name: "n", Zone: ""}}, 2)
		for i := range 20_000 {
			p := r.Preference(key(i))
			if !slices.Contains(p[:2], 3) {
				t.Fatalf("key %q: replicas %v lack the zone-less node", key(i), p[:2])
			}
		}
	})
	t.Run("handoffs in score order", func(t *testing.T) {
		nodes := []Node{{Name: "a1", Zone: "a"}, {Name: "a2", Zone: "a"}, {Name: "a3", Zone: "a"}, {Name: "b1", Zone: "b"}, {Name: "b2", Zone: "b"}}
		r := mustNew(t, nodes, 2)
		for i := range 2000 {
			k := key(i)
			p := r.Preference(k)
			if p[0] != scoreOrder(nodes, k)[0] {
				t.Fatalf("key %q: primary is not the top-scored node", k)
			}
			h := p[2:]
			if !slices.IsSortedFunc(h, func(a, b int) int {
				return -cmpU64(score(k, nodes[a].Name), score(k, nodes[b].Name))
			}) {
				t.Fatalf("key %q: handoffs %v not in score order", k, h)
			}
		}
	})
}

func scoreOrder(nodes []Node, k string) []int {
	p := make([]int, len(nodes))
	for i := range p {
		p[i] = i
	}
	slices.SortFunc(p, func(a, b int) int { return -cmpU64(score(k, nodes[a].Name), score(k, nodes[b].Name)) })
	return p
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func TestNewErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		nodes []Node
		n     int
	}{
		{"no nodes", nil, 1},
		{"empty slice", []Node{}, 1},
		{"duplicate", plain("a", "b", "a"), 2},
		{"duplicate other zone", []Node{{Name: "a", Zone: "x"}, {Name: "a", Zone: "y"}}, 1},
		{"empty name", plain("a", ""), 1},
		{"replicas 0", plain("a"), 0},
		{"replicas negative", plain("a"), -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if r, err := NewRing(tc.nodes, tc.n); err == nil {
				t.Fatalf("New succeeded: %+v", r)
			}
		})
	}
}

func TestPreferenceAllocs(t *testing.T) {
	for _, tc := range []struct {
		name  string
		nodes []Node
	}{
		{"plain", plain(bigNames(16)...)},
		{"zoned", []Node{{Name: "a", Zone: "x"}, {Name: "b", Zone: "x"}, {Name: "c", Zone: "y"}, {Name: "d", Zone: "y"}, {Name: "e", Zone: "z"}}},
	} {
		r := mustNew(t, tc.nodes, 3)
		if a := testing.AllocsPerRun(100, func() { r.Preference("some-key") }); a != 1 {
			t.Errorf("%s: Preference allocates %v times, want 1", tc.name, a)
		}
	}
}

func BenchmarkPreference(b *testing.B) {
	r := mustNew(b, plain(bigNames(8)...), 3)
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = key(i)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		r.Preference(keys[i%len(keys)])
	}
}

// TestDrain: a draining node is never a replica and comes last; the others
// keep their placement relative to each other.
func TestDrain(t *testing.T) {
	nodes := []Node{{Name: "a", Zone: "z1"}, {Name: "b", Zone: "z2"}, {Name: "c", Zone: "z3"}, {Name: "d", Zone: "z1"}}
	drained := append([]Node(nil), nodes...)
	drained[1].Drain = true
	r, err := NewRing(drained, 3)
	if err != nil {
		t.Fatal(err)
	}
	if r.Replicas() != 3 {
		t.Fatalf("Replicas = %d", r.Replicas())
	}
	for k := range 2000 {
		p := r.Preference(fmt.Sprintf("key-%d", k))
		if p[len(p)-1] != 1 {
			t.Fatalf("draining node not last: %v", p)
		}
	}
	all := []Node{{Name: "a", Drain: true}, {Name: "b", Drain: true}}
	if _, err := NewRing(all, 1); err == nil {
		t.Fatal("all draining accepted")
	}
	two := []Node{{Name: "a"}, {Name: "b", Drain: true}}
	if r, _ := NewRing(two, 3); r.Replicas() != 1 {
		t.Fatalf("replicas with one active node = %d", r.Replicas())
	}
}
