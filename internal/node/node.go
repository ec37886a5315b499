// Package node runs one Charm server (charm's own server package) as
// `charm serve` does — same CHARM_SERVER_* settings, ports, data layout and
// server key — with the account store chosen by cring (PostgreSQL shared by
// every node, or the stock sqlite file) and cring's versioned file store
// (packages versioned and filestore) behind charm's file API: stamped writes and deletes,
// 409 for anything older than what the node holds, checksums, crash-safe
// writes (docs/node.md).
package node

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/charmbracelet/charm/server"
	"github.com/charmbracelet/charm/server/db"
	"github.com/charmbracelet/charm/server/db/sqlite"
	"github.com/charmbracelet/keygen"
	"github.com/cring-dev/cring/internal/accounts"
	"github.com/cring-dev/cring/internal/accounts/postgres"
	"github.com/cring-dev/cring/internal/node/versioned"
	"github.com/cring-dev/cring/internal/sshproxy"
	"github.com/cring-dev/cring/internal/token"
)

// KeyPath is where charm keeps the server key pair under its data dir.
func KeyPath(dataDir string) string {
	return filepath.Join(dataDir, ".ssh", "charm_server_ed25519")
}

// IsPostgres reports whether an --accounts value names PostgreSQL.
func IsPostgres(spec string) bool {
	return strings.HasPrefix(spec, "postgres://") || strings.HasPrefix(spec, "postgresql://")
}

// Redact hides a password in an --accounts URL, for logs.
func Redact(spec string) string {
	u, err := url.Parse(spec)
	if err != nil {
		return "(unparsable url)"
	}
	return u.Redacted()
}

// OpenAccounts opens the account store: PostgreSQL for a postgres:// URL,
// charm's sqlite under dataDir/db for "".
func OpenAccounts(ctx context.Context, spec, dataDir string) (db.DB, error) {
	switch {
	case spec == "":
		return accounts.OpenSQLite(filepath.Join(dataDir, "db", sqlite.DbName))
	case IsPostgres(spec):
		return postgres.Open(ctx, spec, postgres.Options{})
	}
	return nil, fmt.Errorf("--accounts %q: want a postgres://user:pass@host/db URL, or nothing for the stock sqlite", Redact(spec))
}

// Options configure Run.
type Options struct {
	Config   *server.Config // server.DefaultConfig() with flags applied
	Accounts string         // postgres://… or "" for sqlite
	Logger   *slog.Logger
	// Ready, if set, is called once every port answers.
	Ready func()
	// ShutdownTimeout bounds the graceful shutdown (30 s, like charm serve,
	// when 0): charm clients leave SSH connections open, which it waits for.
	ShutdownTimeout time.Duration
	// MetaPort, when > 0, serves versioned.MetaHandler there (on MetaBind),
	// over TLS when the node serves TLS (CHARM_SERVER_USE_TLS).
	MetaPort int
	// MetaBind is the address the metadata endpoint listens on; empty:
	// loopback only (operator surfaces are not open to the network unless
	// asked; a proxy on another host needs the node's cluster address).
	MetaBind string
	// SSH bounds (sshguard.go): connections in total and per source
	// address, and how long a client has to authenticate; defaults when 0.
	SSHMaxConns         int
	SSHMaxConnsPerAddr  int
	SSHHandshakeTimeout time.Duration
	// TombstoneGrace: how long a delete refuses older writes (30 days when 0).
	TombstoneGrace time.Duration
	// Closed: no account is ever created; a key without one is refused
	// over SSH with a one-line reason naming Contact (closed.go).
	Closed  bool
	Contact string
}

// Run serves until ctx ends, then shuts down gracefully and closes the
// account store.
func Run(ctx context.Context, o Options) error {
	cfg, log := o.Config, o.Logger
	if log == nil {
		log = slog.Default()
	}
	kp, err := keygen.New(KeyPath(cfg.DataDir), keygen.WithKeyType(keygen.Ed25519), keygen.WithWrite())
	if err != nil {
		return fmt.Errorf("server key %s: %w", KeyPath(cfg.DataDir), err)
	}
	cfg = cfg.WithKeys(kp.RawAuthorizedKey(), kp.RawPrivateKey())
	if err := portsFree(cfg); err != nil {
		return err
	}
	var metaTLS *tls.Config
	if cfg.UseTLS {
		// Checked before anything starts: charm would only report a bad
		// pair once its other servers stopped.
		cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return fmt.Errorf("CHARM_SERVER_USE_TLS: CHARM_SERVER_TLS_CERT_FILE %q and CHARM_SERVER_TLS_KEY_FILE %q: %w", cfg.TLSCertFile, cfg.TLSKeyFile, err)
		}
		metaTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	store, err := OpenAccounts(octx, o.Accounts, cfg.DataDir)
	cancel()
	if err != nil {
		return fmt.Errorf("open accounts: %w", err)
	}
	store = &closeOnce{DB: store}
	defer store.Close()
	if o.Closed {
		store = closedDB{store}
	}
	cfg = cfg.WithDB(store)
	publicPort := cfg.HTTPPort
	srv, err := versioned.NewServer(cfg, versioned.ServerOptions{TombstoneGrace: o.TombstoneGrace, Logger: log})
	if err != nil {
		return err
	}
	if o.Closed {
		if err := closeDoor(srv.Charm(), &closedGate{users: store, contact: o.Contact, log: log}); err != nil {
			_ = srv.Close()
			return err
		}
	}
	slots := &sshproxy.Slots{Max: o.SSHMaxConns, PerAddr: o.SSHMaxConnsPerAddr}
	if slots.Max <= 0 {
		slots.Max = DefaultSSHMaxConns
	}
	if slots.PerAddr <= 0 {
		slots.PerAddr = min(DefaultSSHMaxConnsPerAddr, slots.Max)
	}
	if err := guardSSH(srv.Charm(), slots, cmp.Or(o.SSHHandshakeTimeout, DefaultSSHHandshakeTimeout), log); err != nil {
		_ = srv.Close()
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Start() }()
	if o.MetaPort > 0 {
		signer, err := token.NewSigner(kp.RawPrivateKey())
		if err != nil {
			_ = srv.Close()
			return err
		}
		ms := &http.Server{
			Addr:              net.JoinHostPort(cmp.Or(o.MetaBind, "127.0.0.1"), strconv.Itoa(o.MetaPort)),
			Handler:           versioned.MetaHandler(srv.Store(), signer, srv.Issuer()),
			ReadHeaderTimeout: 10 * time.Second,
		}
		ln, err := net.Listen("tcp", ms.Addr)
		if err != nil {
			_ = srv.Close()
			return fmt.Errorf("meta port %s: %w", ms.Addr, err)
		}
		if metaTLS != nil {
			// Its callers send tokens: TLS like the node's other ports.
			ln = tls.NewListener(ln, metaTLS)
		}
		go func() { _ = ms.Serve(ln) }()
		defer ms.Close()
	}

	mode := "sqlite " + filepath.Join(cfg.DataDir, "db", sqlite.DbName)
	if IsPostgres(o.Accounts) {
		mode = "postgres " + Redact(o.Accounts)
	}
	if err := waitReady(ctx, cfg, srv, errc); err != nil {
		_ = srv.Close()
		return err
	}
	log.Info("cring node serving", "ssh", cfg.SSHPort, "http", publicPort, "health", cfg.HealthPort,
		"data", cfg.DataDir, "accounts", mode, "public_url", srv.Issuer(), "charm_http", srv.InternalURL(), "closed", o.Closed)
	if o.Ready != nil {
		o.Ready()
	}

	select {
	case <-ctx.Done():
	case err := <-errc:
		_ = srv.Close()
		if err == nil {
			err = errors.New("stopped by itself")
		}
		return fmt.Errorf("charm server: %w", err)
	}
	log.Info("cring node stopping")
	grace := o.ShutdownTimeout
	if grace <= 0 {
		grace = 30 * time.Second
	}
	sctx, scancel := context.WithTimeout(context.Background(), grace)
	defer scancel()
	if err := srv.Shutdown(sctx); err != nil {
		// Sessions still open (a pending `charm link`): cut them.
		log.Warn("graceful shutdown incomplete, closing", "err", err)
		_ = srv.Close()
	}
	select {
	case <-errc:
	case <-time.After(5 * time.Second):
	}
	return nil
}

// portsFree fails fast when a port is taken: charm's Start only reports a
// failed listener once every other server has stopped.
func portsFree(cfg *server.Config) error {
	ports := map[string]int{"ssh": cfg.SSHPort, "http": cfg.HTTPPort, "health": cfg.HealthPort}
	if cfg.EnableMetrics {
		ports["stats"] = cfg.StatsPort
	}
	for name, p := range ports {
		l, err := net.Listen("tcp", net.JoinHostPort(cfg.BindAddr, strconv.Itoa(p)))
		if err != nil {
			return fmt.Errorf("%s port: %w", name, err)
		}
		l.Close()
	}
	return nil
}

// waitReady waits until the health endpoint answers, SSH accepts and the
// public HTTP port reaches charm's own server.
func waitReady(ctx context.Context, cfg *server.Config, srv *versioned.Server, errc <-chan error) error {
	host := cfg.BindAddr
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	scheme := "http"
	client := &http.Client{Timeout: time.Second}
	if cfg.UseTLS {
		// charm serves health over TLS too; this only asks our own port.
		scheme = "https"
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // loopback readiness probe
	}
	health := scheme + "://" + net.JoinHostPort(host, strconv.Itoa(cfg.HealthPort)) + "/"
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok := false
		if resp, err := client.Get(health); err == nil {
			resp.Body.Close()
			if c, err := net.DialTimeout("tcp", net.JoinHostPort(host, strconv.Itoa(cfg.SSHPort)), time.Second); err == nil {
				c.Close()
				ok = true
			}
		}
		if ok {
			wctx, cancel := context.WithDeadline(ctx, deadline)
			defer cancel()
			return srv.WaitReady(wctx)
		}
		if time.Now().After(deadline) {
			return errors.New("charm server did not become ready within 30s")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errc:
			return fmt.Errorf("charm server: %w", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// closeOnce lets both charm's server.Close and Run close the store.
type closeOnce struct {
	db.DB
	once sync.Once
	err  error
}

func (c *closeOnce) Close() error {
	c.once.Do(func() { c.err = c.DB.Close() })
	return c.err
}
