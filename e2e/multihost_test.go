package e2e

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/chaos"
	"github.com/cring-dev/cring/internal/netns"
)

var (
	multiHostKinds = flag.String("multihost.kinds", "cring-node", "node kinds of the multi-host tests, comma-separated (stock,cring-node: each kind adds a run of every multi-host test)")
	multiHostKeep  = flag.String("multihost.keep", "", "keep every multi-host run's work dir (data, logs, history.jsonl, report.txt) under this directory")
)

// multiHostRun runs a scripted chaos run on test hosts (internal/netns):
// five nodes, two proxies and the clients each on a network namespace of
// its own, the faults exactly schedule, for every kind in -multihost.kinds.
// It fails on anything the checker finds (a lost or wrong write, a
// resurrected delete, a key not on exactly its N replicas after healing,
// a crash or a hang) and hands each passing report to check, if any.
func multiHostRun(t *testing.T, seed uint64, period time.Duration, schedule []chaos.Fault, check func(*testing.T, chaos.Report)) {
	multiHostRunWith(t, chaos.Options{
		Seed: seed, Duration: period, Schedule: schedule,
		ScanInterval: 5 * time.Second, // convergence is checked after a scan of each proxy
	}, check)
}

// multiHostRunWith is multiHostRun with more of the run's options set
// (proxies, a balancer, a shared state, timers); the kind, binaries, test
// hosts, work dir and logging are filled in.
func multiHostRunWith(t *testing.T, opts chaos.Options, check func(*testing.T, chaos.Report)) {
	if os.Geteuid() != 0 {
		t.Skip("test hosts (network namespaces) need root")
	}
	if testing.Short() {
		t.Skip("a multi-host run takes most of a minute")
	}
	cringBin := cringBinary(t)
	charmBin := charmCLI(t)
	for _, kind := range strings.Split(*multiHostKinds, ",") {
		t.Run(strings.TrimSpace(kind), func(t *testing.T) {
			t.Cleanup(func() {
				// chaos.Run removes its hosts even when it fails.
				if left, err := netns.Namespaces(); err != nil || len(left) > 0 {
					t.Errorf("namespaces left behind: %v %v", left, err)
				}
			})
			o := opts
			o.Kind = chaos.Kind(strings.TrimSpace(kind))
			o.CringBin, o.CharmBin = cringBin, charmBin
			o.Hosts, o.Dir, o.Logf = true, t.TempDir(), t.Logf
			if *multiHostKeep != "" {
				o.Dir, o.Keep = filepath.Join(*multiHostKeep, strings.ReplaceAll(t.Name(), "/", "-")), true
			}
			rep, err := chaos.Run(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			var b strings.Builder
			rep.WriteDetails(&b)
			if !rep.Pass() {
				t.Fatalf("%s\n%s", rep.Summary(), b.String())
			}
			t.Logf("%s\n%s", rep.Summary(), b.String())
			if rep.Acked < 100 {
				t.Errorf("only %d operations acknowledged: the run tested little", rep.Acked)
			}
			if check != nil {
				check(t, rep)
			}
		})
	}
}

// TestMultiHostPartition: proxy1 is cut from node1 and node2 for most of
// the run while proxy2 still reaches them (an asymmetric partition, made
// with firewall rules in proxy1's host); the clients write, overwrite,
// delete and read through both proxies all along. After the partition
// heals, every acknowledged write is on its N replicas with its bytes and
// no acknowledged delete came back; and the proxies' own health checks
// saw the partition as it was: proxy1 lost node1 and node2 while proxy2
// still had them.
func TestMultiHostPartition(t *testing.T) {
	const period = 30 * time.Second
	schedule := []chaos.Fault{
		{At: 3 * time.Second, For: 22 * time.Second, Kind: chaos.PartitionProxy, Proxy: 0, Targets: []int{0, 1}},
	}
	multiHostRun(t, 31, period, schedule, func(t *testing.T, rep chaos.Report) {
		checkProxy1Partitioned(t, rep, 2)
	})
}

// TestMultiHostLinkLatency: every proxy→node link has a latency of its
// own (100 ms to 1.2 s per round trip, on four links of the ten, the
// other six none) for the whole run, as between hosts in different
// places; the clients work through both proxies, and the checker finds
// nothing once the latency is lifted.
func TestMultiHostLinkLatency(t *testing.T) {
	const period = 30 * time.Second
	link := func(proxy, node int, d time.Duration) chaos.Fault {
		return chaos.Fault{At: time.Second, For: period - 2*time.Second, Kind: chaos.LinkLatency, Proxy: proxy, Targets: []int{node}, Delay: d}
	}
	schedule := []chaos.Fault{
		link(0, 0, 100*time.Millisecond),
		link(0, 1, 600*time.Millisecond),
		link(1, 2, 300*time.Millisecond),
		link(1, 3, 1200*time.Millisecond),
	}
	multiHostRun(t, 32, period, schedule, nil)
}

// checkProxy1Partitioned checks a run with proxies proxies in which proxy1
// was cut from node1 and node2: proxy1 saw them down, and the others kept
// them while it did.
func checkProxy1Partitioned(t *testing.T, rep chaos.Report, proxies int) {
	t.Helper()
	if len(rep.Views) != proxies {
		t.Fatalf("views of %d proxies, want %d", len(rep.Views), proxies)
	}
	for _, n := range []string{"node1", "node2"} {
		if !slices.Contains(rep.Views[0].Down, n) {
			t.Errorf("proxy1 never saw %s down through its partition (%s)", n, rep.Views[0])
		}
		if !slices.Contains(rep.Disagreed, n) {
			t.Errorf("the proxies never disagreed on %s: the others did not keep it while proxy1 lost it (disagreed on %v)", n, rep.Disagreed)
		}
	}
}
