package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/cring-dev/cring/internal/clusterinit"
	"github.com/cring-dev/cring/internal/nodetls"
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
	accounts    string
	stock       bool
	nodeTLS     bool
}

func newClusterInitCmd() *cobra.Command {
	var f clusterInitFlags
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Generate keys and configuration for a new cluster",
		Long: `Generate the cluster's shared server key pair and everything its nodes and the
proxy need: env files, data directories (with the key in place) and systemd
units for the nodes, the proxy's cring.yaml and unit, and a compose file.

The nodes are "cring node" processes keeping accounts in one PostgreSQL
(--accounts), so any node serves any user; --stock generates stock
"charm serve" nodes with their own sqlite instead. The proxy has self-healing
on: cring.yaml names the shared key and a data directory, which its unit keeps
(StateDirectory). Existing keys are never overwritten. Every flag can also be
set with CRING_<FLAG>, e.g. CRING_HOSTS=10.0.0.1,10.0.0.2,10.0.0.3.`,
		Example: `  cring cluster init --public-url https://charm.example.com:35354 \
    --hosts 10.0.0.1,10.0.0.2,10.0.0.3 \
    --accounts postgres://charm:secret@10.0.0.10:5432/charm
  cring cluster init --stock --public-url http://10.0.0.9:35354 --hosts 10.0.0.1,10.0.0.2,10.0.0.3`,
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
	fl.StringVar(&f.accounts, "accounts", "", "PostgreSQL URL every cring node keeps accounts in, e.g. postgres://charm:secret@db:5432/charm (required unless --stock)")
	fl.BoolVar(&f.stock, "stock", false, "stock charm serve nodes, each with its own sqlite accounts, instead of cring nodes")
	fl.BoolVar(&f.nodeTLS, "node-tls", false, "nodes serve TLS with certificates from a CA generated here, which the proxy trusts (node-ca); for nodes reached over networks you don't control")
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
		Accounts:    f.accounts,
		Stock:       f.stock,
		NodeTLS:     f.nodeTLS,
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
	kind := "cring nodes on shared PostgreSQL accounts"
	bin := "the cring binary"
	if r.Stock {
		kind, bin = "stock charm serve nodes", "the charm v0.12.6 binary"
	}
	fmt.Fprintf(w, "Generated a %d-node cluster (%s) in %s\n", len(r.Nodes), kind, dir)
	fmt.Fprintf(w, "  public URL %s, %d replicas, write quorum %d, self-healing on\n", r.PublicURL, r.Replicas, r.WriteQuorum)
	fmt.Fprintf(w, "  server key %s\n\n", r.PublicKey)
	fmt.Fprintf(w, "  %-34s %s\n", "keys/", "the shared server key pair (secret: keep a copy safe)")
	if !r.NodeTLSUntil.IsZero() {
		fmt.Fprintf(w, "  %-34s %s\n", "keys/node-ca.{pem,key}", "the nodes' TLS CA (the .key is secret); certificates valid until "+r.NodeTLSUntil.UTC().Format("2006-01-02"))
	}
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
	fmt.Fprintf(w, "  1. on each node: a charm user, nodes/<name>/charm.env to /etc/charm/, the contents of\n")
	fmt.Fprintf(w, "     nodes/<name>/data/ into its data dir (owned by charm), charm.service to\n")
	fmt.Fprintf(w, "     /etc/systemd/system/, %s to /usr/local/bin/; systemctl enable --now charm\n", bin)
	if !r.NodeTLSUntil.IsZero() {
		fmt.Fprintf(w, "     and nodes/<name>/tls/ to %s (node.key readable by charm)\n", clusterinit.NodeTLSDir)
	}
	fmt.Fprintln(w, "  2. on the proxy: a cring user, cring.yaml and keys/charm_server_ed25519 (group cring, 0640)")
	fmt.Fprintln(w, "     to /etc/cring/, cring.service to /etc/systemd/system/; systemctl enable --now cring")
	if !r.NodeTLSUntil.IsZero() {
		fmt.Fprintf(w, "     and keys/node-ca.pem to %s\n", clusterinit.NodeCAPath)
	}
	fmt.Fprintln(w, "  3. curl http://127.0.0.1:35356/readyz on the proxy")
	fmt.Fprintln(w, "Details: README.txt in the output directory, and docs/deploy.md.")
}

// newProbeCmd is a health check for containers, whose images have no curl:
// compose.yaml runs it inside every service.
func newProbeCmd() *cobra.Command {
	var timeout time.Duration
	var ca string
	cmd := &cobra.Command{
		Use:   "probe URL",
		Short: "Exit 0 when URL answers 2xx (a container health check)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, args[0], nil)
			if err != nil {
				return usageError{fmt.Errorf("probe %q: %w", args[0], err)}
			}
			tlsConf, err := nodetls.ClientConfig(ca)
			if err != nil {
				return usageError{fmt.Errorf("--ca: %w", err)}
			}
			resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: tlsConf}}).Do(req)
			if err != nil {
				return fmt.Errorf("probe: %w", err)
			}
			defer resp.Body.Close()
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
			if resp.StatusCode/100 != 2 {
				return fmt.Errorf("probe %s: %s", args[0], resp.Status)
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 3*time.Second, "how long the URL may take to answer")
	cmd.Flags().StringVar(&ca, "ca", "", "PEM CA certificate(s) trusted for an https URL, besides the system's roots (a node's private CA)")
	return cmd
}
