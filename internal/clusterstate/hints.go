package clusterstate

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// Hint says node is owed the latest state of Dir/Name of User. Hints are
// batched as a proxy's log batches them: by node, then (user, directory).
type Hint struct {
	Node, User, Dir, Name string
	// Reserved: cring's own files (tombstones, version records), replayed
	// after clients' keys.
	Reserved bool
	Recorded time.Time
}

// Batch is one claimed batch: the hints of one node in one directory of
// one user, as they were when claimed.
type Batch struct {
	Node, User, Dir string
	Oldest          time.Time
	// Names maps each hinted file name to the version of its hint: a hint
	// published again after the claim has a new version, and settling
	// the claim leaves it.
	Names map[string]int64
	owner string
}

// NodeState is the store's view of one node.
type NodeState struct {
	Hints int64 `json:"hints"`
	// FullScanSince: the node was owed more than the hint limit and is
	// owed everything until a scan that started after this has read it
	// (zero: not marked).
	FullScanSince time.Time `json:"full_scan_since,omitzero"`
}

type batchKey struct{ node, user, dir string }

func cmpHint(a, b Hint) int {
	return cmp.Or(cmp.Compare(a.Node, b.Node), cmp.Compare(a.User, b.User), cmp.Compare(a.Dir, b.Dir), cmp.Compare(a.Name, b.Name))
}

// Publish stores hints and full-scan marks (node → marked at) in one
// transaction. A hint already in the store gets a new version, so a claim
// taken before keeps it. A node whose hints pass the limit has them
// dropped and is marked for a full scan: its name is returned.
func (s *Store) Publish(ctx context.Context, hints []Hint, marks map[string]time.Time) ([]string, error) {
	if len(hints) == 0 && len(marks) == 0 {
		return nil, nil
	}
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	if err := s.ready(ctx); err != nil {
		return nil, err
	}
	// Sorted and unique: one statement can't change a row twice, and rows
	// locked in one order by every writer can't deadlock.
	hints = slices.Clone(hints)
	slices.SortFunc(hints, cmpHint)
	hints = slices.CompactFunc(hints, func(a, b Hint) bool { return cmpHint(a, b) == 0 })
	nodeSet := map[string]bool{}
	for _, h := range hints {
		nodeSet[h.Node] = true
	}
	for n := range marks {
		nodeSet[n] = true
	}
	nodes := slices.Sorted(maps.Keys(nodeSet))
	now := s.now()
	var marked []string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		marked = nil
		if err := lockNodes(ctx, tx, nodes); err != nil {
			return err
		}
		for _, n := range slices.Sorted(maps.Keys(marks)) {
			if err := dropNode(ctx, tx, n, marks[n]); err != nil {
				return err
			}
		}
		if len(hints) == 0 {
			return nil
		}
		var hn, hu, hd, hname []string
		var hat []time.Time
		for _, h := range hints {
			hn, hu, hd, hname = append(hn, h.Node), append(hu, h.User), append(hd, h.Dir), append(hname, h.Name)
			hat = append(hat, h.Recorded)
		}
		rows, err := tx.Query(ctx, `
			INSERT INTO cring_hints AS h (node, user_id, dir, name, recorded)
			SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
			ON CONFLICT (node, user_id, dir, name) DO UPDATE
				SET version = nextval('cring_hint_version'), recorded = EXCLUDED.recorded
			RETURNING h.node, h.user_id, h.dir, (h.xmax = 0)`, hn, hu, hd, hname, hat)
		if err != nil {
			return fmt.Errorf("store hints: %w", err)
		}
		added := map[batchKey]int64{}
		perNode := map[string]int64{}
		for rows.Next() {
			var k batchKey
			var inserted bool
			if err := rows.Scan(&k.node, &k.user, &k.dir, &inserted); err != nil {
				rows.Close()
				return fmt.Errorf("store hints: %w", err)
			}
			if inserted {
				added[k]++
				perNode[k.node]++
			}
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("store hints: %w", err)
		}
		// Every batch a hint names exists once this commits, with its count.
		type batchRow struct {
			n        int64
			reserved bool
			oldest   time.Time
		}
		batches := map[batchKey]*batchRow{}
		for _, h := range hints {
			k := batchKey{h.Node, h.User, h.Dir}
			b := batches[k]
			if b == nil {
				b = &batchRow{n: added[k], reserved: h.Reserved, oldest: h.Recorded}
				batches[k] = b
			}
			if h.Recorded.Before(b.oldest) {
				b.oldest = h.Recorded
			}
		}
		keys := slices.SortedFunc(maps.Keys(batches), func(a, b batchKey) int {
			return cmp.Or(cmp.Compare(a.node, b.node), cmp.Compare(a.user, b.user), cmp.Compare(a.dir, b.dir))
		})
		var bn, bu, bd []string
		var bc []int64
		var br []bool
		var bo, bnext []time.Time
		for _, k := range keys {
			b := batches[k]
			bn, bu, bd = append(bn, k.node), append(bu, k.user), append(bd, k.dir)
			bc, br, bo, bnext = append(bc, b.n), append(br, b.reserved), append(bo, b.oldest), append(bnext, now)
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO cring_hint_batches AS b (node, user_id, dir, hints, reserved, oldest, next_at)
			SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bool[], $6::timestamptz[], $7::timestamptz[])
			ON CONFLICT (node, user_id, dir) DO UPDATE
				SET hints = b.hints + EXCLUDED.hints, oldest = LEAST(b.oldest, EXCLUDED.oldest)`,
			bn, bu, bd, bc, br, bo, bnext); err != nil {
			return fmt.Errorf("store hint batches: %w", err)
		}
		var nn []string
		var nc []int64
		for _, n := range slices.Sorted(maps.Keys(perNode)) {
			nn, nc = append(nn, n), append(nc, perNode[n])
		}
		rows, err = tx.Query(ctx, `
			UPDATE cring_hint_nodes AS n SET hints = n.hints + u.add
			FROM unnest($1::text[], $2::bigint[]) AS u(node, add)
			WHERE n.node = u.node
			RETURNING n.node, n.hints`, nn, nc)
		if err != nil {
			return fmt.Errorf("count hints: %w", err)
		}
		var over []string
		for rows.Next() {
			var n string
			var c int64
			if err := rows.Scan(&n, &c); err != nil {
				rows.Close()
				return fmt.Errorf("count hints: %w", err)
			}
			if c > s.limit {
				over = append(over, n)
			}
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("count hints: %w", err)
		}
		// Past the limit a full scan repairs the node instead of its
		// hints one by one (docs/design.md, "Hints and repairs").
		slices.Sort(over)
		for _, n := range over {
			if err := dropNode(ctx, tx, n, now); err != nil {
				return err
			}
			marked = append(marked, n)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("state: publish %d hints: %w", len(hints), err)
	}
	return marked, nil
}

// lockNodes makes sure each node has its row and locks them, in order:
// every change to a node's hints (publish, settle, drop) holds its row, so
// none of them sees another half done.
func lockNodes(ctx context.Context, tx pgx.Tx, nodes []string) error {
	if _, err := tx.Exec(ctx, `INSERT INTO cring_hint_nodes (node) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING`, nodes); err != nil {
		return fmt.Errorf("lock nodes: %w", err)
	}
	if _, err := tx.Exec(ctx, `SELECT 1 FROM cring_hint_nodes WHERE node = ANY($1) ORDER BY node FOR UPDATE`, nodes); err != nil {
		return fmt.Errorf("lock nodes: %w", err)
	}
	return nil
}

// dropNode forgets node's hints and marks it for a full scan since at (a
// later mark wins: the scan that clears it must have started after both).
func dropNode(ctx context.Context, tx pgx.Tx, node string, at time.Time) error {
	if _, err := tx.Exec(ctx, `DELETE FROM cring_hints WHERE node = $1`, node); err != nil {
		return fmt.Errorf("drop hints of %s: %w", node, err)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM cring_hint_batches WHERE node = $1`, node); err != nil {
		return fmt.Errorf("drop hints of %s: %w", node, err)
	}
	if _, err := tx.Exec(ctx, `UPDATE cring_hint_nodes
		SET hints = 0, full_scan_since = GREATEST(coalesce(full_scan_since, $2), $2) WHERE node = $1`, node, at); err != nil {
		return fmt.Errorf("mark %s for a full scan: %w", node, err)
	}
	return nil
}

// Claim takes up to most batches that are due, of the nodes given (those
// the caller sees up), each with at most names of its hints, clients' keys
// first, then the oldest. A claimed batch is owner's until its lease
// expires; batches another proxy holds, or is publishing to, are skipped.
func (s *Store) Claim(ctx context.Context, owner string, nodes []string, most, names int) ([]*Batch, error) {
	if len(nodes) == 0 || most <= 0 {
		return nil, nil
	}
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	if err := s.ready(ctx); err != nil {
		return nil, err
	}
	now := s.now()
	rows, err := s.pool.Query(ctx, `
		WITH c AS (
			SELECT node, user_id, dir FROM cring_hint_batches
			WHERE node = ANY($1) AND next_at <= $2 AND (lease_until IS NULL OR lease_until <= $2)
			ORDER BY reserved, oldest
			LIMIT $3
			FOR UPDATE SKIP LOCKED)
		UPDATE cring_hint_batches b SET lease_owner = $4, lease_until = $5
		FROM c WHERE b.node = c.node AND b.user_id = c.user_id AND b.dir = c.dir
		RETURNING b.node, b.user_id, b.dir, b.oldest, b.reserved`, nodes, now, most, owner, now.Add(s.lease))
	if err != nil {
		return nil, fmt.Errorf("state: claim hints: %w", err)
	}
	var out []*Batch
	var reserved []bool
	byKey := map[batchKey]*Batch{}
	for rows.Next() {
		b := &Batch{Names: map[string]int64{}, owner: owner}
		var r bool
		if err := rows.Scan(&b.Node, &b.User, &b.Dir, &b.Oldest, &r); err != nil {
			rows.Close()
			return nil, fmt.Errorf("state: claim hints: %w", err)
		}
		out = append(out, b)
		reserved = append(reserved, r)
		byKey[batchKey{b.Node, b.User, b.Dir}] = b
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("state: claim hints: %w", err)
	}
	if len(out) == 0 {
		return nil, nil
	}
	// The UPDATE returns rows in no order: clients' keys first again.
	idx := make([]int, len(out))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		if reserved[a] != reserved[b] {
			if reserved[a] {
				return 1
			}
			return -1
		}
		return out[a].Oldest.Compare(out[b].Oldest)
	})
	sorted := make([]*Batch, len(out))
	var cn, cu, cd []string
	for i, j := range idx {
		sorted[i] = out[j]
		cn, cu, cd = append(cn, out[j].Node), append(cu, out[j].User), append(cd, out[j].Dir)
	}
	rows, err = s.pool.Query(ctx, `
		SELECT c.node, c.user_id, c.dir, h.name, h.version
		FROM unnest($1::text[], $2::text[], $3::text[]) AS c(node, user_id, dir)
		CROSS JOIN LATERAL (
			SELECT name, version FROM cring_hints h
			WHERE h.node = c.node AND h.user_id = c.user_id AND h.dir = c.dir
			ORDER BY name LIMIT $4) h`, cn, cu, cd, names)
	if err != nil {
		s.releaseAll(ctx, sorted)
		return nil, fmt.Errorf("state: read claimed hints: %w", err)
	}
	for rows.Next() {
		var k batchKey
		var name string
		var v int64
		if err := rows.Scan(&k.node, &k.user, &k.dir, &name, &v); err != nil {
			rows.Close()
			s.releaseAll(ctx, sorted)
			return nil, fmt.Errorf("state: read claimed hints: %w", err)
		}
		byKey[k].Names[name] = v
	}
	if err := rows.Err(); err != nil {
		s.releaseAll(ctx, sorted)
		return nil, fmt.Errorf("state: read claimed hints: %w", err)
	}
	return sorted, nil
}

// releaseAll gives claimed batches back untouched (best effort: their
// leases expire anyway).
func (s *Store) releaseAll(ctx context.Context, bs []*Batch) {
	for _, b := range bs {
		_ = s.Release(context.WithoutCancel(ctx), b, nil, false)
	}
}

// Renew extends the leases of batches owner still holds.
func (s *Store) Renew(ctx context.Context, bs []*Batch) error {
	if len(bs) == 0 {
		return nil
	}
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	var cn, cu, cd []string
	for _, b := range bs {
		cn, cu, cd = append(cn, b.Node), append(cu, b.User), append(cd, b.Dir)
	}
	if _, err := s.pool.Exec(ctx, `
		UPDATE cring_hint_batches b SET lease_until = $5
		FROM unnest($1::text[], $2::text[], $3::text[]) AS c(node, user_id, dir)
		WHERE b.node = c.node AND b.user_id = c.user_id AND b.dir = c.dir AND b.lease_owner = $4`,
		cn, cu, cd, bs[0].owner, s.now().Add(s.lease)); err != nil {
		return fmt.Errorf("state: renew leases: %w", err)
	}
	return nil
}

// Release ends a claim: the hints settled (repaired on their node) are
// deleted unless published again since the claim, and the batch is due
// again at once, or after a backoff when failed (some key could not be
// repaired), or gone when it holds no hint. A batch whose lease passed to
// another proxy keeps that proxy's lease and schedule.
func (s *Store) Release(ctx context.Context, b *Batch, settled []string, failed bool) error {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	var names []string
	var versions []int64
	for _, n := range settled {
		if v, ok := b.Names[n]; ok {
			names, versions = append(names, n), append(versions, v)
		}
	}
	now := s.now()
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := lockNodes(ctx, tx, []string{b.Node}); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `
			DELETE FROM cring_hints h USING unnest($4::text[], $5::bigint[]) AS s(name, version)
			WHERE h.node = $1 AND h.user_id = $2 AND h.dir = $3 AND h.name = s.name AND h.version = s.version`,
			b.Node, b.User, b.Dir, names, versions)
		if err != nil {
			return fmt.Errorf("settle hints: %w", err)
		}
		gone := tag.RowsAffected()
		if _, err := tx.Exec(ctx, `UPDATE cring_hint_nodes SET hints = GREATEST(hints - $2, 0) WHERE node = $1`, b.Node, gone); err != nil {
			return fmt.Errorf("count hints: %w", err)
		}
		var owner *string
		var left, backoff int64
		var next time.Time
		err = tx.QueryRow(ctx, `SELECT lease_owner, hints, backoff_ms, next_at FROM cring_hint_batches
			WHERE node = $1 AND user_id = $2 AND dir = $3 FOR UPDATE`, b.Node, b.User, b.Dir).Scan(&owner, &left, &backoff, &next)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // dropped meanwhile (the node passed the limit)
		}
		if err != nil {
			return fmt.Errorf("release batch: %w", err)
		}
		left = max(left-gone, 0)
		mine := owner != nil && *owner == b.owner
		if mine {
			// As a proxy's own log: due again at once, or after a backoff
			// doubling from 1 s to MaxBackoff while keys fail.
			if failed {
				backoff = min(max(2*backoff, 1000), MaxBackoff.Milliseconds())
			} else {
				backoff = 0
			}
			next = now.Add(time.Duration(backoff) * time.Millisecond)
			owner = nil
		}
		if _, err := tx.Exec(ctx, `UPDATE cring_hint_batches SET hints = $4, lease_owner = $5,
			lease_until = CASE WHEN $5::text IS NULL THEN NULL ELSE lease_until END, backoff_ms = $6, next_at = $7
			WHERE node = $1 AND user_id = $2 AND dir = $3`, b.Node, b.User, b.Dir, left, owner, backoff, next); err != nil {
			return fmt.Errorf("release batch: %w", err)
		}
		if left > 0 && len(b.Names) > 0 {
			return nil
		}
		// Empty by its count (or claimed empty): gone if no hint is left.
		// Publishers hold the node's row too, so none is adding one now.
		if _, err := tx.Exec(ctx, `
			DELETE FROM cring_hint_batches b WHERE node = $1 AND user_id = $2 AND dir = $3
			AND NOT EXISTS (SELECT 1 FROM cring_hints h WHERE h.node = $1 AND h.user_id = $2 AND h.dir = $3)`,
			b.Node, b.User, b.Dir); err != nil {
			return fmt.Errorf("drop empty batch: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("state: release %s/%s for %s: %w", b.User, b.Dir, b.Node, err)
	}
	return nil
}

// MakeDue makes every batch of node due now (backoffs are kept for the
// next failure): the node is back, and what waited for it can settle.
func (s *Store) MakeDue(ctx context.Context, node string) error {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	if err := s.ready(ctx); err != nil {
		return err
	}
	now := s.now()
	if _, err := s.pool.Exec(ctx, `UPDATE cring_hint_batches SET next_at = $2 WHERE node = $1 AND next_at > $2`, node, now); err != nil {
		return fmt.Errorf("state: make %s's hints due: %w", node, err)
	}
	return nil
}

// Nodes is the hints the store holds per node and the nodes' full-scan
// marks (nodes with neither are left out).
func (s *Store) Nodes(ctx context.Context) (map[string]NodeState, error) {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	if err := s.ready(ctx); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, `SELECT node, hints, full_scan_since FROM cring_hint_nodes
		WHERE hints > 0 OR full_scan_since IS NOT NULL`)
	if err != nil {
		return nil, fmt.Errorf("state: read nodes: %w", err)
	}
	defer rows.Close()
	out := map[string]NodeState{}
	for rows.Next() {
		var n string
		var st NodeState
		var since *time.Time
		if err := rows.Scan(&n, &st.Hints, &since); err != nil {
			return nil, fmt.Errorf("state: read nodes: %w", err)
		}
		if since != nil {
			st.FullScanSince = *since
		}
		out[n] = st
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("state: read nodes: %w", err)
	}
	return out, nil
}

// Owed is a directory of a user's some node is owed hints in.
type Owed struct{ Node, User, Dir string }

// OwedDirs lists the directories each node is owed hints in, up to most;
// more is reported as complete=false (the caller then takes every node
// with hints as owed everything).
func (s *Store) OwedDirs(ctx context.Context, most int) (owed []Owed, complete bool, err error) {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	if err := s.ready(ctx); err != nil {
		return nil, false, err
	}
	rows, err := s.pool.Query(ctx, `SELECT node, user_id, dir FROM cring_hint_batches LIMIT $1`, most+1)
	if err != nil {
		return nil, false, fmt.Errorf("state: read owed directories: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var o Owed
		if err := rows.Scan(&o.Node, &o.User, &o.Dir); err != nil {
			return nil, false, fmt.Errorf("state: read owed directories: %w", err)
		}
		if len(owed) == most {
			return owed, false, nil
		}
		owed = append(owed, o)
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("state: read owed directories: %w", err)
	}
	return owed, true, nil
}

// ReleaseOwner gives back every batch owner holds: a proxy starting again
// under its id (its data dir) holds none, whatever its last run claimed.
func (s *Store) ReleaseOwner(ctx context.Context, owner string) error {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	if err := s.ready(ctx); err != nil {
		return err
	}
	if _, err := s.pool.Exec(ctx, `UPDATE cring_hint_batches SET lease_owner = NULL, lease_until = NULL
		WHERE lease_owner = $1`, owner); err != nil {
		return fmt.Errorf("state: release %s's claims: %w", owner, err)
	}
	return nil
}

// ClearFullScan clears node's full-scan mark if a scan that started at
// started (after the mark) read it for every user.
func (s *Store) ClearFullScan(ctx context.Context, node string, started time.Time) error {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	if err := s.ready(ctx); err != nil {
		return err
	}
	if _, err := s.pool.Exec(ctx, `UPDATE cring_hint_nodes SET full_scan_since = NULL
		WHERE node = $1 AND full_scan_since < $2`, node, started); err != nil {
		return fmt.Errorf("state: clear %s's full-scan mark: %w", node, err)
	}
	return nil
}
