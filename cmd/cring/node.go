package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/charmbracelet/charm/server"
	"github.com/cring-dev/cring/internal/config"
	"github.com/cring-dev/cring/internal/node"
	"github.com/spf13/cobra"
)

type nodeFlags struct {
	httpPort, sshPort, statsPort, healthPort int
	dataDir                                  string
	accounts                                 string
	logFormat                                string
	debug                                    bool
	shutdownTimeout                          time.Duration
	metaPort                                 int
	metaBind                                 string
	sshMaxConns, sshMaxPerAddr               int
	sshHandshake                             time.Duration
	tombstoneGrace                           time.Duration
	closed                                   bool
	contact                                  string
}

func newNodeCmd() *cobra.Command {
	var f nodeFlags
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Run a Charm server with versioned, crash-safe files and accounts in a shared PostgreSQL",
		Long: `Run a Charm server: a drop-in for ` + "`charm serve`" + ` (v0.12.6) with the same
CHARM_SERVER_* environment, ports (SSH 35353, HTTP 35354, health 35356), data
directory layout and server key ($CHARM_SERVER_DATA_DIR/.ssh/charm_server_ed25519,
created when missing).

With --accounts postgres://user:pass@host:5432/charm (or CRING_ACCOUNTS) every
node keeps users, keys, encrypt keys, names and sequences in that one database,
so any node can serve any user and SSH can fail over without splitting
identities: front the nodes with ` + "`cring serve --accounts shared`" + `. The schema is
created and migrated on start. PostgreSQL is then where accounts become highly
available: replicate it with its own tools (streaming replication, a managed
service). Without --accounts a node keeps charm's own sqlite in <data>/db.

Files are kept in charm's layout (<data>/files/<charm id>/<path>), so a data
directory moves between charm serve and cring node both ways, but each write
records its version (the proxy's stamp), SHA-256 and size in extended
attributes and replaces the file atomically (temp file, fsync, rename): a
node refuses (409) a write or delete older than what it holds, remembers
deletes for --tombstone-grace, never serves a copy that rotted on disk, and
a crash never leaves a partial file. The data directory's filesystem must
support user extended attributes (ext4, xfs, btrfs). The node answers the
HTTP port itself and passes every route but /v1/fs to charm's own HTTP server
on an internal port (docs/node.md).

The metadata endpoint the healer reads (--meta-port, authenticated) listens on
loopback unless --meta-bind names the address the proxy reaches. SSH
connections are bounded in total and per source address, and a client that
has not authenticated within --ssh-handshake-timeout is closed.

With --closed (CRING_CLOSED=true) the node creates no account: a key an
administrator did not add (` + "`cring accounts add`" + `) is refused over SSH with one
line the charm client prints ("this Charm server is closed to new accounts:
key SHA256:… is not allowed; ask <--contact> to add it"), and nothing is
written to the account store. Existing users work as before, and add their
own devices with ` + "`charm link`" + `. Close every node of a cluster.

Move existing accounts in with ` + "`cring accounts import`" + `.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := applyEnv(cmd.Flags()); err != nil {
				return usageError{err}
			}
			if f.logFormat != "text" && f.logFormat != "json" {
				return usageError{fmt.Errorf("--log-format must be text or json, got %q", f.logFormat)}
			}
			if f.contact != "" && !f.closed {
				return usageError{errors.New("--contact only applies with --closed")}
			}
			if f.accounts != "" && !node.IsPostgres(f.accounts) {
				return usageError{fmt.Errorf("--accounts %q: want a postgres:// URL, or nothing for the stock sqlite", node.Redact(f.accounts))}
			}
			cfg := server.DefaultConfig() // CHARM_SERVER_*, like charm serve
			for _, o := range []struct {
				v   int
				dst *int
			}{{f.httpPort, &cfg.HTTPPort}, {f.sshPort, &cfg.SSHPort}, {f.statsPort, &cfg.StatsPort}, {f.healthPort, &cfg.HealthPort}} {
				if o.v != 0 {
					*o.dst = o.v
				}
			}
			if f.dataDir != "" {
				cfg.DataDir = f.dataDir
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			err := node.Run(ctx, node.Options{
				Config: cfg, Accounts: f.accounts, Logger: newLogger(f.logFormat, f.debug), ShutdownTimeout: f.shutdownTimeout,
				MetaPort: f.metaPort, TombstoneGrace: f.tombstoneGrace, Closed: f.closed, Contact: f.contact,
				MetaBind: f.metaBind, SSHMaxConns: f.sshMaxConns, SSHMaxConnsPerAddr: f.sshMaxPerAddr, SSHHandshakeTimeout: f.sshHandshake,
			})
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&f.httpPort, "http-port", 0, "HTTP port to listen on (default $CHARM_SERVER_HTTP_PORT or 35354)")
	fl.IntVar(&f.sshPort, "ssh-port", 0, "SSH port to listen on (default $CHARM_SERVER_SSH_PORT or 35353)")
	fl.IntVar(&f.statsPort, "stats-port", 0, "stats port to listen on (default $CHARM_SERVER_STATS_PORT or 35355)")
	fl.IntVar(&f.healthPort, "health-port", 0, "health port to listen on (default $CHARM_SERVER_HEALTH_PORT or 35356)")
	fl.StringVar(&f.dataDir, "data-dir", "", "directory for the server key, files and sqlite (default $CHARM_SERVER_DATA_DIR or ./data)")
	fl.StringVar(&f.accounts, "accounts", "", "postgres://user:pass@host:5432/db to keep accounts in PostgreSQL shared by every node (default: charm's sqlite in the data dir)")
	fl.StringVar(&f.logFormat, "log-format", "text", "cring's log format: text or json")
	fl.BoolVar(&f.debug, "debug", false, "debug logging")
	fl.IntVar(&f.metaPort, "meta-port", 35357, "port of the authenticated metadata endpoint the healer uses for exact size, mtime and SHA-256 (0: off)")
	fl.StringVar(&f.metaBind, "meta-bind", "127.0.0.1", "address the metadata endpoint listens on: loopback by default; the node's cluster address (or 0.0.0.0) when the proxy runs on another host")
	fl.IntVar(&f.sshMaxConns, "ssh-max-conns", node.DefaultSSHMaxConns, "SSH connections in total; more are closed at once")
	fl.IntVar(&f.sshMaxPerAddr, "ssh-max-conns-per-address", node.DefaultSSHMaxConnsPerAddr, "SSH connections from one source address (an IPv6 /64 is one; a proxy's all come from its address)")
	fl.DurationVar(&f.sshHandshake, "ssh-handshake-timeout", node.DefaultSSHHandshakeTimeout, "an SSH client that has not authenticated this long after connecting is closed")
	fl.DurationVar(&f.tombstoneGrace, "tombstone-grace", config.DefaultTombstoneGrace, "how long a delete refuses older writes of what it deleted (keep it equal to the proxies')")
	fl.BoolVar(&f.closed, "closed", false, "create no accounts: only keys added with cring accounts add (or linked by their account's owner) get in (env CRING_CLOSED=true)")
	fl.StringVar(&f.contact, "contact", "", "with --closed, whom a refused key is told to ask (an email, a URL); default \"the server's administrator\"")
	fl.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGTERM, how long open connections may finish before they are cut")
	return cmd
}
