package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/charmbracelet/bubbles/progress"
	"github.com/charmbracelet/lipgloss"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/cring-dev/cring/internal/cluster"
	"github.com/cring-dev/cring/internal/clusterstate"
	"github.com/cring-dev/cring/internal/config"
	"github.com/cring-dev/cring/internal/heal"
	"github.com/cring-dev/cring/internal/health"
	"github.com/cring-dev/cring/internal/nodetls"
	"github.com/cring-dev/cring/internal/serve"
	"github.com/cring-dev/cring/internal/token"
)

func newRepairCmd() *cobra.Command {
	cmd, _ := newRepair()
	return cmd
}

// repairFlags is what cring repair is told.
type repairFlags struct {
	settings  *config.Flags // the proxy's: nodes, N, W, key, issuer, data dir
	users     []string
	dry, deep bool
	jsonOut   bool
}

func newRepair() (*cobra.Command, *repairFlags) {
	f := &repairFlags{}
	cmd := &cobra.Command{
		Use:   "repair",
		Short: "Scan the cluster once, report and fix every key not on exactly its N replicas",
		Long: `One anti-entropy pass, the same a running proxy makes in the background:
walk every user's files on every node, and bring each key back to its N
replicas with the winning copy (newest acknowledged write; deletes stay
deleted). Users come from --user, or else from the shared state (--state or
the config's state:) and a proxy's --data-dir.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := applyEnv(cmd.Flags()); err != nil {
				return usageError{err}
			}
			// The healer keeps its state in a data dir; the proxy's is not
			// this process's to write.
			tmp, err := os.MkdirTemp("", "cring-repair")
			if err != nil {
				return err
			}
			defer os.RemoveAll(tmp)
			cfg, proxyDir, err := f.config(os.LookupEnv, tmp)
			if err != nil {
				return usageError{err}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			users := f.users
			if len(users) == 0 && proxyDir != "" {
				users, err = heal.ReadUsers(filepath.Join(proxyDir, "heal"))
				if err != nil {
					return err
				}
			}
			if len(f.users) == 0 && cfg.State != "" {
				shared, err := sharedUsers(ctx, cfg.State)
				if err != nil {
					return err
				}
				users = slices.Compact(slices.Sorted(slices.Values(append(users, shared...))))
			}
			if len(users) == 0 {
				return usageError{errors.New("no users to scan: give --user CHARMID (repeatable), the shared --state or the proxy's --data-dir")}
			}
			return runRepair(ctx, cmd.OutOrStdout(), cfg, users, heal.ScanOptions{DryRun: f.dry, Deep: f.deep}, f.jsonOut)
		},
	}
	fl := cmd.Flags()
	f.settings = config.Bind(fl, "host", "config", "replicas", "write-quorum", "public-url", "server-key", "data-dir", "node-timeout", "node-ca", "state")
	// What these settings are to a repair, where it differs from serve.
	for name, usage := range map[string]string{
		"config":       "cring.yaml (the proxy's)",
		"replicas":     "copies of every file (N)",
		"write-quorum": "write quorum (W; default 2, or N when N < 2)",
		"public-url":   "the issuer the nodes accept (their CHARM_SERVER_PUBLIC_URL)",
		"server-key":   "the nodes' shared charm_server_ed25519",
		"data-dir":     "a proxy's data dir, to scan the users it has seen",
		"node-timeout": "how long a node may stall",
		"node-ca":      "PEM CA certificate(s) trusted for https node URLs, besides the system's roots (as serve --node-ca)",
		"state":        "the proxies' shared state (PostgreSQL URL), to scan every user they have seen",
	} {
		fl.Lookup(name).Usage = usage
	}
	fl.StringArrayVar(&f.users, "user", nil, "charm ID to scan (repeatable)")
	fl.BoolVar(&f.dry, "dry-run", false, "report only, change nothing")
	fl.BoolVar(&f.deep, "deep", false, "read and hash every copy (finds silent corruption)")
	fl.BoolVar(&f.jsonOut, "json", false, "JSON report")
	return cmd, f
}

// config is the proxy's configuration, resolved as cring serve resolves it
// and checked for a repair, with stateDir as its data dir; proxyDir is the
// proxy's (--data-dir, CRING_DATA_DIR or the file's data-dir), which holds
// the users it has seen.
func (f *repairFlags) config(getenv func(string) (string, bool), stateDir string) (cfg *config.Config, proxyDir string, err error) {
	cfg, err = f.settings.Resolve(getenv)
	if err != nil {
		return nil, "", err
	}
	if cfg.ServerKey == "" {
		return nil, "", errors.New("--server-key is required: repairs act for users with tokens signed by the nodes' shared key")
	}
	if cfg.PublicURL == "" {
		return nil, "", errors.New("--public-url is required: the issuer the nodes accept")
	}
	proxyDir, cfg.DataDir = cfg.DataDir, stateDir
	// A repair listens on nothing: the proxy's admin address, which may
	// want a token this command is not given, is not its concern.
	cfg.AdminAddress, cfg.AdminToken = "", ""
	if err := cfg.Normalize(); err != nil {
		return nil, "", err
	}
	return cfg, proxyDir, nil
}

// sharedUsers lists every user the proxies recorded in the shared state.
func sharedUsers(ctx context.Context, url string) ([]string, error) {
	store, err := clusterstate.New(url, clusterstate.Options{})
	if err != nil {
		return nil, usageError{err}
	}
	defer store.Close()
	return store.Users(ctx)
}

func runRepair(ctx context.Context, out io.Writer, cfg *config.Config, users []string, o heal.ScanOptions, jsonOut bool) error {
	signer, err := token.LoadSigner(cfg.ServerKey)
	if err != nil {
		return usageError{err}
	}
	// As serve places them: a draining node holds no replicas, and a cring
	// node's metadata endpoint hashes its copies locally.
	m, err := cluster.New(cfg.Nodes, cfg.Replicas, cfg.WriteQuorum)
	if err != nil {
		return usageError{err}
	}
	nodeTLS, err := nodetls.ClientConfig(cfg.NodeCA)
	if err != nil {
		return usageError{fmt.Errorf("--node-ca: %w", err)}
	}
	// One transport for health checks and the healer, as serve has.
	tr := &http.Transport{
		Proxy:               nil, // nodes are reached directly
		TLSClientConfig:     nodeTLS,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 16,
	}
	defer tr.CloseIdleConnections()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	hc := health.New(m.Nodes, health.Options{Interval: time.Second, Logger: quiet, Transport: tr})
	hc.CheckAll(ctx)
	m.Health = hc
	h, err := heal.New(heal.Options{
		Members: m, Signer: signer, Transport: tr,
		Issuer: func() string { return strings.TrimRight(cfg.PublicURL, "/") }, DataDir: cfg.DataDir,
		Logger: quiet, StallTimeout: cfg.NodeTimeout,
	})
	if err != nil {
		return err
	}
	defer h.Close()
	tty := !jsonOut && isTerminal(out)
	bar := progress.New(progress.WithDefaultGradient(), progress.WithWidth(40))
	o.Users = users
	o.Progress = func(p heal.Progress) {
		if tty {
			fmt.Fprintf(out, "\r%s %d/%d users · %d keys", bar.ViewAs(float64(p.UsersDone)/float64(max(p.UsersTotal, 1))), p.UsersDone, p.UsersTotal, p.Keys)
		}
	}
	rep, err := h.Scan(ctx, o)
	if tty {
		fmt.Fprintln(out)
	}
	if err != nil {
		return err
	}
	if jsonOut {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		printReport(out, rep)
	}
	if len(rep.Unreachable) == len(cfg.Nodes) {
		// Nothing was scanned: say why (a firewall, a wrong node-ca…)
		// rather than report an empty cluster.
		var why []string
		for _, st := range hc.Snapshot() {
			if st.LastError == "" {
				st.LastError = "did not answer the scan"
			}
			why = append(why, st.Name+": "+st.LastError)
		}
		return fmt.Errorf("no node reachable: %s", strings.Join(why, "; "))
	}
	if jsonOut {
		return nil
	}
	if rep.Failed > 0 {
		return fmt.Errorf("%d keys could not be repaired", rep.Failed)
	}
	return nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

var (
	titleStyle = lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Color("212"))
	dimStyle   = lipgloss.NewStyle().Foreground(lipgloss.Color("245"))
	goodStyle  = lipgloss.NewStyle().Foreground(lipgloss.Color("42"))
	badStyle   = lipgloss.NewStyle().Foreground(lipgloss.Color("203"))
)

func printReport(out io.Writer, r *heal.Report) {
	verb := "repaired"
	if r.DryRun {
		verb = "would repair"
	}
	kind := "scan"
	if r.Deep {
		kind = "deep scan"
	}
	fmt.Fprintln(out, titleStyle.Render(fmt.Sprintf("💍 %s: %d users, %d keys in %s", kind, r.Users, r.Keys, r.Duration)))
	row := func(label string, n int, bad bool) {
		v := goodStyle.Render(fmt.Sprint(n))
		if bad && n > 0 {
			v = badStyle.Render(fmt.Sprint(n))
		}
		fmt.Fprintf(out, "  %-28s %s\n", label, v)
	}
	row("healthy", r.Healthy, false)
	row("under-replicated", r.UnderReplicated, false)
	row("  still under-replicated", r.UnderReplicatedLeft, true)
	row("copies outside replicas", r.Misplaced, true)
	row("replicas differing", r.Differing, true)
	row("deleted but present", r.Resurrected, true)
	row(verb, r.Repaired+len(fixesIfDry(r)), false)
	row("failed", r.Failed, true)
	row("left to hint replay", r.LeftToReplay, false)
	row("tombstones collected", r.TombstonesGC, false)
	row("version records collected", r.RecordsGC, false)
	if len(r.Unreachable) > 0 {
		fmt.Fprintln(out, badStyle.Render("  unreachable: "+strings.Join(r.Unreachable, ", ")+" (their keys are left for hints)"))
	}
	for _, f := range r.Fixes {
		line := fmt.Sprintf("  %s/%s: %s", f.User, f.Path, f.Problem)
		if len(f.Copied) > 0 {
			line += " · copy to " + strings.Join(f.Copied, ",")
		}
		if len(f.Removed) > 0 {
			line += " · remove from " + strings.Join(f.Removed, ",")
		}
		if f.Err != "" {
			line += " · " + badStyle.Render(f.Err)
		}
		fmt.Fprintln(out, dimStyle.Render(line))
	}
}

func fixesIfDry(r *heal.Report) []heal.Result {
	if r.DryRun {
		return r.Fixes
	}
	return nil
}

func newStatusCmd() *cobra.Command {
	var admin, token string
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show a running proxy's nodes, health, hints and scans",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := applyEnv(cmd.Flags()); err != nil {
				return usageError{err}
			}
			st, body, err := fetchStatus(cmd.Context(), admin, token)
			if err != nil {
				return err
			}
			if jsonOut {
				_, err := cmd.OutOrStdout().Write(body)
				return err
			}
			printStatus(cmd.OutOrStdout(), st)
			return nil
		},
	}
	cmd.Flags().StringVar(&admin, "admin", "127.0.0.1:35356", "the proxy's admin address")
	adminTokenFlag(cmd.Flags(), &token)
	cmd.Flags().BoolVar(&jsonOut, "json", false, "raw JSON")
	return cmd
}

type statusDoc struct {
	NodeErrors  map[string]uint64    `json:"node_errors"`
	Nodes       []health.Status      `json:"nodes"`
	Replicas    int                  `json:"replicas"`
	WriteQuorum int                  `json:"write_quorum"`
	SSHActive   int                  `json:"ssh_active"`
	Heal        *heal.Status         `json:"heal"`
	UsersShown  bool                 `json:"users_shown"` // the admin token was sent: user IDs are in
	Cluster     *serve.ClusterStatus `json:"cluster"`
}

func printStatus(out io.Writer, st *statusDoc) {
	up := 0
	for _, n := range st.Nodes {
		if n.Healthy {
			up++
		}
	}
	fmt.Fprintln(out, titleStyle.Render(fmt.Sprintf("💍 %d/%d nodes up · every file on %d, acked at %d · %d SSH sessions", up, len(st.Nodes), st.Replicas, st.WriteQuorum, st.SSHActive)))
	for _, n := range st.Nodes {
		state := goodStyle.Render("● up  ")
		if !n.Healthy {
			state = badStyle.Render("○ down")
		}
		line := fmt.Sprintf("  %-12s %s  since %s", n.Name, state, n.Since.Local().Format(time.DateTime))
		if n.LastError != "" {
			line += dimStyle.Render("  " + n.LastError)
		}
		if st.Heal != nil && st.Heal.HintsPending[n.Name] > 0 {
			line += badStyle.Render(fmt.Sprintf("  %d hints owed", st.Heal.HintsPending[n.Name]))
		}
		fmt.Fprintln(out, line)
	}
	printCluster(out, st.Cluster)
	if st.Heal == nil {
		fmt.Fprintln(out, dimStyle.Render("  healing off (serve with --server-key and --data-dir)"))
		return
	}
	h := st.Heal
	var keys []string
	for k := range h.Totals {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var totals []string
	for _, k := range keys {
		totals = append(totals, fmt.Sprintf("%s %d", strings.ReplaceAll(k, "_", " "), h.Totals[k]))
	}
	line := fmt.Sprintf("  healing: %d users known", h.Users)
	if len(totals) > 0 {
		line += " · " + strings.Join(totals, " · ")
	}
	fmt.Fprintln(out, line)
	if p := h.Scanning; p != nil {
		fmt.Fprintf(out, "  scanning: %d/%d users, %d keys, started %s\n", p.UsersDone, p.UsersTotal, p.Keys, p.Started.Local().Format(time.TimeOnly))
	}
	if r := h.LastScan; r != nil {
		fmt.Fprintf(out, "  last scan %s (%s): %d keys, %d healthy, %d under-replicated, %d outside replicas, %d differing, %d repaired, %d failed\n",
			r.Started.Local().Format(time.DateTime), r.Duration, r.Keys, r.Healthy, r.UnderReplicated, r.Misplaced, r.Differing, r.Repaired, r.Failed)
	} else {
		fmt.Fprintln(out, dimStyle.Render("  no scan finished yet"))
	}
	if sc := h.Scrub; sc != nil {
		last := "no full pass yet"
		if !sc.LastFullPass.IsZero() {
			last = "last full pass " + sc.LastFullPass.Local().Format(time.DateTime)
		}
		fmt.Fprintf(out, "  scrub: %s hashed, %d corrupt found, %d repaired; %s\n", humanBytes(int64(sc.Bytes)), sc.Corrupt, sc.Repaired, last)
	}
}

// printCluster shows the shared state: what the nodes are owed there, and
// every proxy by its heartbeat (one missing for 3 intervals is down).
func printCluster(out io.Writer, c *serve.ClusterStatus) {
	if c == nil {
		return
	}
	if !c.Shared {
		fmt.Fprintln(out, dimStyle.Render("  hints and known users: this proxy's alone (no shared state: serve with --state)"))
		return
	}
	down := 0
	for _, p := range c.Proxies {
		if p.Down {
			down++
		}
	}
	line := fmt.Sprintf("  shared state: %d proxies", len(c.Proxies))
	if down > 0 {
		line += badStyle.Render(fmt.Sprintf(", %d down", down))
	}
	var owed []string
	for _, n := range slices.Sorted(maps.Keys(c.HintsPending)) {
		owed = append(owed, fmt.Sprintf("%s %d", n, c.HintsPending[n]))
	}
	if len(owed) > 0 {
		line += " · hints owed: " + strings.Join(owed, ", ")
	} else {
		line += " · no hints owed"
	}
	line += fmt.Sprintf(" · %d users", c.Users)
	fmt.Fprintln(out, line)
	if len(c.FullScanOwed) > 0 {
		fmt.Fprintln(out, badStyle.Render("  full scan owed: "+strings.Join(c.FullScanOwed, ", ")+" (reads skip them until a scan has read them)"))
	}
	if c.Error != "" {
		fmt.Fprintln(out, badStyle.Render("  shared state: "+c.Error))
	}
	for _, p := range c.Proxies {
		state := goodStyle.Render("● up  ")
		if p.Down {
			state = badStyle.Render("○ down")
		}
		line := fmt.Sprintf("    proxy %-12s %s  %s  seen %s ago  %s  %s", p.ID, state, p.Host, p.Age, strings.Join(p.Addresses, " "), p.Version)
		if p.HintsPending > 0 {
			line += fmt.Sprintf("  %d hints unpublished", p.HintsPending)
		}
		if p.Self {
			line += dimStyle.Render("  (this proxy)")
		}
		fmt.Fprintln(out, line)
	}
}

func newStatsCmd() *cobra.Command {
	var admin, token string
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Blob distribution, per-user usage, errors and placement balance of a running proxy",
		Long: `Figures from the proxy's last anti-entropy scan (every --scan-interval, or run
cring repair): files and bytes each node holds and how far it is from its
fair share, the largest users, and failed requests per node since start.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := applyEnv(cmd.Flags()); err != nil {
				return usageError{err}
			}
			st, body, err := fetchStatus(cmd.Context(), admin, token)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if jsonOut {
				var raw map[string]json.RawMessage
				_ = json.Unmarshal(body, &raw)
				var heal struct {
					LastScan json.RawMessage `json:"last_scan"`
				}
				_ = json.Unmarshal(raw["heal"], &heal)
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(map[string]any{"node_errors": st.NodeErrors, "last_scan": heal.LastScan})
			}
			printStats(out, st)
			return nil
		},
	}
	cmd.Flags().StringVar(&admin, "admin", "127.0.0.1:35356", "the proxy's admin address")
	adminTokenFlag(cmd.Flags(), &token)
	cmd.Flags().BoolVar(&jsonOut, "json", false, "JSON")
	return cmd
}

func fetchStatus(ctx context.Context, admin, token string) (*statusDoc, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/status", nil)
	if err != nil {
		return nil, nil, usageError{err}
	}
	withAdminToken(req, token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("reach the proxy's admin API at %s: %w", admin, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusUnauthorized {
		return nil, nil, fmt.Errorf("%s: %s", admin, adminTokenHint)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, nil, fmt.Errorf("read status: %w", err)
	}
	var st statusDoc
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, nil, fmt.Errorf("decode status: %w", err)
	}
	return &st, body, nil
}

func printStats(out io.Writer, st *statusDoc) {
	var r *heal.Report
	if st.Heal != nil {
		r = st.Heal.LastScan
	}
	if r == nil {
		fmt.Fprintln(out, dimStyle.Render("no scan yet: distribution comes from the healer's scans (serve with --server-key; cring repair runs one now)"))
	} else {
		fmt.Fprintln(out, titleStyle.Render(fmt.Sprintf("💍 %d keys of %d users, scanned %s", r.Keys, r.Users, r.Started.Local().Format(time.DateTime))))
		fmt.Fprintf(out, "  %-12s %10s %12s %10s %10s %8s\n", "NODE", "FILES", "BYTES", "FAIR", "BALANCE", "ERRORS")
		var names []string
		for n := range r.Nodes {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			u := r.Nodes[n]
			bal := fmt.Sprintf("%+.1f%%", u.Deviation*100)
			if u.Deviation > 0.2 || u.Deviation < -0.2 {
				bal = badStyle.Render(bal)
			}
			fmt.Fprintf(out, "  %-12s %10d %12s %10.0f %10s %8d\n", n, u.Files, humanBytes(u.Bytes), u.FairShare, bal, st.NodeErrors[n])
		}
		if len(r.UserUsage) > 0 {
			fmt.Fprintf(out, "\n  %-40s %10s %12s\n", "USER", "FILES", "BYTES")
			for _, u := range r.UserUsage[:min(len(r.UserUsage), 10)] {
				fmt.Fprintf(out, "  %-40s %10d %12s\n", u.User, u.Files, humanBytes(u.Bytes))
			}
		} else if !st.UsersShown && r.Users > 0 {
			fmt.Fprintln(out, dimStyle.Render("\n  largest users: only with the admin token (the proxy's --admin-token, here --admin-token or CRING_ADMIN_TOKEN)"))
		}
	}
	for _, n := range st.Nodes {
		if r == nil || r.Nodes[n.Name] == nil {
			if e := st.NodeErrors[n.Name]; e > 0 {
				fmt.Fprintf(out, "  %s: %d failed requests since start\n", n.Name, e)
			}
		}
	}
}

func humanBytes(b int64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := int64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}
