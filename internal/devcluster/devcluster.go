// Package devcluster runs real Charm servers (charm's own server package)
// in-process, or each as its own `cring node` process: the nodes of a local
// cluster for tests, `cring dev` and `cring bench`. Nodes
// share one server key pair and public URL, so a token from any node is valid
// on every node, and each keeps its own sqlite accounts like a stock
// `charm serve`; SeedUser gives them identical accounts. With
// Options.Versioned in-process nodes keep files as `cring node` does.
package devcluster

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	stdlog "log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/charmbracelet/charm/server"
	"github.com/charmbracelet/charm/server/db"
	"github.com/charmbracelet/charm/server/db/sqlite"
	"github.com/charmbracelet/keygen"
	"github.com/google/uuid"
	gossh "golang.org/x/crypto/ssh"
	_ "modernc.org/sqlite" // registers the "sqlite" driver charm's own DB uses

	"github.com/cring-dev/cring/internal/node/versioned"
)

// Options shape a cluster.
type Options struct {
	Nodes     int
	PublicURL string // the URL the nodes sign tokens for: the proxy's
	Host      string // bind host, default 127.0.0.1
	// SharedAccounts makes every node use one sqlite account store, so a
	// user created through any node exists on all of them.
	SharedAccounts bool
	// Binary, when set, runs each node as its own process, `<Binary> node`
	// (cring node: charm's server with charm's sqlite), instead of in this
	// one. Not with SharedAccounts.
	Binary string
	// Wrap, when set, rewrites a node process's command line (taskset…).
	Wrap func(name string, args []string) (string, []string)
	// Versioned puts cring node's versioned file store in front of each
	// in-process node's file API, as `cring node` does (stamps, 409s,
	// tombstones, checksums); process nodes always have it.
	Versioned bool
}

// Cluster is a set of in-process Charm servers.
type Cluster struct {
	Dir        string
	PublicURL  string
	PublicKey  []byte // authorized_keys form, shared by every node
	PrivateKey []byte // PEM
	KeyPath    string // the shared charm_server_ed25519
	Nodes      []*Node

	shared    db.DB // the one account store when Options.SharedAccounts
	versioned bool
	binary    string
	wrap      func(name string, args []string) (string, []string)
}

// Node is one Charm server.
type Node struct {
	Name       string
	Host       string
	HTTPPort   int
	SSHPort    int
	HealthPort int
	StatsPort  int // process nodes only
	DataDir    string

	mu      sync.Mutex
	srv     interface{ Close() error } // charm's server, or cring node's around it
	proc    *process                   // when the node runs as its own process
	started bool                       // once: its ports are its identity from then on
}

// claimPorts makes sure n's ports are still free before its first start,
// picking new ones if another process took one since New (tests of other
// packages run at the same time). A node that ran before keeps its ports.
func (n *Node) claimPorts() error {
	if n.started {
		return nil
	}
	n.started = true
	free := func() bool {
		for _, p := range []int{n.HTTPPort, n.SSHPort, n.HealthPort, n.StatsPort} {
			if p == 0 {
				continue
			}
			l, err := net.Listen("tcp", net.JoinHostPort(n.Host, strconv.Itoa(p)))
			if err != nil {
				return false
			}
			l.Close()
		}
		return true
	}
	if free() {
		return nil
	}
	ports, err := FreePorts(n.Host, 4)
	if err != nil {
		return fmt.Errorf("start %s: %w", n.Name, err)
	}
	n.HTTPPort, n.SSHPort, n.HealthPort, n.StatsPort = ports[0], ports[1], ports[2], ports[3]
	return nil
}

// New prepares a cluster under dir (reusing its key and data when present)
// and picks free ports. Nothing runs until Start.
func New(dir string, o Options) (*Cluster, error) {
	if o.Nodes < 1 {
		return nil, errors.New("devcluster: need at least one node")
	}
	if o.Binary != "" && o.SharedAccounts {
		return nil, errors.New("devcluster: process nodes keep their own accounts")
	}
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	kp, err := keygen.New(filepath.Join(dir, ".ssh", "charm_server_ed25519"), keygen.WithKeyType(keygen.Ed25519), keygen.WithWrite())
	if err != nil {
		return nil, fmt.Errorf("server key: %w", err)
	}
	c := &Cluster{
		Dir:        dir,
		PublicURL:  o.PublicURL,
		PublicKey:  kp.RawAuthorizedKey(),
		PrivateKey: kp.RawPrivateKey(),
		KeyPath:    filepath.Join(dir, ".ssh", "charm_server_ed25519"),
		binary:     o.Binary,
		wrap:       o.Wrap,
		versioned:  o.Versioned,
	}
	if o.SharedAccounts {
		if err := os.MkdirAll(filepath.Join(dir, "accounts"), 0o700); err != nil {
			return nil, fmt.Errorf("accounts dir: %w", err)
		}
		c.shared = sqlite.NewDB(filepath.Join(dir, "accounts", sqlite.DbName))
	}
	for i := range o.Nodes {
		ports, err := FreePorts(o.Host, 4)
		if err != nil {
			return nil, err
		}
		c.Nodes = append(c.Nodes, &Node{
			Name:       fmt.Sprintf("node%d", i+1),
			Host:       o.Host,
			HTTPPort:   ports[0],
			SSHPort:    ports[1],
			HealthPort: ports[2],
			StatsPort:  ports[3],
			DataDir:    filepath.Join(dir, fmt.Sprintf("node%d", i+1)),
		})
	}
	return c, nil
}

// HTTPURL is the node's HTTP API base URL.
func (n *Node) HTTPURL() string {
	return "http://" + net.JoinHostPort(n.Host, strconv.Itoa(n.HTTPPort))
}

// SSHAddr is the node's SSH address.
func (n *Node) SSHAddr() string { return net.JoinHostPort(n.Host, strconv.Itoa(n.SSHPort)) }

// HealthURL is the node's health endpoint.
func (n *Node) HealthURL() string {
	return "http://" + net.JoinHostPort(n.Host, strconv.Itoa(n.HealthPort)) + "/"
}

// FilePath is where the node stores a user's file on disk.
func (n *Node) FilePath(charmID, path string) string {
	return filepath.Join(n.DataDir, "files", charmID, filepath.FromSlash(path))
}

// DBPath is the node's sqlite account database.
func (n *Node) DBPath() string { return filepath.Join(n.DataDir, "db", sqlite.DbName) }

// Running reports whether the node is serving.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.srv != nil || n.proc != nil
}

// StartAll starts every node.
func (c *Cluster) StartAll(ctx context.Context) error {
	for _, n := range c.Nodes {
		if err := c.Start(ctx, n); err != nil {
			return err
		}
	}
	return nil
}

// Start runs node n and waits until its health port answers.
func (c *Cluster) Start(ctx context.Context, n *Node) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.srv != nil || n.proc != nil {
		return nil
	}
	if err := n.claimPorts(); err != nil {
		return err
	}
	if c.binary != "" {
		return c.startProcess(ctx, n)
	}
	cfg := server.DefaultConfig()
	cfg.BindAddr = n.Host
	cfg.Host = n.Host
	cfg.HTTPPort = n.HTTPPort
	cfg.SSHPort = n.SSHPort
	cfg.HealthPort = n.HealthPort
	cfg.DataDir = n.DataDir
	cfg.PublicURL = c.PublicURL
	cfg.EnableMetrics = false
	cfg = cfg.WithKeys(c.PublicKey, c.PrivateKey)
	if c.shared != nil {
		cfg = cfg.WithDB(keepOpen{c.shared})
	}
	// Without an error logger charm's SSH server borrows charmbracelet/log's
	// global one, racing with other nodes logging through it.
	cfg = cfg.WithErrorLogger(stdlog.New(os.Stderr, n.Name+" ", stdlog.LstdFlags))
	if err := os.MkdirAll(filepath.Join(n.DataDir, "db"), 0o700); err != nil {
		return fmt.Errorf("start %s: %w", n.Name, err)
	}
	if c.versioned {
		return startVersioned(ctx, n, cfg)
	}
	srv, err := server.NewServer(cfg)
	if err != nil {
		return fmt.Errorf("start %s: %w", n.Name, err)
	}
	go func() { _ = srv.Start() }()
	if err := waitHTTP(ctx, n.HealthURL()); err != nil {
		_ = srv.Close()
		return fmt.Errorf("start %s: %w", n.Name, err)
	}
	n.srv = srv
	return nil
}

// startVersioned runs n as cring node's server: charm's, with the
// versioned file store answering the file API on n's HTTP port. n.mu is held.
func startVersioned(ctx context.Context, n *Node, cfg *server.Config) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("node", n.Name)
	srv, err := versioned.NewServer(cfg, versioned.ServerOptions{Logger: log})
	if err != nil {
		return fmt.Errorf("start %s: %w", n.Name, err)
	}
	go func() { _ = srv.Start() }()
	err = waitHTTP(ctx, n.HealthURL())
	if err == nil {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = srv.WaitReady(wctx)
		cancel()
	}
	if err != nil {
		_ = srv.Close()
		return fmt.Errorf("start %s: %w", n.Name, err)
	}
	n.srv = srv
	return nil
}

// Stop closes node n's listeners and connections at once, like a crash of
// the process (its data stays on disk).
func (c *Cluster) Stop(n *Node) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc != nil {
		n.proc.kill()
		n.proc = nil
		return nil
	}
	if n.srv == nil {
		return nil
	}
	err := n.srv.Close()
	n.srv = nil
	if err != nil {
		return fmt.Errorf("stop %s: %w", n.Name, err)
	}
	return nil
}

// Close stops every node.
func (c *Cluster) Close() error {
	var errs []error
	for _, n := range c.Nodes {
		errs = append(errs, c.Stop(n))
	}
	if c.shared != nil {
		errs = append(errs, c.shared.Close())
		c.shared = nil
	}
	return errors.Join(errs...)
}

// keepOpen shares one account store between nodes: a node stopping (charm
// closes its DB on Close) must not close it for the others.
type keepOpen struct{ db.DB }

func (keepOpen) Close() error { return nil }

func waitHTTP(ctx context.Context, u string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var last error
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s answered %s", u, resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w", u, errors.Join(ctx.Err(), last))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// SeedUser gives every node the same account for an SSH public key
// (authorized_keys form), as copying one server's sqlite to the others
// would. It returns the charm ID; calling it again for the same key reuses it.
func (c *Cluster) SeedUser(pubKey []byte) (string, error) {
	pk, _, _, _, err := gossh.ParseAuthorizedKey(pubKey)
	if err != nil {
		return "", fmt.Errorf("seed user: parse key: %w", err)
	}
	// Charm identifies a key by "<type> <base64>", without comment.
	key := pk.Type() + " " + base64.StdEncoding.EncodeToString(pk.Marshal())
	id := ""
	for _, n := range c.Nodes {
		got, err := seedNode(n.DBPath(), key, id)
		if err != nil {
			return "", fmt.Errorf("seed user on %s: %w", n.Name, err)
		}
		id = got
	}
	return id, nil
}

func seedNode(path, key, id string) (string, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	// charm's own constructor creates the schema when the file is new.
	cdb := sqlite.NewDB(path)
	_ = cdb.Close()
	db, err := sql.Open("sqlite", path+sqlite.DbOptions)
	if err != nil {
		return "", err
	}
	defer db.Close()
	tx, err := db.Begin()
	if err != nil {
		return "", err
	}
	defer tx.Rollback() //nolint:errcheck // no-op after commit
	var existing string
	err = tx.QueryRow(`SELECT u.charm_id FROM public_key k JOIN charm_user u ON u.id = k.user_id WHERE k.public_key = ?`, key).Scan(&existing)
	switch {
	case err == nil:
		if id != "" && existing != id {
			return "", fmt.Errorf("key already belongs to %s, not %s", existing, id)
		}
		return existing, tx.Commit()
	case !errors.Is(err, sql.ErrNoRows):
		return "", err
	}
	if id == "" {
		id = uuid.New().String()
	}
	res, err := tx.Exec(`INSERT INTO charm_user (charm_id) VALUES (?)`, id)
	if err != nil {
		return "", err
	}
	uid, err := res.LastInsertId()
	if err != nil {
		return "", err
	}
	if _, err := tx.Exec(`INSERT INTO public_key (user_id, public_key) VALUES (?, ?)`, uid, key); err != nil {
		return "", err
	}
	return id, tx.Commit()
}
