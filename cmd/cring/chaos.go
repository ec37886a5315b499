package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/charmbracelet/lipgloss"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/cring-dev/cring/internal/chaos"
	"github.com/cring-dev/cring/internal/config"
	"github.com/cring-dev/cring/internal/haproxy"
)

type chaosFlags struct {
	seed      uint64
	runs      int
	duration  time.Duration
	nodes     int
	kind      string
	charmBin  string
	cringBin  string
	dir       string
	keep      bool
	rate      float64
	converge  time.Duration
	settle    time.Duration
	scan      time.Duration
	faults    string
	hangAfter time.Duration
	hosts     bool
	proxies   int
	balancer  string
	haproxy   string
	state     bool
}

// errChaosFailed: a run found something; the report is already printed.
var errChaosFailed = errors.New("chaos run failed")

func newChaosCmd() *cobra.Command {
	cmd, _ := newChaos()
	return cmd
}

// newChaos is the chaos command and the flags it parses into.
func newChaos() (*cobra.Command, *chaosFlags) {
	f := &chaosFlags{}
	cmd := &cobra.Command{
		Use:   "chaos",
		Short: "Seeded chaos run of a local cluster with a checker of every acknowledged operation",
		Long: `Start real nodes (stock charm serve or cring node, each its own process) behind
fault-injecting fronts, two cring serve processes on one cring.yaml, and clients
writing, overwriting, deleting, reading and listing through both proxies while a
schedule drawn from --seed kills (-9), stops (SIGSTOP) and restarts nodes, kills
and restarts proxies, and adds latency, blackholes and resets in front of nodes.
When the faults end the cluster must converge by itself; then every key is read
and listed through both proxies and checked against the history: lost writes,
resurrected deletes, bytes nobody wrote, keys not on exactly N replicas, crashes
and hangs. Prints one summary line per seed and the details of every failure;
exits 1 when anything was found. Every flag can also be set with CRING_<FLAG>.

With --hosts (root, ip and iptables) every node, proxy and the clients run on a
test host of their own (a network namespace on a private bridge): network faults
are firewall rules between hosts, and two more faults cut one proxy from one or
two nodes (partition-proxy) and slow one proxy's link to one node (link-latency)
while the other proxy still reaches them.

--proxies runs more proxies; --balancer haproxy puts a real HAProxy in front of
them (TCP, /readyz checks) and sends every client operation through it; --state
gives the proxies a shared PostgreSQL (started for the run) and adds the
destroy-proxy fault: a proxy killed with its data dir and replaced by a fresh
one, after which the cluster must converge within 30 s. See docs/chaos.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			set, err := applyChaosEnv(cmd.Flags(), os.LookupEnv)
			if err != nil {
				return usageError{err}
			}
			o, err := f.options(set)
			if err != nil {
				return usageError{err}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runChaos(ctx, cmd.OutOrStdout(), o, f.runs)
		},
	}
	fl := cmd.Flags()
	fl.Uint64Var(&f.seed, "seed", 0, "seed of the fault schedule and the clients' operations (default: drawn from the clock, and printed)")
	fl.IntVar(&f.runs, "runs", 1, "run this many seeds: --seed, --seed+1, …")
	fl.DurationVar(&f.duration, "duration", 2*time.Minute, "fault period of each run")
	fl.IntVar(&f.nodes, "nodes", 5, "number of Charm nodes")
	fl.StringVar(&f.kind, "kind", string(chaos.KindStock), "node kind: stock (charm serve) or cring-node")
	fl.StringVar(&f.charmBin, "charm-bin", "", "the charm binary for stock nodes (default: charm on PATH)")
	fl.StringVar(&f.cringBin, "cring-bin", "", "the cring binary the proxies and cring nodes run (default: this one)")
	fl.StringVar(&f.dir, "dir", "", "work directory (default: a temporary one)")
	fl.BoolVar(&f.keep, "keep", false, "keep the work directory: data, logs, history.jsonl, finals.jsonl, report.txt")
	fl.Float64Var(&f.rate, "rate", 30, "client operations per second, over both proxies")
	fl.DurationVar(&f.converge, "converge-timeout", 0, "how long the healed cluster may take to put every key on exactly N replicas (default: 60s, 30s when the plan destroys a proxy)")
	fl.DurationVar(&f.settle, "settle", 0, "how long the converged cluster must then stay unchanged before the final reads (default: --scan-interval + 2s)")
	fl.DurationVar(&f.scan, "scan-interval", 10*time.Second, "the proxies' --scan-interval")
	fl.StringVar(&f.faults, "faults", "all", "comma-separated fault kinds to draw from: kill-node,stop-node,kill-proxy,latency,blackhole,reset,destroy-proxy, and with --hosts partition-proxy,link-latency (all: destroy-proxy only with --state)")
	fl.BoolVar(&f.hosts, "hosts", false, "every node, proxy and the clients on a test host of their own (network namespaces; needs root, ip and iptables): adds the partition-proxy and link-latency faults")
	fl.DurationVar(&f.hangAfter, "hang-after", 30*time.Second, "a client operation that takes this long is a hang")
	fl.IntVar(&f.proxies, "proxies", 2, "number of cring serve processes")
	fl.StringVar(&f.balancer, "balancer", "", "haproxy: every client operation through a real HAProxy in front of the proxies (default: the clients use the proxies in turn)")
	fl.StringVar(&f.haproxy, "haproxy-bin", "", "the haproxy binary for --balancer haproxy (default: haproxy on PATH, or /usr/sbin/haproxy)")
	fl.BoolVar(&f.state, "state", false, "start a PostgreSQL for the run and give every proxy --state on it (shared hints, users, heartbeats); adds the destroy-proxy fault")
	return cmd, f
}

// applyChaosEnv sets the flags not given from CRING_<FLAG> variables,
// except CRING_STATE: for every other command it is the proxies'
// PostgreSQL URL, not --state's yes or no.
func applyChaosEnv(fs *pflag.FlagSet, getenv func(string) (string, bool)) (map[string]bool, error) {
	return config.ApplyEnv(fs, func(k string) (string, bool) {
		if k == "CRING_STATE" {
			return "", false
		}
		return getenv(k)
	})
}

func (f *chaosFlags) options(set map[string]bool) (chaos.Options, error) {
	kinds, err := chaos.ParseFaultKinds(f.faults)
	if err != nil {
		return chaos.Options{}, fmt.Errorf("--faults: %w", err)
	}
	switch {
	case f.kind != string(chaos.KindStock) && f.kind != string(chaos.KindCringNode):
		return chaos.Options{}, fmt.Errorf("--kind %q: want stock or cring-node", f.kind)
	case f.nodes < 3:
		return chaos.Options{}, fmt.Errorf("--nodes must be at least 3, got %d", f.nodes)
	case f.runs < 1:
		return chaos.Options{}, fmt.Errorf("--runs must be at least 1, got %d", f.runs)
	case f.duration < 10*time.Second:
		return chaos.Options{}, fmt.Errorf("--duration must be at least 10s, got %s", f.duration)
	case f.rate <= 0:
		return chaos.Options{}, fmt.Errorf("--rate must be positive, got %g", f.rate)
	case f.runs > 1 && f.dir != "":
		return chaos.Options{}, errors.New("--dir takes one run; with --runs each run gets its own temporary directory")
	case f.proxies < 1:
		return chaos.Options{}, fmt.Errorf("--proxies must be at least 1, got %d", f.proxies)
	case f.balancer != "" && f.balancer != chaos.BalancerHAProxy:
		return chaos.Options{}, fmt.Errorf("--balancer %q: want haproxy", f.balancer)
	case f.converge < 0:
		return chaos.Options{}, fmt.Errorf("--converge-timeout must not be negative, got %s", f.converge)
	}
	for _, k := range kinds {
		if !f.hosts && k != chaos.DestroyProxy && !slices.Contains(chaos.FaultKinds, k) {
			return chaos.Options{}, fmt.Errorf("--faults: %s needs --hosts", k)
		}
	}
	if !set["seed"] {
		f.seed = uint64(time.Now().UnixNano() % 1_000_000)
	}
	o := chaos.Options{
		Seed: f.seed, Duration: f.duration, Nodes: f.nodes, Kind: chaos.Kind(f.kind),
		CharmBin: f.charmBin, CringBin: f.cringBin, Dir: f.dir, Keep: f.keep,
		Rate: f.rate, ConvergeTimeout: f.converge, Settle: f.settle, ScanInterval: f.scan, Faults: kinds, HangAfter: f.hangAfter,
		Hosts: f.hosts, Proxies: f.proxies, Balancer: f.balancer, HAProxyBin: f.haproxy, State: f.state,
	}
	if o.Balancer == chaos.BalancerHAProxy && o.HAProxyBin == "" {
		if o.HAProxyBin, err = haproxy.Binary(); err != nil {
			return o, fmt.Errorf("--balancer haproxy needs HAProxy (or --haproxy-bin): %w", err)
		}
	}
	if o.CringBin == "" {
		if o.CringBin, err = os.Executable(); err != nil {
			return o, fmt.Errorf("--cring-bin: %w", err)
		}
	}
	if o.Kind == chaos.KindStock && o.CharmBin == "" {
		if o.CharmBin, err = exec.LookPath("charm"); err != nil {
			return o, errors.New("stock nodes need the charm binary: --charm-bin or charm on PATH (go install github.com/charmbracelet/charm@v0.12.6)")
		}
	}
	return o, nil
}

// runChaos runs seeds o.Seed… one after the other and prints each result.
func runChaos(ctx context.Context, w io.Writer, o chaos.Options, runs int) error {
	dim := lipgloss.NewStyle().Foreground(lipgloss.Color("245"))
	title := lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Color("212"))
	pass := lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Color("42"))
	fail := lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Color("203"))
	failed := false
	for i := range runs {
		ro := o
		ro.Seed = o.Seed + uint64(i)
		start := time.Now()
		ro.Logf = func(format string, args ...any) {
			fmt.Fprintln(w, dim.Render(fmt.Sprintf("%6.1fs ", time.Since(start).Seconds())+fmt.Sprintf(format, args...)))
		}
		proxies := fmt.Sprintf("%d proxies", ro.Proxies)
		if ro.Proxies == 1 {
			proxies = "1 proxy"
		}
		if ro.Balancer != "" {
			proxies += " behind " + ro.Balancer
		}
		if ro.State {
			proxies += " on a shared PostgreSQL"
		}
		where := ""
		if ro.Hosts {
			where = ", each on a host of its own"
		}
		fmt.Fprintln(w, title.Render(fmt.Sprintf("💍 cring chaos: seed %d, %d %s nodes, %s%s, faults for %s", ro.Seed, ro.Nodes, ro.Kind, proxies, where, ro.Duration)))
		rep, err := chaos.Run(ctx, ro)
		if err != nil {
			return err
		}
		if !rep.Pass() {
			failed = true
			rep.WriteDetails(w)
			fmt.Fprintln(w, fail.Render(rep.Summary()))
		} else {
			if rep.Dir != "" {
				fmt.Fprintln(w, dim.Render("work dir kept: "+rep.Dir))
			}
			fmt.Fprintln(w, pass.Render(rep.Summary()))
		}
	}
	if failed {
		return errChaosFailed
	}
	return nil
}
