package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/cring-dev/cring/internal/bench"
)

type benchFlags struct {
	nodes     int
	duration  time.Duration
	workloads []string
	dir       string
	bigUpload string
	json      bool
	pinProxy  bool
	slowDelay time.Duration
	inProcess bool
	replay    int
}

func newBenchCmd() *cobra.Command {
	var f benchFlags
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure the proxy against the physical limit of replication on this machine",
		Long: `Start a local cluster of real Charm servers (this binary's "node", each its own
process) and the proxy (this binary's "serve", as its own process), then measure
each workload side by side: one node direct, the client itself sending every
write to all N replicas (the limit of N-way replication on this machine), and
through the proxy. read-slow and upload-slow compare the proxy with one node
answering late against the same proxy with every node healthy; upload-degraded
with one node down (every write hinted).

Workloads: ` + strings.Join(bench.Workloads(), ", ") + ` (all but the peers by
default). "peers" runs peers-read and peers-upload: 4 KiB reads and uploads
through one node direct, nginx, HAProxy (plain reverse proxies to one node,
run unprivileged on loopback; scripts/install-peers installs them), a bare
httputil.ReverseProxy (go-floor) and cring, in the same rounds, and prints the
CPU per request of each and of the nodes.
Prints ops/s, MB/s, p50, p99, the proxy's peak RSS and the ratios proxy/limit
against the targets; --json prints the same as JSON. See docs/performance.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := applyEnv(cmd.Flags()); err != nil {
				return usageError{err}
			}
			o, err := f.options()
			if err != nil {
				return usageError{err}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runBench(ctx, o, f.json)
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&f.nodes, "nodes", 3, "number of Charm nodes")
	fl.DurationVar(&f.duration, "duration", 5*time.Second, "measured time per workload and mode (large uploads: 4x)")
	fl.StringSliceVar(&f.workloads, "workloads", nil, "comma-separated subset to run, or peers (default: "+strings.Join(bench.DefaultWorkloads(), ",")+")")
	fl.StringVar(&f.dir, "dir", "", "where the cluster's data (removed afterwards) and the proxy's log (kept) go (default: a temporary directory, removed afterwards)")
	fl.StringVar(&f.bigUpload, "big-upload", "512MiB", "size of the upload the proxy's peak RSS growth is measured over")
	fl.BoolVar(&f.json, "json", false, "print the results as JSON")
	fl.DurationVar(&f.slowDelay, "slow-delay", 200*time.Millisecond, "how late the slowed node answers in read-slow and upload-slow")
	fl.IntVar(&f.replay, "replay-files", 10_000, "writes the stopped node misses in the replay workload")
	fl.BoolVar(&f.inProcess, "nodes-in-process", false, "run the nodes inside the bench process instead of as their own cring node processes (cheaper baselines than any real client gets)")
	fl.BoolVar(&f.pinProxy, "pin-proxy", false, "give the proxy a CPU of its own (the last one) and the client and nodes the others, as if the proxy had its own machine (Linux, needs taskset)")
	cmd.AddCommand(newBenchFloorCmd())
	return cmd
}

// newBenchFloorCmd is the peers workloads' Go floor, run by the bench as
// its own process like the proxy.
func newBenchFloorCmd() *cobra.Command {
	var addr, upstream string
	cmd := &cobra.Command{
		Use:    "floor",
		Short:  "Serve a bare httputil.ReverseProxy in front of one node (the bench's Go floor)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return bench.Floor(ctx, addr, upstream)
		},
	}
	cmd.Flags().StringVar(&addr, "address", "127.0.0.1:0", "listen address")
	cmd.Flags().StringVar(&upstream, "upstream", "", "the node's base URL (http://host:port)")
	return cmd
}

func (f *benchFlags) options() (bench.Options, error) {
	if f.nodes < 1 {
		return bench.Options{}, fmt.Errorf("--nodes must be at least 1, got %d", f.nodes)
	}
	if f.slowDelay <= 0 {
		return bench.Options{}, fmt.Errorf("--slow-delay must be positive, got %s", f.slowDelay)
	}
	if f.duration <= 0 {
		return bench.Options{}, fmt.Errorf("--duration must be positive, got %s", f.duration)
	}
	big, err := bench.ParseSize(f.bigUpload)
	if err != nil {
		return bench.Options{}, fmt.Errorf("--big-upload: %w", err)
	}
	if big <= 0 {
		return bench.Options{}, fmt.Errorf("--big-upload must be positive (leave rss out of --workloads to skip it)")
	}
	var workloads []string
	for _, w := range f.workloads {
		if w = strings.TrimSpace(w); w == "" {
			continue
		}
		if !slices.Contains(bench.Workloads(), w) && w != bench.WorkloadPeers {
			return bench.Options{}, fmt.Errorf("--workloads: unknown workload %q (known: %s)", w, strings.Join(bench.Workloads(), ", "))
		}
		workloads = append(workloads, w)
	}
	return bench.Options{
		Nodes:          f.nodes,
		Duration:       f.duration,
		Workloads:      workloads,
		Dir:            f.dir,
		BigUpload:      big,
		Progress:       os.Stderr,
		PinProxy:       f.pinProxy,
		SlowDelay:      f.slowDelay,
		NodesInProcess: f.inProcess,
		ReplayFiles:    f.replay,
	}, nil
}

func runBench(ctx context.Context, o bench.Options, asJSON bool) error {
	rep, err := bench.Run(ctx, o)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("interrupted: %w", err)
		}
		return err
	}
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	fmt.Fprintln(os.Stderr)
	return rep.WriteTable(os.Stdout)
}
