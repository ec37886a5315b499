package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/cring-dev/cring/internal/config"
	"github.com/cring-dev/cring/internal/serve"
	"github.com/spf13/cobra"
)

// serveFlags mirrors the prototype's flags plus the new ones.
type serveFlags struct {
	hosts          []string
	address        string
	sshProxyAddr   string
	sshBackendPort int
	sshMaxConns    int
	sshMaxPerAddr  int
	sshHandshake   time.Duration
	sshIdle        time.Duration
	backupURL      string
	backupBucket   string
	backupZone     string
	pprof          bool
	debug          bool
	replicas       int
	writeQuorum    int
	publicURL      string
	adminAddress   string
	adminToken     string
	configPath     string
	healthInterval time.Duration
	nodeTimeout    time.Duration
	logFormat      string
	accounts       string
	serverKey      string
	dataDir        string
	scanInterval   time.Duration
	repairRate     float64
	repairByteRate string
	tombstoneGrace time.Duration
	scrubInterval  time.Duration
	scrubRate      string
	postQuorum     time.Duration
	bodyIdle       time.Duration
	maxPerClient   int
	maxRequests    int
	maxConnsAddr   int
	maxConns       int
	backupMode     string
	backupPath     bool
	tlsCert        string
	tlsKey         string
	nodeCA         string
}

func newServeCmd() *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the proxy in front of your Charm servers",
		Long: `Run the proxy: it listens like a Charm server (HTTP 35354, SSH 35353) and
replicates every file to N of the nodes behind it, acknowledging a write only
once W of them stored it. Every flag can also be set with CRING_<FLAG>, e.g.
CRING_HOST=http://a:35354,http://b:35354.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.config(cmd)
			if err != nil {
				return usageError{err}
			}
			log := newLogger(f.logFormat, cfg.Debug)
			srv, err := serve.New(cfg, log)
			if err != nil {
				return usageError{err}
			}
			if err := srv.Listen(); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			go f.watch(ctx, cmd, srv, log)
			return srv.Serve(ctx)
		},
	}
	fl := cmd.Flags()
	fl.StringArrayVar(&f.hosts, "host", nil, "Charm node HTTP URL (repeat for every node)")
	fl.StringVar(&f.address, "address", config.DefaultAddress, "HTTP listen address")
	fl.StringVar(&f.sshProxyAddr, "ssh-proxy-address", config.DefaultSSHProxyAddress, "SSH listen address")
	fl.IntVar(&f.sshBackendPort, "ssh-backend-port", config.DefaultSSHBackendPort, "nodes' SSH port (a --host node's SSH address is its host name plus this port)")
	fl.IntVar(&f.sshMaxConns, "ssh-max-conns", config.DefaultSSHMaxConns, "SSH connections in total; more are closed at once")
	fl.IntVar(&f.sshMaxPerAddr, "ssh-max-conns-per-address", config.DefaultSSHMaxConnsPerAddress, "SSH connections from one source address (an IPv6 /64 is one); more are closed at once")
	fl.DurationVar(&f.sshHandshake, "ssh-handshake-timeout", config.DefaultSSHHandshakeTimeout, "an SSH client that has not finished its key exchange this long after connecting is closed")
	fl.DurationVar(&f.sshIdle, "ssh-idle-timeout", config.DefaultSSHIdleTimeout, "an SSH connection with no byte either way for this long is closed")
	fl.StringVar(&f.backupURL, "backup-url", "", "backup target: S3 endpoint URL or file:///dir")
	fl.StringVar(&f.backupBucket, "backup-bucket", "", "S3 backup bucket")
	fl.StringVar(&f.backupZone, "backup-zone", config.DefaultBackupZone, "S3 backup region")
	fl.StringVar(&f.backupMode, "backup-mode", "async", "async: writes are acked once queued durably under --data-dir; sync: once the backup stored them")
	fl.BoolVar(&f.backupPath, "backup-path-style", false, "path-style S3 bucket lookup (automatic for IPs and localhost)")
	fl.BoolVar(&f.debug, "debug", false, "debug logging")
	fl.BoolVar(&f.pprof, "pprof", false, "serve Go profiles on the admin address (/debug/pprof/)")
	fl.IntVar(&f.replicas, "replicas", config.DefaultReplicas, "copies of every file (N), clamped to the node count")
	fl.IntVar(&f.writeQuorum, "write-quorum", config.DefaultWriteQuorum, "replicas that must store a write before it is acknowledged (W; default 2, or N when N < 2)")
	fl.StringVar(&f.publicURL, "public-url", "", "the URL clients use, which the nodes sign tokens for (default: what the nodes announce)")
	fl.StringVar(&f.adminAddress, "admin-address", config.DefaultAdminAddress, "health, status, metrics and profiles listen address (/healthz, /readyz, /status, /metrics); not loopback only with --admin-token")
	fl.StringVar(&f.adminToken, "admin-token", "", "bearer token the admin address requires (all but /healthz, /readyz and an aggregate /status); required when it is not loopback; better in CRING_ADMIN_TOKEN or the config file than on a command line")
	fl.StringVar(&f.configPath, "config", "", "cring.yaml with per-node settings (name, url, ssh, health, zone)")
	fl.DurationVar(&f.healthInterval, "health-interval", config.DefaultHealthInterval, "how often every node is probed")
	fl.DurationVar(&f.nodeTimeout, "node-timeout", config.DefaultNodeTimeout, "how long a node may take to answer or stall mid-body before it loses the request")
	fl.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	fl.StringVar(&f.serverKey, "server-key", "", "the nodes' shared charm_server_ed25519: turns on self-healing (repairs act for users with tokens it signs)")
	fl.StringVar(&f.dataDir, "data-dir", "", "where durable state lives: hints, known users, backup queue (default under the user's data dir)")
	fl.DurationVar(&f.scanInterval, "scan-interval", config.DefaultScanInterval, "time between background anti-entropy scans")
	fl.Float64Var(&f.repairRate, "repair-rate", config.DefaultRepairRate, "repairs per second the healer may do")
	fl.StringVar(&f.repairByteRate, "repair-byte-rate", "32MiB", "bytes per second the healer's repairs may copy, all nodes together")
	fl.DurationVar(&f.tombstoneGrace, "tombstone-grace", config.DefaultTombstoneGrace, "how long deletes are remembered; a node away longer may bring deleted files back")
	fl.DurationVar(&f.scrubInterval, "scrub-interval", config.DefaultScrubInterval, "time from one scrub pass's start to the next (every copy hashed, rotten ones repaired); 0: no scrub")
	fl.StringVar(&f.scrubRate, "scrub-rate", "8MiB", "bytes per second the scrub may read from each node")
	fl.DurationVar(&f.postQuorum, "post-quorum-timeout", config.DefaultPostQuorum, "after a write is answered at quorum, how long the last replicas may take before they are cancelled and hinted")
	fl.DurationVar(&f.bodyIdle, "body-idle-timeout", config.DefaultBodyIdleTimeout, "how long a client may send no byte of its request body (408) or read none of its answer before the request is abandoned")
	fl.IntVar(&f.maxPerClient, "max-requests-per-client", config.DefaultMaxRequestsPerClient, "requests one client (charm ID; source address on unauthenticated routes) may have in flight; more get 429")
	fl.IntVar(&f.maxRequests, "max-requests", config.DefaultMaxRequests, "requests in flight in total; more get 503")
	fl.IntVar(&f.maxConnsAddr, "max-conns-per-address", config.DefaultMaxConnsPerAddress, "HTTP connections from one source address (an IPv6 /64 is one); more are refused (429); raise it behind a reverse proxy")
	fl.IntVar(&f.maxConns, "max-conns", config.DefaultMaxConns, "HTTP connections in total; more are refused (503)")
	fl.StringVar(&f.tlsCert, "tls-cert", "", "PEM certificate (chain) to serve HTTPS on --address; re-read when it changes")
	fl.StringVar(&f.tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	fl.StringVar(&f.nodeCA, "node-ca", "", "PEM CA certificate(s) trusted, besides the system's roots, for https node URLs (nodes serving TLS with a private CA's certificates)")
	fl.StringVar(&f.accounts, "accounts", config.AccountsPerNode, "where nodes keep accounts: per-node (stock charm serve) or shared (cring node on one database)")
	return cmd
}

// config merges defaults < cring.yaml < CRING_* env < flags, then validates.
func (f *serveFlags) config(cmd *cobra.Command) (*config.Config, error) {
	set, err := applyEnv(cmd.Flags())
	if err != nil {
		return nil, err
	}
	cfg := &config.Config{}
	if f.configPath != "" {
		if cfg, err = config.Load(f.configPath); err != nil {
			return nil, err
		}
	}
	pick := func(name string) bool { return set[name] }
	if pick("address") || cfg.Address == "" {
		cfg.Address = f.address
	}
	if pick("ssh-proxy-address") || cfg.SSHProxyAddress == "" {
		cfg.SSHProxyAddress = f.sshProxyAddr
	}
	if pick("ssh-backend-port") || cfg.SSHBackendPort == 0 {
		cfg.SSHBackendPort = f.sshBackendPort
	}
	if pick("ssh-max-conns") || cfg.SSHMaxConns == 0 {
		cfg.SSHMaxConns = f.sshMaxConns
	}
	if pick("ssh-max-conns-per-address") || cfg.SSHMaxConnsPerAddress == 0 {
		cfg.SSHMaxConnsPerAddress = f.sshMaxPerAddr
	}
	if pick("ssh-handshake-timeout") || cfg.SSHHandshakeTimeout == 0 {
		cfg.SSHHandshakeTimeout = f.sshHandshake
	}
	if pick("ssh-idle-timeout") || cfg.SSHIdleTimeout == 0 {
		cfg.SSHIdleTimeout = f.sshIdle
	}
	if pick("admin-address") || cfg.AdminAddress == "" {
		cfg.AdminAddress = f.adminAddress
	}
	if pick("admin-token") || cfg.AdminToken == "" {
		cfg.AdminToken = f.adminToken
	}
	if pick("replicas") {
		cfg.Replicas = f.replicas
	}
	if pick("write-quorum") {
		cfg.WriteQuorum = f.writeQuorum
	}
	if pick("public-url") || cfg.PublicURL == "" {
		cfg.PublicURL = f.publicURL
	}
	if pick("health-interval") || cfg.HealthInterval == 0 {
		cfg.HealthInterval = f.healthInterval
	}
	if pick("node-timeout") || cfg.NodeTimeout == 0 {
		cfg.NodeTimeout = f.nodeTimeout
	}
	if pick("backup-url") || cfg.Backup.URL == "" {
		cfg.Backup.URL = f.backupURL
	}
	if pick("backup-bucket") || cfg.Backup.Bucket == "" {
		cfg.Backup.Bucket = f.backupBucket
	}
	if pick("backup-zone") || cfg.Backup.Zone == "" {
		cfg.Backup.Zone = f.backupZone
	}
	if pick("accounts") || cfg.Accounts == "" {
		cfg.Accounts = f.accounts
	}
	if pick("server-key") || cfg.ServerKey == "" {
		cfg.ServerKey = f.serverKey
	}
	if pick("data-dir") || cfg.DataDir == "" {
		cfg.DataDir = f.dataDir
	}
	if cfg.DataDir == "" {
		cfg.DataDir = defaultDataDir("serve")
	}
	if pick("scan-interval") || cfg.ScanInterval == 0 {
		cfg.ScanInterval = f.scanInterval
	}
	if pick("repair-rate") || cfg.RepairRate == 0 {
		cfg.RepairRate = f.repairRate
	}
	if pick("repair-byte-rate") || cfg.RepairByteRate == 0 {
		n, err := humanize.ParseBytes(f.repairByteRate)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("--repair-byte-rate %q: want a size per second like 32MiB", f.repairByteRate)
		}
		cfg.RepairByteRate = int64(n)
	}
	if pick("post-quorum-timeout") || cfg.PostQuorumTimeout == 0 {
		cfg.PostQuorumTimeout = f.postQuorum
	}
	if pick("body-idle-timeout") || cfg.BodyIdleTimeout == 0 {
		cfg.BodyIdleTimeout = f.bodyIdle
	}
	if pick("max-requests-per-client") || cfg.MaxRequestsPerClient == 0 {
		cfg.MaxRequestsPerClient = f.maxPerClient
	}
	if pick("max-requests") || cfg.MaxRequests == 0 {
		cfg.MaxRequests = f.maxRequests
	}
	if pick("max-conns-per-address") || cfg.MaxConnsPerAddress == 0 {
		cfg.MaxConnsPerAddress = f.maxConnsAddr
	}
	if pick("max-conns") || cfg.MaxConns == 0 {
		cfg.MaxConns = f.maxConns
	}
	if pick("tombstone-grace") || cfg.TombstoneGrace == 0 {
		cfg.TombstoneGrace = f.tombstoneGrace
	}
	if pick("scrub-interval") {
		cfg.ScrubInterval = f.scrubInterval
		if f.scrubInterval == 0 {
			cfg.ScrubInterval = -1 // off (0 in the file means the default)
		}
	}
	if pick("scrub-rate") || cfg.ScrubRate == 0 {
		n, err := humanize.ParseBytes(f.scrubRate)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("--scrub-rate %q: want a size per second like 8MiB", f.scrubRate)
		}
		cfg.ScrubRate = int64(n)
	}
	if pick("backup-mode") || cfg.Backup.Mode == "" {
		cfg.Backup.Mode = f.backupMode
	}
	if pick("backup-path-style") {
		cfg.Backup.PathStyle = f.backupPath
	}
	if pick("debug") {
		cfg.Debug = f.debug
	}
	if pick("tls-cert") || cfg.TLSCert == "" {
		cfg.TLSCert = f.tlsCert
	}
	if pick("tls-key") || cfg.TLSKey == "" {
		cfg.TLSKey = f.tlsKey
	}
	if pick("node-ca") || cfg.NodeCA == "" {
		cfg.NodeCA = f.nodeCA
	}
	if pick("pprof") {
		cfg.Pprof = f.pprof
	}
	if pick("replicas") && f.replicas < 1 {
		return nil, fmt.Errorf("--replicas must be at least 1, got %d", f.replicas)
	}
	if pick("write-quorum") && f.writeQuorum < 1 {
		return nil, fmt.Errorf("--write-quorum must be at least 1, got %d", f.writeQuorum)
	}
	if f.logFormat != "text" && f.logFormat != "json" {
		return nil, fmt.Errorf("--log-format must be text or json, got %q", f.logFormat)
	}
	for _, h := range f.hosts {
		n, err := config.NodeFromHost(h, cfg.SSHBackendPort)
		if err != nil {
			return nil, err
		}
		cfg.Nodes = append(cfg.Nodes, n)
	}
	if err := cfg.Normalize(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func newLogger(format string, debug bool) *slog.Logger {
	lvl := slog.LevelInfo
	if debug {
		lvl = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: lvl}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// watch reloads the node list on SIGHUP and when the --config file changes.
func (f *serveFlags) watch(ctx context.Context, cmd *cobra.Command, srv *serve.Server, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	last := modTime(f.configPath)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			log.Info("SIGHUP: reloading configuration")
		case <-tick.C:
			m := modTime(f.configPath)
			if m.Equal(last) {
				continue
			}
			last = m
			log.Info("config file changed: reloading", "path", f.configPath)
		}
		cfg, err := f.config(cmd)
		if err == nil {
			err = srv.Reload(cfg)
		}
		if err != nil {
			log.Error("reload refused; keeping the running configuration", "err", err)
		}
	}
}

func modTime(path string) time.Time {
	if path == "" {
		return time.Time{}
	}
	st, err := os.Stat(path)
	if err != nil {
		return time.Time{}
	}
	return st.ModTime()
}
