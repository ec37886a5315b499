package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/charmbracelet/lipgloss"
	charmlog "github.com/charmbracelet/log"
	"github.com/spf13/cobra"

	"github.com/cring-dev/cring/internal/cluster"
	"github.com/cring-dev/cring/internal/config"
	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/serve"
)

type devFlags struct {
	nodes     int
	dir       string
	portsFrom int
	settings  *config.Flags // the proxy's N, W and logs, resolved as serve's are
}

func newDevCmd() *cobra.Command {
	cmd, _ := newDev()
	return cmd
}

func newDev() (*cobra.Command, *devFlags) {
	f := &devFlags{}
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a local cluster: real Charm servers behind the proxy, in one process",
		Long: `Start N real Charm servers (charm's own server package) sharing one server
key and one account store, with the proxy in front on the standard ports.
Data persists in --dir and is reused on the next start. Stop and start a node
while it runs with "cring dev node stop node1" (the SSH primary) to watch
failover; with --ports-from, add --admin 127.0.0.1:<ports-from+3>.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := applyEnv(cmd.Flags()); err != nil {
				return usageError{err}
			}
			return runDev(cmd, *f)
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&f.nodes, "nodes", 3, "number of Charm nodes")
	fl.StringVar(&f.dir, "dir", defaultDevDir(), "where the cluster keeps its key, accounts and files")
	fl.IntVar(&f.portsFrom, "ports-from", 35353, "first port: SSH on it, HTTP on +1, admin on +3 (Charm's own layout)")
	f.settings = config.Bind(fl, "replicas", "write-quorum", "debug", "log-format")
	fl.Lookup("replicas").Usage = "copies of every file (N)"
	fl.Lookup("write-quorum").Usage = "replicas that must store a write (W; default 2, or N when N < 2)"
	fl.Lookup("debug").Usage = "debug logs, including every request the nodes serve"
	cmd.AddCommand(newDevNodeCmd())
	return cmd, f
}

// defaultDevDir is under the user's data dir (XDG on Linux).
func defaultDevDir() string { return defaultDataDir("dev") }

// defaultDataDir is cring/<sub> under the user's data dir (XDG on Linux).
func defaultDataDir(sub string) string {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "cring", sub)
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "share", "cring", sub)
	}
	return filepath.Join("cring-data", sub)
}

func runDev(cmd *cobra.Command, f devFlags) error {
	if f.nodes < 1 {
		return usageError{fmt.Errorf("--nodes must be at least 1, got %d", f.nodes)}
	}
	if f.portsFrom < 1 || f.portsFrom > 65535-3 {
		return usageError{fmt.Errorf("--ports-from must be between 1 and 65532, got %d", f.portsFrom)}
	}
	set, err := f.settings.Resolve(os.LookupEnv)
	if err != nil {
		return usageError{err}
	}
	if set.LogFormat != "text" && set.LogFormat != "json" {
		return usageError{fmt.Errorf("--log-format must be text or json, got %q", set.LogFormat)}
	}
	if !set.Debug {
		// The embedded Charm servers log every request through the standard
		// and charmbracelet loggers; only --debug wants that.
		stdlog.SetOutput(io.Discard)
		charmlog.SetOutput(io.Discard)
	}
	log := newLogger(set.LogFormat, set.Debug)
	if err := os.MkdirAll(f.dir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	sshAddr, httpAddr, adminAddr := devAddresses(f.portsFrom)
	dc, err := devcluster.New(f.dir, devcluster.Options{Nodes: f.nodes, PublicURL: "http://" + httpAddr, SharedAccounts: true})
	if err != nil {
		return err
	}
	defer dc.Close()
	cfg, err := devConfig(set, f, dc)
	if err != nil {
		return usageError{err}
	}
	srv, err := serve.New(cfg, log)
	if err != nil {
		return usageError{err}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	devControl(ctx, srv, dc)
	if err := srv.Listen(); err != nil {
		return fmt.Errorf("%w (is another cring or charm running? try --ports-from)", err)
	}
	if err := dc.StartAll(ctx); err != nil {
		return err
	}
	printDevSummary(cmd.OutOrStdout(), dc, cfg, sshAddr, httpAddr, adminAddr)
	err = srv.Serve(ctx)
	log.Info("stopping nodes")
	return errors.Join(err, dc.Close())
}

// devAddresses are the proxy's SSH, HTTP and admin addresses: Charm's own
// layout from portsFrom.
func devAddresses(portsFrom int) (sshAddr, httpAddr, adminAddr string) {
	at := func(off int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(portsFrom+off)) }
	return at(0), at(1), at(3)
}

// devConfig is the proxy's configuration in front of dc: the settings dev
// takes from set (N, W, logs), the rest fixed for a local cluster.
func devConfig(set *config.Config, f devFlags, dc *devcluster.Cluster) (*config.Config, error) {
	sshAddr, httpAddr, adminAddr := devAddresses(f.portsFrom)
	cfg := &config.Config{
		Replicas:        set.Replicas,
		WriteQuorum:     set.WriteQuorum,
		PublicURL:       "http://" + httpAddr,
		Address:         httpAddr,
		SSHProxyAddress: sshAddr,
		AdminAddress:    adminAddr,
		HealthInterval:  time.Second,
		Accounts:        config.AccountsShared,
		Debug:           set.Debug,
		LogFormat:       set.LogFormat,
		ServerKey:       dc.KeyPath,
		DataDir:         filepath.Join(f.dir, "proxy"),
		ScanInterval:    10 * time.Minute,
		Backup:          config.Backup{URL: "file://" + absPath(filepath.Join(f.dir, "backup"))},
	}
	for _, n := range dc.Nodes {
		cfg.Nodes = append(cfg.Nodes, cluster.Node{Name: n.Name, URL: n.HTTPURL(), SSH: n.SSHAddr(), Health: n.HealthURL()})
	}
	if err := cfg.Normalize(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// devControl adds the admin routes that stop and start embedded nodes.
func devControl(ctx context.Context, srv *serve.Server, dc *devcluster.Cluster) {
	list := func(w http.ResponseWriter) {
		type node struct {
			Name    string `json:"name"`
			Running bool   `json:"running"`
			HTTP    string `json:"http"`
			SSH     string `json:"ssh"`
		}
		var out []node
		for _, n := range dc.Nodes {
			out = append(out, node{n.Name, n.Running(), n.HTTPURL(), n.SSHAddr()})
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	}
	srv.HandleAdmin("GET /dev/nodes", func(w http.ResponseWriter, r *http.Request) { list(w) })
	srv.HandleAdmin("POST /dev/nodes/{name}/{action}", func(w http.ResponseWriter, r *http.Request) {
		if why := refuseControl(r); why != "" {
			http.Error(w, why, http.StatusForbidden)
			return
		}
		var node *devcluster.Node
		for _, n := range dc.Nodes {
			if n.Name == r.PathValue("name") {
				node = n
			}
		}
		if node == nil {
			http.Error(w, fmt.Sprintf("no node %q", r.PathValue("name")), http.StatusNotFound)
			return
		}
		var err error
		switch r.PathValue("action") {
		case "stop":
			err = dc.Stop(node)
		case "start":
			err = dc.Start(ctx, node)
		default:
			http.Error(w, "action must be stop or start", http.StatusBadRequest)
			return
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		list(w)
	})
}

// devControlHeader must be on every control request: a web page can't send
// it to another origin without a CORS preflight, which is never granted.
const devControlHeader = "X-Cring-Control"

// refuseControl says why r may not stop or start a node ("" when it may).
// A web page the developer visits can reach loopback: its plain POSTs (a
// form, fetch without custom headers) lack the header, a cross-origin
// request carries a foreign Origin, and a name rebound to 127.0.0.1 shows
// in Host.
func refuseControl(r *http.Request) string {
	if r.Header.Get(devControlHeader) != "1" {
		return "refused: control requests carry " + devControlHeader + ": 1 (use cring dev node)"
	}
	if !config.LoopbackAddress(r.Host) {
		return "refused: Host " + r.Host + " is not a loopback address"
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return "refused: cross-origin request from " + o
		}
	}
	return ""
}

func printDevSummary(w io.Writer, dc *devcluster.Cluster, cfg *config.Config, sshAddr, httpAddr, adminAddr string) {
	title := lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Color("212"))
	dim := lipgloss.NewStyle().Foreground(lipgloss.Color("245"))
	cell := lipgloss.NewStyle().PaddingRight(3)
	box := lipgloss.NewStyle().Border(lipgloss.RoundedBorder()).BorderForeground(lipgloss.Color("63")).Padding(0, 1)

	share := ringShare(cfg)
	rows := [][]string{{"node", "http", "ssh", "holds"}}
	for i, n := range dc.Nodes {
		rows = append(rows, []string{n.Name, n.HTTPURL(), n.SSHAddr(), fmt.Sprintf("%.0f%% of files", share[i]*100)})
	}
	rows = append(rows, []string{"proxy", "http://" + httpAddr, sshAddr, "admin http://" + adminAddr})
	widths := make([]int, len(rows[0]))
	for _, r := range rows {
		for c, v := range r {
			widths[c] = max(widths[c], lipgloss.Width(v))
		}
	}
	var lines []string
	for k, r := range rows {
		var cells []string
		for c, v := range r {
			cells = append(cells, cell.Width(widths[c]+3).Render(v))
		}
		line := lipgloss.JoinHorizontal(lipgloss.Top, cells...)
		if k == 0 {
			line = dim.Render(line)
		}
		lines = append(lines, line)
	}
	fmt.Fprintln(w, title.Render(fmt.Sprintf("💍 cring dev: %d Charm nodes behind one proxy, every file on %d, acked at %d", len(dc.Nodes), cfg.Replicas, cfg.WriteQuorum)))
	fmt.Fprintln(w, box.Render(strings.Join(lines, "\n")))
	fmt.Fprintln(w, "Point charm at it:")
	fmt.Fprintln(w)
	_, sshPort, _ := net.SplitHostPort(sshAddr)
	_, httpPort, _ := net.SplitHostPort(httpAddr)
	fmt.Fprintf(w, "export CHARM_HOST=127.0.0.1 CHARM_SSH_PORT=%s CHARM_HTTP_PORT=%s\n", sshPort, httpPort)
	fmt.Fprintln(w)
	fmt.Fprintln(w, dim.Render(failoverHint(progName(os.Args[0]), len(dc.Nodes), cfg.WriteQuorum, adminAddr)))
	fmt.Fprintln(w, dim.Render(fmt.Sprintf("Live view: %s top --admin %s  ·  data in %s  ·  Ctrl-C stops", progName(os.Args[0]), adminAddr, dc.Dir)))
}

// failoverHint is the banner's failover demo: node1, the SSH primary, so
// both HTTP and SSH fail over; honest when a stopped node fails writes.
func failoverHint(prog string, nodes, writeQuorum int, adminAddr string) string {
	admin := ""
	if adminAddr != net.JoinHostPort("127.0.0.1", strconv.Itoa(config.DefaultSSHBackendPort+3)) {
		admin = " --admin " + adminAddr
	}
	cmd := fmt.Sprintf("%s dev node stop%s node1", prog, admin)
	switch {
	case nodes < 2:
		return "One node: nothing to fail over to (--nodes 3 to watch failover)"
	case nodes-1 < writeQuorum:
		return fmt.Sprintf("Watch failover: %s (and start): reads go on, but writes need %d of %d nodes and get 503 until it is back (--nodes 3 to keep writing)", cmd, writeQuorum, nodes)
	default:
		return fmt.Sprintf("Watch failover: %s (the SSH primary), keep using charm, then start it and see it catch up", cmd)
	}
}

// progName is how to run cring again from this shell: the binary as invoked,
// or "go run ./cmd/cring" under go run (its binary is a temporary file).
func progName(arg0 string) string {
	if strings.Contains(arg0, string(filepath.Separator)+"go-build") {
		return "go run ./cmd/cring"
	}
	if arg0 == "" {
		return "cring"
	}
	return arg0
}

// ringShare samples the ring: the fraction of keys each node replicates.
func ringShare(cfg *config.Config) []float64 {
	share := make([]float64, len(cfg.Nodes))
	m, err := cluster.New(cfg.Nodes, cfg.Replicas, cfg.WriteQuorum)
	if err != nil {
		return share
	}
	const samples = 10000
	for k := range samples {
		for _, i := range m.Replicas(fmt.Sprintf("sample/%d", k)) {
			share[i] += 1.0 / samples
		}
	}
	return share
}

func newDevNodeCmd() *cobra.Command {
	var admin, token string
	cmd := &cobra.Command{
		Use:   "node stop|start|list [NAME]",
		Short: "Stop or start a node of a running cring dev",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := applyEnv(cmd.Flags()); err != nil {
				return usageError{err}
			}
			method, path := http.MethodGet, "/dev/nodes"
			switch {
			case args[0] == "list" && len(args) == 1:
			case (args[0] == "stop" || args[0] == "start") && len(args) == 2:
				method, path = http.MethodPost, "/dev/nodes/"+args[1]+"/"+args[0]
			default:
				return usageError{errors.New("usage: cring dev node stop|start NAME, or cring dev node list")}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, method, "http://"+admin+path, nil)
			if err != nil {
				return usageError{err}
			}
			req.Header.Set(devControlHeader, "1")
			withAdminToken(req, token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return fmt.Errorf("reach cring dev at %s: %w", admin, err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s", strings.TrimSpace(string(body)))
			}
			var nodes []struct {
				Name    string `json:"name"`
				Running bool   `json:"running"`
				HTTP    string `json:"http"`
			}
			if err := json.Unmarshal(body, &nodes); err != nil {
				return fmt.Errorf("decode answer: %w", err)
			}
			up := lipgloss.NewStyle().Foreground(lipgloss.Color("42")).Render("● up")
			down := lipgloss.NewStyle().Foreground(lipgloss.Color("203")).Render("○ stopped")
			for _, n := range nodes {
				state := up
				if !n.Running {
					state = down
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%-8s %s  %s\n", n.Name, state, n.HTTP)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&admin, "admin", "127.0.0.1:35356", "admin address of the running cring dev")
	adminTokenFlag(cmd.Flags(), &token)
	return cmd
}

// absPath makes a path absolute for a file:// URL (as is when that fails).
func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
