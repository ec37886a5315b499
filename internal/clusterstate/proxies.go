package clusterstate

import (
	"context"
	"fmt"
	"time"
)

// DefaultHeartbeat is how often a proxy writes its heartbeat; one not seen
// for more than DownAfter of its intervals is shown down.
const (
	DefaultHeartbeat = 5 * time.Second
	DownAfter        = 3
)

// Proxy is what a proxy says of itself in its heartbeat.
type Proxy struct {
	ID        string    `json:"id"`
	Host      string    `json:"host"`
	Addresses []string  `json:"addresses"`
	Version   string    `json:"version"`
	Started   time.Time `json:"started"`
	// Interval between its heartbeats.
	Interval time.Duration `json:"interval"`
	// HintsPending: hints in its local log not yet published.
	HintsPending int64 `json:"hints_pending"`
}

// ProxyStatus is a proxy as the others see it.
type ProxyStatus struct {
	Proxy
	LastSeen time.Time `json:"last_seen"`
	// Age is how long ago it was last seen, by this store's clock.
	Age string `json:"last_seen_ago"`
	// Down: not seen for more than DownAfter of its intervals.
	Down bool `json:"down"`
}

// Heartbeat records that p is alive now, and forgets proxies not seen for
// a week.
func (s *Store) Heartbeat(ctx context.Context, p Proxy) error {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	if err := s.ready(ctx); err != nil {
		return err
	}
	now := s.now()
	if p.Addresses == nil {
		p.Addresses = []string{}
	}
	if _, err := s.pool.Exec(ctx, `
		INSERT INTO cring_proxies (id, host, addresses, version, started, last_seen, interval_ms, hints_pending)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, addresses = EXCLUDED.addresses, version = EXCLUDED.version,
			started = EXCLUDED.started, last_seen = EXCLUDED.last_seen, interval_ms = EXCLUDED.interval_ms,
			hints_pending = EXCLUDED.hints_pending`,
		p.ID, p.Host, p.Addresses, p.Version, p.Started, now, p.Interval.Milliseconds(), p.HintsPending); err != nil {
		return fmt.Errorf("state: heartbeat: %w", err)
	}
	if _, err := s.pool.Exec(ctx, `DELETE FROM cring_proxies WHERE last_seen < $1`, now.Add(-forgetProxies)); err != nil {
		return fmt.Errorf("state: forget old proxies: %w", err)
	}
	return nil
}

// Proxies lists every proxy that sent a heartbeat in the last week, by id,
// marking those not seen for more than DownAfter of their intervals.
func (s *Store) Proxies(ctx context.Context) ([]ProxyStatus, error) {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	if err := s.ready(ctx); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, `SELECT id, host, addresses, version, started, last_seen, interval_ms, hints_pending
		FROM cring_proxies ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("state: read proxies: %w", err)
	}
	defer rows.Close()
	now := s.now()
	var out []ProxyStatus
	for rows.Next() {
		var p ProxyStatus
		var ms int64
		if err := rows.Scan(&p.ID, &p.Host, &p.Addresses, &p.Version, &p.Started, &p.LastSeen, &ms, &p.HintsPending); err != nil {
			return nil, fmt.Errorf("state: read proxies: %w", err)
		}
		p.Interval = time.Duration(ms) * time.Millisecond
		age := max(now.Sub(p.LastSeen), 0)
		p.Age = age.Round(time.Second).String()
		p.Down = age > DownAfter*p.Interval
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("state: read proxies: %w", err)
	}
	return out, nil
}
