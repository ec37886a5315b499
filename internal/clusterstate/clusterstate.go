// Package clusterstate keeps in PostgreSQL what every proxy of a cluster
// must share, so that no proxy holds anything convergence needs alone
// (docs/design.md, "Hints and repairs", "Roles"): the hints proxies publish
// from their local logs, which any proxy then claims and replays; the marks
// of nodes owed a full scan; the users the scans walk; and each proxy's
// heartbeat. Its tables are its own (prefix cring_), created on first use.
//
// Every time it writes or compares (leases, backoffs, heartbeats) comes from
// one injected clock: proxies' clocks are assumed to agree within seconds,
// and a skewed one costs a lease taken early (a batch replayed twice, which
// replay tolerates) or a proxy shown down, never a lost hint.
package clusterstate

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Defaults.
const (
	// DefaultLease is how long a claimed batch is its proxy's; the proxy
	// renews it every third of that while it works, so only a dead or
	// cut-off proxy lets it expire. Short, because a destroyed proxy's
	// batches wait that long for another (the cluster converges within
	// 30 s of faults ending); a lease lost to a slow renewal costs a batch
	// replayed twice, which replay tolerates.
	DefaultLease = 15 * time.Second
	// MaxBackoff caps how long a batch whose keys failed waits (1 s
	// doubling): failures while every node is up are transient (a
	// timeout, a key changed under the repair), and whatever caused them
	// may have ended a moment later; nothing tells the store when.
	MaxBackoff = 10 * time.Second
	// DefaultHintLimit is the hints the store holds for one node before
	// it marks the node for a full scan instead (as a proxy's own log).
	DefaultHintLimit = 2_000_000
	// DefaultTimeout bounds every call that has no deadline of its own.
	DefaultTimeout = 15 * time.Second
	// forgetProxies: a proxy not seen for this long leaves the list.
	forgetProxies = 7 * 24 * time.Hour
)

// Options tune a Store.
type Options struct {
	// Now is the clock of leases, backoffs and heartbeats (time.Now).
	Now func() time.Time
	// Lease is how long a claim holds a batch [DefaultLease].
	Lease time.Duration
	// HintLimit is the hints one node may be owed in the store before it
	// is marked for a full scan and its hints dropped [DefaultHintLimit].
	HintLimit int64
	// MaxConns bounds the pool (pgx's default when 0).
	MaxConns int32
}

// Store is the cluster's shared state. Safe for concurrent use; it connects
// and creates its tables on first use, so a database that is down at start
// only fails the calls made while it is.
type Store struct {
	pool  *pgxpool.Pool
	now   func() time.Time
	lease time.Duration
	limit int64
	host  string

	mu     sync.Mutex
	schema bool // tables known to exist
}

// New parses url (postgres://…) and returns a store that connects on first
// use. A malformed URL is the only error.
func New(url string, o Options) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("state: parse url: %w", err)
	}
	if o.MaxConns > 0 {
		cfg.MaxConns = o.MaxConns
	}
	cfg.MinConns = 0
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Lease <= 0 {
		o.Lease = DefaultLease
	}
	if o.HintLimit <= 0 {
		o.HintLimit = DefaultHintLimit
	}
	return &Store{pool: pool, now: o.Now, lease: o.Lease, limit: o.HintLimit, host: cfg.ConnConfig.Host}, nil
}

// Host is the database's host, for logs.
func (s *Store) Host() string { return s.host }

// Lease is how long a claim holds a batch.
func (s *Store) Lease() time.Duration { return s.lease }

// Close closes the pool.
func (s *Store) Close() { s.pool.Close() }

// Ping connects and makes sure the tables exist.
func (s *Store) Ping(ctx context.Context) error { return s.ready(ctx) }

func withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DefaultTimeout)
}

// ready creates the tables once per process (idempotent: every proxy of a
// cluster runs it, under an advisory lock).
func (s *Store) ready(ctx context.Context) error {
	s.mu.Lock()
	done := s.schema
	s.mu.Unlock()
	if done {
		return nil
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockSchema); err != nil {
			return fmt.Errorf("lock schema: %w", err)
		}
		if _, err := tx.Exec(ctx, schema); err != nil {
			return fmt.Errorf("create tables: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("state %s: %w", s.host, err)
	}
	s.mu.Lock()
	s.schema = true
	s.mu.Unlock()
	return nil
}

// lockSchema is the advisory lock schema creation takes: "cring" 10 (the
// account store's are 01-03).
const lockSchema int64 = 0x6372696e6710

// schema is every table, created if missing. Hints are kept by node, then
// by (user, directory) batch, as a proxy's log keeps them; counts per batch
// and per node live in their rows so that a claim, a publish and a settle
// serialize on the rows they change.
const schema = `
CREATE TABLE IF NOT EXISTS cring_hint_nodes (
	node            text PRIMARY KEY,
	hints           bigint NOT NULL DEFAULT 0,
	full_scan_since timestamptz
);
CREATE TABLE IF NOT EXISTS cring_hint_batches (
	node        text NOT NULL,
	user_id     text NOT NULL,
	dir         text NOT NULL,
	hints       bigint NOT NULL DEFAULT 0,
	reserved    boolean NOT NULL DEFAULT false,
	oldest      timestamptz NOT NULL,
	next_at     timestamptz NOT NULL,
	backoff_ms  bigint NOT NULL DEFAULT 0,
	lease_owner text,
	lease_until timestamptz,
	PRIMARY KEY (node, user_id, dir)
);
CREATE INDEX IF NOT EXISTS cring_hint_batches_due ON cring_hint_batches (node, next_at);
CREATE SEQUENCE IF NOT EXISTS cring_hint_version;
CREATE TABLE IF NOT EXISTS cring_hints (
	node     text NOT NULL,
	user_id  text NOT NULL,
	dir      text NOT NULL,
	name     text NOT NULL,
	version  bigint NOT NULL DEFAULT nextval('cring_hint_version'),
	recorded timestamptz NOT NULL,
	PRIMARY KEY (node, user_id, dir, name)
);
CREATE TABLE IF NOT EXISTS cring_users (
	user_id    text PRIMARY KEY,
	first_seen timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS cring_proxies (
	id            text PRIMARY KEY,
	host          text NOT NULL,
	addresses     text[] NOT NULL,
	version       text NOT NULL,
	started       timestamptz NOT NULL,
	last_seen     timestamptz NOT NULL,
	interval_ms   bigint NOT NULL,
	hints_pending bigint NOT NULL
);
`
