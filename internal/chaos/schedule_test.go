package chaos

import (
	"reflect"
	"slices"
	"testing"
	"time"
)

// TestPlan: the same seed gives the same plan, and every plan keeps its
// limits: at most maxImpaired nodes and one proxy impaired at any
// instant, one fault per target at a time, everything over by the end.
func TestPlan(t *testing.T) {
	for _, tt := range []struct {
		name            string
		period          time.Duration
		nodes, impaired int
		kinds           []FaultKind
	}{
		{"default", 90 * time.Second, 5, 2, nil},
		{"long", 10 * time.Minute, 5, 2, nil},
		{"three nodes", 2 * time.Minute, 3, 1, nil},
		{"network only", 2 * time.Minute, 5, 2, []FaultKind{Latency, Blackhole, Reset}},
		{"proxies only", time.Minute, 5, 2, []FaultKind{KillProxy}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for seed := range uint64(20) {
				plan := Plan(seed, tt.period, tt.nodes, 2, tt.impaired, tt.kinds)
				if again := Plan(seed, tt.period, tt.nodes, 2, tt.impaired, tt.kinds); !reflect.DeepEqual(plan, again) {
					t.Fatalf("seed %d: two plans differ", seed)
				}
				if len(plan) < int(tt.period/(10*time.Second)) {
					t.Errorf("seed %d: only %d faults in %s", seed, len(plan), tt.period)
				}
				checkPlan(t, seed, plan, tt.period, tt.impaired, tt.kinds)
			}
		})
	}
	if reflect.DeepEqual(Plan(1, time.Minute, 5, 2, 2, nil), Plan(2, time.Minute, 5, 2, 2, nil)) {
		t.Error("seeds 1 and 2 give the same plan")
	}
}

func checkPlan(t *testing.T, seed uint64, plan []Fault, period time.Duration, maxImpaired int, kinds []FaultKind) {
	t.Helper()
	for _, f := range plan {
		if f.end() > period || f.For <= 0 || len(f.Targets) == 0 {
			t.Errorf("seed %d: %s out of the period or empty", seed, f)
		}
		if kinds != nil && !slices.Contains(kinds, f.Kind) {
			t.Errorf("seed %d: %s not among %v", seed, f, kinds)
		}
		if f.Kind == Latency && (f.Delay < 200*time.Millisecond || f.Delay > 2*time.Second) {
			t.Errorf("seed %d: %s latency out of 200ms–2s", seed, f)
		}
	}
	// At every step's instant, count what is impaired.
	for _, s := range steps(plan) {
		nodes, proxies := map[int]int{}, map[int]int{}
		for _, f := range plan {
			if f.At > s.at || f.end() <= s.at {
				continue
			}
			for _, tg := range f.Targets {
				if f.Kind == KillProxy {
					proxies[tg]++
				} else {
					nodes[tg]++
				}
			}
		}
		if len(nodes) > maxImpaired || len(proxies) > 1 {
			t.Errorf("seed %d at %s: %d nodes and %d proxies impaired", seed, s.at, len(nodes), len(proxies))
		}
		for tg, n := range nodes {
			if n > 1 {
				t.Errorf("seed %d at %s: node%d has %d faults at once", seed, s.at, tg+1, n)
			}
		}
	}
}

func TestParseFaultKinds(t *testing.T) {
	for _, tt := range []struct {
		in      string
		want    []FaultKind
		wantErr bool
	}{
		{"", nil, false},
		{"all", nil, false},
		{"kill-node, reset", []FaultKind{KillNode, Reset}, false},
		{"kill-node,flood", nil, true},
	} {
		got, err := ParseFaultKinds(tt.in)
		if (err != nil) != tt.wantErr || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseFaultKinds(%q) = %v, %v", tt.in, got, err)
		}
	}
}
