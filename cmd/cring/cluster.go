package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/cring-dev/cring/internal/clusterinit"
	"github.com/spf13/cobra"
)

func newClusterCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Set up a cluster of Charm nodes behind cring",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newClusterInitCmd())
	return cmd
}

type clusterInitFlags struct {
	dir         string
	nodes       int
	publicURL   string
	hosts       []string
	replicas    int
	writeQuorum int
	zones       []string
	dataDir     string
}

func newClusterInitCmd() *cobra.Command {
	var f clusterInitFlags
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Generate keys and configuration for a new cluster",
		Long: `Generate the cluster's shared server key pair and everything its nodes and the
proxy need: env files, data directories (with the key in place) and systemd
units for stock "charm serve" nodes, the proxy's cring.yaml and unit, and a
compose file. Existing keys are never overwritten. Every flag can also be set
with CRING_<FLAG>, e.g. CRING_HOSTS=10.0.0.1,10.0.0.2,10.0.0.3.`,
		Example: `  cring cluster init --public-url https://charm.example.com:35354 \
    --hosts 10.0.0.1,10.0.0.2,10.0.0.3`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o, err := f.options(cmd)
			if err != nil {
				return usageError{err}
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			res, err := clusterinit.Generate(ctx, o)
			if err != nil {
				var ke *clusterinit.KeysExistError
				if errors.As(err, &ke) {
					return usageError{err}
				}
				return err
			}
			printClusterSummary(cmd.OutOrStdout(), res)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.dir, "dir", "cring-cluster", "output directory")
	fl.IntVar(&f.nodes, "nodes", clusterinit.DefaultNodes, "number of Charm nodes (with --hosts: one per host)")
	fl.StringVar(&f.publicURL, "public-url", "", "the URL clients use to reach the proxy, which every node signs tokens for (required)")
	fl.StringSliceVar(&f.hosts, "hosts", nil, "node host names or IP addresses, comma-separated (default charm1..charmN)")
	fl.IntVar(&f.replicas, "replicas", 0, "copies of every file (N); default 3, clamped to the node count")
	fl.IntVar(&f.writeQuorum, "write-quorum", 0, "replicas that must store a write before it is acknowledged (W); default 2, or N when N < 2")
	fl.StringSliceVar(&f.zones, "zones", nil, "one zone per node, comma-separated; replicas spread across zones first")
	fl.StringVar(&f.dataDir, "data-dir", clusterinit.DefaultDataDir, "the nodes' data directory (CHARM_SERVER_DATA_DIR); "+clusterinit.NamePlaceholder+" becomes the node's name")
	return cmd
}

// options merges CRING_* variables into the flags; Generate validates the rest.
func (f *clusterInitFlags) options(cmd *cobra.Command) (clusterinit.Options, error) {
	set, err := applyEnv(cmd.Flags())
	if err != nil {
		return clusterinit.Options{}, err
	}
	if set["replicas"] && f.replicas < 1 {
		return clusterinit.Options{}, fmt.Errorf("--replicas must be at least 1, got %d", f.replicas)
	}
	if set["write-quorum"] && f.writeQuorum < 1 {
		return clusterinit.Options{}, fmt.Errorf("--write-quorum must be at least 1, got %d", f.writeQuorum)
	}
	o := clusterinit.Options{
		Dir:         f.dir,
		PublicURL:   f.publicURL,
		Hosts:       f.hosts,
		Replicas:    f.replicas,
		WriteQuorum: f.writeQuorum,
		Zones:       f.zones,
		DataDir:     f.dataDir,
	}
	// An explicit --nodes must agree with --hosts; the default gives way to it.
	if set["nodes"] || len(f.hosts) == 0 {
		o.Nodes = f.nodes
		if o.Nodes < 1 {
			return clusterinit.Options{}, fmt.Errorf("--nodes must be at least 1, got %d", f.nodes)
		}
	}
	if err := o.Validate(); err != nil {
		return clusterinit.Options{}, err
	}
	return o, nil
}

func printClusterSummary(w io.Writer, r *clusterinit.Result) {
	dir := r.Dir
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	fmt.Fprintf(w, "Generated a %d-node cluster in %s\n", len(r.Nodes), dir)
	fmt.Fprintf(w, "  public URL %s, %d replicas, write quorum %d\n", r.PublicURL, r.Replicas, r.WriteQuorum)
	fmt.Fprintf(w, "  server key %s\n\n", r.PublicKey)
	fmt.Fprintf(w, "  %-34s %s\n", "keys/", "the shared server key pair (secret: keep a copy safe)")
	for _, n := range r.Nodes {
		desc := "node on " + n.Host + ", data dir " + n.DataDir
		if n.Zone != "" {
			desc += ", zone " + n.Zone
		}
		fmt.Fprintf(w, "  %-34s %s\n", filepath.ToSlash(n.Dir)+"/", desc)
	}
	fmt.Fprintf(w, "  %-34s %s\n", "cring.yaml, cring.service", "the proxy")
	fmt.Fprintf(w, "  %-34s %s\n", "compose.yaml, compose/", "everything on one Docker host instead")
	fmt.Fprintf(w, "  %-34s %s\n\n", "README.txt", "what goes where")
	fmt.Fprintf(w, "%d files written. Next:\n", len(r.Files))
	fmt.Fprintln(w, "  1. on each node: nodes/<name>/charm.env to /etc/charm/, the contents of nodes/<name>/data/")
	fmt.Fprintln(w, "     into its data dir (owned by the charm user), charm.service to /etc/systemd/system/;")
	fmt.Fprintln(w, "     systemctl enable --now charm")
	fmt.Fprintln(w, "  2. on the proxy: cring.yaml to /etc/cring/, cring.service to /etc/systemd/system/;")
	fmt.Fprintln(w, "     systemctl enable --now cring")
	fmt.Fprintln(w, "  3. curl http://<proxy>:35356/readyz")
	fmt.Fprintln(w, "Details: README.txt in the output directory, and docs/deploy.md.")
}
