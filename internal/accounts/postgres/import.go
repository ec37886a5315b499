package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/cring-dev/cring/internal/accounts"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

var errDryRun = errors.New("dry run")

// Import adds the accounts of snap (read from source, e.g. a stock node's
// charm_sqlite.db) to the database: users with their charm IDs, keys,
// encrypt keys, sequences (raised to the larger value) and news. What is
// already there is kept; running it again changes nothing. On conflicts (see
// accounts.Merge) it returns them with accounts.ErrConflicts and changes
// nothing. Imports run one at a time; nodes may keep serving meanwhile.
func (d *DB) Import(ctx context.Context, source string, snap *accounts.Snapshot, dryRun bool) (accounts.Changes, []accounts.Conflict, error) {
	ch := accounts.Changes{Store: "postgres"}
	var conflicts []accounts.Conflict
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockImport); err != nil {
			return fmt.Errorf("lock: %w", err)
		}
		have, err := accounts.ReadSnapshot(ctx, pgRows(tx))
		if err != nil {
			return fmt.Errorf("read current accounts: %w", err)
		}
		var union *accounts.Snapshot
		union, conflicts = accounts.Merge([]accounts.Source{{Name: "postgres", Snap: have}, {Name: source, Snap: snap}})
		if conflicts != nil {
			return accounts.ErrConflicts
		}
		if ch, err = apply(ctx, tx, union, have); err != nil {
			return err
		}
		ch.Store = "postgres"
		if dryRun {
			return errDryRun
		}
		return nil
	})
	switch {
	case err == nil, errors.Is(err, errDryRun):
		return ch, nil, nil
	case errors.Is(err, accounts.ErrConflicts):
		return accounts.Changes{}, conflicts, err
	}
	return accounts.Changes{}, nil, fmt.Errorf("import %s: %w", source, err)
}

// Snapshot reads every account in the database.
func (d *DB) Snapshot(ctx context.Context) (*accounts.Snapshot, error) {
	var s *accounts.Snapshot
	err := pgx.BeginTxFunc(ctx, d.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var err error
		s, err = accounts.ReadSnapshot(ctx, pgRows(tx))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read accounts: %w", err)
	}
	return s, nil
}

// pgRows reads through a pgx transaction.
func pgRows(tx pgx.Tx) accounts.Rows {
	return func(ctx context.Context, query string, each func(scan func(dest ...any) error) error) error {
		rows, err := tx.Query(ctx, query)
		if err != nil {
			return err
		}
		defer rows.Close()
		return accounts.EachRow(rows, each)
	}
}

func textOrNull(s string) pgtype.Text { return pgtype.Text{String: s, Valid: s != ""} }

// apply adds to the database what union has and have (its current
// accounts, read in this transaction) lacks.
func apply(ctx context.Context, tx pgx.Tx, union, have *accounts.Snapshot) (accounts.Changes, error) {
	var ch accounts.Changes
	ids, err := accounts.ReadIDs(ctx, pgRows(tx))
	if err != nil {
		return ch, err
	}
	for _, u := range union.Users {
		x := ids.Users[u.CharmID]
		if x == nil {
			x = &accounts.UserRow{Name: u.Name, Email: u.Email, Bio: u.Bio}
			if err := tx.QueryRow(ctx, `INSERT INTO charm_user (charm_id, name, email, bio, created_at)
				VALUES ($1, $2, $3, $4, coalesce($5::timestamptz, now())) RETURNING id`,
				u.CharmID, textOrNull(u.Name), textOrNull(u.Email), textOrNull(u.Bio), u.CreatedAt).Scan(&x.ID); err != nil {
				return ch, fmt.Errorf("add user %s: %w", u.CharmID, err)
			}
			ids.Users[u.CharmID] = x
			ch.Users++
		} else {
			unset := x.Unset(u)
			for _, f := range unset {
				if _, err := tx.Exec(ctx, `UPDATE charm_user SET `+f[0]+` = $1 WHERE id = $2`, f[1], x.ID); err != nil {
					return ch, fmt.Errorf("set %s of %s: %w", f[0], u.CharmID, err)
				}
			}
			if len(unset) > 0 {
				ch.UsersUpdated++
			}
		}
		for _, k := range u.Keys {
			kid, ok := ids.Keys[k.Key]
			if !ok {
				if err := tx.QueryRow(ctx, `INSERT INTO public_key (user_id, public_key, created_at)
					VALUES ($1, $2, coalesce($3::timestamptz, now())) RETURNING id`, x.ID, k.Key, k.CreatedAt).Scan(&kid); err != nil {
					return ch, fmt.Errorf("add key of %s: %w", u.CharmID, err)
				}
				ids.Keys[k.Key] = kid
				ch.Keys++
			}
			for _, e := range k.EncryptKeys {
				if ids.EncryptKeys[accounts.EncryptKeyID{Key: kid, GlobalID: e.GlobalID}] {
					continue
				}
				tag, err := tx.Exec(ctx, `INSERT INTO encrypt_key (public_key_id, global_id, encrypted_key, created_at)
					VALUES ($1, $2, $3, coalesce($4::timestamptz, now()))
					ON CONFLICT (public_key_id, global_id) DO NOTHING`, kid, e.GlobalID, e.EncryptedKey, e.CreatedAt)
				if err != nil {
					return ch, fmt.Errorf("add encrypt key %s of %s: %w", e.GlobalID, u.CharmID, err)
				}
				ch.EncryptKeys += int(tag.RowsAffected())
			}
		}
		for name, v := range u.Seqs {
			if cur, ok := ids.Seqs[accounts.SeqID{User: x.ID, Name: name}]; ok && cur >= v {
				continue
			}
			if _, err := tx.Exec(ctx, `INSERT INTO named_seq (user_id, name, seq) VALUES ($1, $2, $3)
				ON CONFLICT (user_id, name) DO UPDATE SET seq = greatest(named_seq.seq, excluded.seq)`, x.ID, name, int64(v)); err != nil {
				return ch, fmt.Errorf("set seq %s of %s: %w", name, u.CharmID, err)
			}
			ch.Seqs++
		}
	}

	present := map[string]bool{}
	for _, n := range have.News {
		present[accounts.NewsID(n)] = true
	}
	for _, n := range union.News {
		if present[accounts.NewsID(n)] {
			continue
		}
		var id int64
		if err := tx.QueryRow(ctx, `INSERT INTO news (subject, body, created_at) VALUES ($1, $2, coalesce($3::timestamptz, now())) RETURNING id`,
			n.Subject, n.Body, n.CreatedAt).Scan(&id); err != nil {
			return ch, fmt.Errorf("add news %q: %w", n.Subject, err)
		}
		for _, tag := range n.Tags {
			if _, err := tx.Exec(ctx, `INSERT INTO news_tag (news_id, tag) VALUES ($1, $2)`, id, tag); err != nil {
				return ch, fmt.Errorf("add news tag: %w", err)
			}
		}
		ch.News++
	}
	return ch, nil
}
