package chaos

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// FaultKind is one kind of fault the schedule injects.
type FaultKind string

// Faults.
const (
	KillNode  FaultKind = "kill-node"  // kill -9, restarted when the fault ends
	StopNode  FaultKind = "stop-node"  // SIGSTOP, SIGCONT when it ends
	KillProxy FaultKind = "kill-proxy" // kill -9 a proxy, restarted when it ends
	Latency   FaultKind = "latency"    // answers late (200 ms – 2 s) through the node's front
	Blackhole FaultKind = "blackhole"  // the front drops every byte, connections stay open
	Reset     FaultKind = "reset"      // the front resets every connection that sends

	// Only with Options.Hosts (every process on a test host of its own):
	// faults of one proxy's links, which the other proxies don't share.
	PartitionProxy FaultKind = "partition-proxy" // one proxy cut from one or two nodes, both ways
	LinkLatency    FaultKind = "link-latency"    // one proxy's link to one node slowed (200 ms – 2 s per round trip)

	// DestroyProxy: kill -9 a proxy and delete its data dir; when it ends
	// a fresh proxy starts in its place on a new, empty data dir (its
	// machine replaced). Drawn by default only with Options.State.
	DestroyProxy FaultKind = "destroy-proxy"
)

// FaultKinds lists every kind a run on one host draws from, in the order
// the schedule draws weights.
var FaultKinds = []FaultKind{KillNode, StopNode, KillProxy, Latency, Blackhole, Reset}

// HostFaultKinds lists every kind a run with Options.Hosts draws from:
// FaultKinds and the link faults of one proxy.
var HostFaultKinds = append(slices.Clone(FaultKinds), PartitionProxy, LinkLatency)

// AllFaultKinds lists every kind there is: HostFaultKinds and
// destroy-proxy.
var AllFaultKinds = append(slices.Clone(HostFaultKinds), DestroyProxy)

// weights are the relative odds of each kind.
var weights = map[FaultKind]int{KillNode: 3, StopNode: 2, KillProxy: 2, Latency: 3, Blackhole: 2, Reset: 2,
	PartitionProxy: 3, LinkLatency: 2, DestroyProxy: 2}

// hostOnly reports whether kind needs test hosts (Options.Hosts).
func hostOnly(kind FaultKind) bool { return kind == PartitionProxy || kind == LinkLatency }

// onProxy reports whether kind's targets are proxies, not nodes.
func onProxy(kind FaultKind) bool { return kind == KillProxy || kind == DestroyProxy }

// Fault is one scheduled fault: at At after the fault period starts, for
// For, on Targets (node indexes, or the proxy index for kill-proxy and
// destroy-proxy). A
// partition-proxy or link-latency fault is on the links between proxy
// Proxy and its target nodes.
type Fault struct {
	At      time.Duration `json:"at"`
	For     time.Duration `json:"for"`
	Kind    FaultKind     `json:"kind"`
	Targets []int         `json:"targets"`
	Proxy   int           `json:"proxy,omitempty"` // partition-proxy, link-latency
	Delay   time.Duration `json:"delay,omitempty"` // latency faults
}

func (f Fault) end() time.Duration { return f.At + f.For }

func (f Fault) String() string {
	var names []string
	for _, t := range f.Targets {
		if onProxy(f.Kind) {
			names = append(names, fmt.Sprintf("proxy%d", t+1))
		} else {
			names = append(names, fmt.Sprintf("node%d", t+1))
		}
	}
	target := strings.Join(names, ",")
	if hostOnly(f.Kind) {
		target = fmt.Sprintf("proxy%d-%s", f.Proxy+1, target)
	}
	s := fmt.Sprintf("%6.1fs +%4.1fs %-10s %s", f.At.Seconds(), f.For.Seconds(), f.Kind, target)
	if f.Delay > 0 {
		s += " " + f.Delay.String()
	}
	return s
}

// impairsNode reports whether the fault takes nodes away (or slows them).
func (f Fault) impairsNode() bool { return !onProxy(f.Kind) }

// Plan is the seeded fault schedule for a fault period over nodes nodes
// and proxies proxies: the same seed always gives the same plan. At most
// maxImpaired nodes are impaired at once (a node cut from or slowed for
// one proxy counts), a node has one fault at a time, at most one proxy is
// down at a time (never all of them), and every fault ends within the
// period. No kinds means FaultKinds.
func Plan(seed uint64, period time.Duration, nodes, proxies, maxImpaired int, kinds []FaultKind) []Fault {
	rng := rand.New(rand.NewPCG(seed, 0x6368616f73)) // "chaos"
	if len(kinds) == 0 {
		kinds = FaultKinds
	}
	total := 0
	for _, k := range kinds {
		total += weights[k]
	}
	var plan []Fault
	for t := 2 * time.Second; ; {
		t += between(rng, 500*time.Millisecond, 4*time.Second)
		if t > period-2*time.Second || total == 0 {
			break
		}
		f := Fault{At: t, Kind: pick(rng, kinds, total)}
		switch f.Kind {
		case KillNode:
			f.For = between(rng, time.Second, 10*time.Second)
		case StopNode:
			f.For = between(rng, time.Second, 8*time.Second)
		case KillProxy:
			f.For = between(rng, 500*time.Millisecond, 5*time.Second)
		case DestroyProxy:
			f.For = between(rng, 2*time.Second, 10*time.Second)
		case Latency:
			f.For = between(rng, 3*time.Second, 15*time.Second)
			f.Delay = between(rng, 200*time.Millisecond, 2*time.Second).Round(10 * time.Millisecond)
		case Blackhole:
			f.For = between(rng, 2*time.Second, 10*time.Second)
		case Reset:
			f.For = between(rng, 2*time.Second, 8*time.Second)
		case PartitionProxy:
			f.For = between(rng, 2*time.Second, 15*time.Second)
			f.Proxy = rng.IntN(proxies)
		case LinkLatency:
			f.For = between(rng, 3*time.Second, 15*time.Second)
			f.Delay = between(rng, 200*time.Millisecond, 2*time.Second).Round(10 * time.Millisecond)
			f.Proxy = rng.IntN(proxies)
		}
		f.For = min(f.For, period-f.At)
		want := 1
		if (f.Kind == Latency || f.Kind == Blackhole || f.Kind == Reset || f.Kind == PartitionProxy) && rng.IntN(3) == 0 {
			want = 2
		}
		if f.Targets = freeTargets(rng, plan, f, nodes, proxies, maxImpaired, want); f.Targets != nil {
			plan = append(plan, f)
		}
	}
	return plan
}

// freeTargets picks want targets for f that keep the plan within its
// limits over f's whole time, or nil.
func freeTargets(rng *rand.Rand, plan []Fault, f Fault, nodes, proxies, maxImpaired, want int) []int {
	busy := map[int]bool{}
	for _, p := range plan {
		if p.impairsNode() != f.impairsNode() || p.end() <= f.At || p.At >= f.end() {
			continue
		}
		for _, t := range p.Targets {
			busy[t] = true
		}
	}
	limit, pool := maxImpaired, nodes
	if onProxy(f.Kind) {
		limit, pool = min(1, proxies-1), proxies
	}
	var free []int
	for i := range pool {
		if !busy[i] {
			free = append(free, i)
		}
	}
	want = min(want, limit-len(busy), len(free))
	if want < 1 {
		return nil
	}
	rng.Shuffle(len(free), func(i, j int) { free[i], free[j] = free[j], free[i] })
	targets := free[:want]
	slices.Sort(targets)
	return targets
}

func between(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(rng.Int64N(int64(hi-lo)))
}

func pick(rng *rand.Rand, kinds []FaultKind, total int) FaultKind {
	n := rng.IntN(total)
	for _, k := range kinds {
		if n -= weights[k]; n < 0 {
			return k
		}
	}
	return kinds[len(kinds)-1]
}

// ParseFaultKinds reads a comma-separated list of fault kinds ("" or
// "all": every kind the run can inject).
func ParseFaultKinds(s string) ([]FaultKind, error) {
	if s == "" || s == "all" {
		return nil, nil
	}
	var out []FaultKind
	for _, f := range strings.Split(s, ",") {
		k := FaultKind(strings.TrimSpace(f))
		if !slices.Contains(AllFaultKinds, k) {
			return nil, fmt.Errorf("unknown fault %q (want some of %s)", k, joinKinds(AllFaultKinds))
		}
		out = append(out, k)
	}
	return out, nil
}

func joinKinds(ks []FaultKind) string {
	s := make([]string, len(ks))
	for i, k := range ks {
		s[i] = string(k)
	}
	return strings.Join(s, ",")
}

// checkSchedule reports what is wrong with a fixed schedule (Options.Schedule)
// for nodes nodes and proxies proxies: a fault outside the period, a
// target that doesn't exist, a link fault without test hosts. Unlike a
// drawn plan it may impair any number of nodes at once.
func checkSchedule(plan []Fault, period time.Duration, nodes, proxies int, hosts bool) error {
	for _, f := range plan {
		pool := nodes
		if onProxy(f.Kind) {
			pool = proxies
		}
		switch {
		case !slices.Contains(AllFaultKinds, f.Kind):
			return fmt.Errorf("schedule: unknown fault %q", f.Kind)
		case hostOnly(f.Kind) && !hosts:
			return fmt.Errorf("schedule: %s needs test hosts (--hosts)", f.Kind)
		case f.At < 0 || f.For <= 0 || f.end() > period:
			return fmt.Errorf("schedule: %s: not within the %s fault period", f, period)
		case len(f.Targets) == 0:
			return fmt.Errorf("schedule: %s: no target", f)
		case hostOnly(f.Kind) && (f.Proxy < 0 || f.Proxy >= proxies):
			return fmt.Errorf("schedule: %s: no proxy%d", f, f.Proxy+1)
		case (f.Kind == Latency || f.Kind == LinkLatency) && f.Delay <= 0:
			return fmt.Errorf("schedule: %s: no delay", f)
		}
		for _, t := range f.Targets {
			if t < 0 || t >= pool {
				return fmt.Errorf("schedule: %s: target %d out of range", f, t)
			}
		}
	}
	return nil
}
