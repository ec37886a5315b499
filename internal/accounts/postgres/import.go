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
		have, err := readSnapshot(ctx, tx)
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
		s, err = readSnapshot(ctx, tx)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read accounts: %w", err)
	}
	return s, nil
}

func eachRow(ctx context.Context, tx pgx.Tx, query string, f func(pgx.Rows) error) error {
	rows, err := tx.Query(ctx, query)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := f(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

func readSnapshot(ctx context.Context, tx pgx.Tx) (*accounts.Snapshot, error) {
	s := &accounts.Snapshot{}
	users := map[int64]*accounts.User{}
	err := eachRow(ctx, tx, `SELECT id, charm_id, name, email, bio, created_at FROM charm_user ORDER BY id`, func(r pgx.Rows) error {
		var id int64
		var name, email, bio pgtype.Text
		var created pgtype.Timestamptz
		u := &accounts.User{Seqs: map[string]uint64{}}
		if err := r.Scan(&id, &u.CharmID, &name, &email, &bio, &created); err != nil {
			return err
		}
		u.Name, u.Email, u.Bio, u.CreatedAt = name.String, email.String, bio.String, timePtr(created)
		users[id] = u
		s.Users = append(s.Users, u)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("users: %w", err)
	}
	keys := map[int64]*accounts.Key{}
	err = eachRow(ctx, tx, `SELECT id, user_id, public_key, created_at FROM public_key ORDER BY id`, func(r pgx.Rows) error {
		var id, uid int64
		var created pgtype.Timestamptz
		k := &accounts.Key{}
		if err := r.Scan(&id, &uid, &k.Key, &created); err != nil {
			return err
		}
		k.CreatedAt = timePtr(created)
		if u := users[uid]; u != nil {
			u.Keys = append(u.Keys, k)
			keys[id] = k
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("public keys: %w", err)
	}
	err = eachRow(ctx, tx, `SELECT public_key_id, global_id, encrypted_key, created_at FROM encrypt_key ORDER BY id`, func(r pgx.Rows) error {
		var kid int64
		var created pgtype.Timestamptz
		e := &accounts.EncryptKey{}
		if err := r.Scan(&kid, &e.GlobalID, &e.EncryptedKey, &created); err != nil {
			return err
		}
		e.CreatedAt = timePtr(created)
		if k := keys[kid]; k != nil {
			k.EncryptKeys = append(k.EncryptKeys, e)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("encrypt keys: %w", err)
	}
	err = eachRow(ctx, tx, `SELECT user_id, name, seq FROM named_seq ORDER BY id`, func(r pgx.Rows) error {
		var uid, seq int64
		var name string
		if err := r.Scan(&uid, &name, &seq); err != nil {
			return err
		}
		if u := users[uid]; u != nil {
			u.Seqs[name] = uint64(seq)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("named seqs: %w", err)
	}
	news := map[int64]*accounts.News{}
	err = eachRow(ctx, tx, `SELECT id, subject, body, created_at FROM news ORDER BY id`, func(r pgx.Rows) error {
		var id int64
		var subject, body pgtype.Text
		var created pgtype.Timestamptz
		if err := r.Scan(&id, &subject, &body, &created); err != nil {
			return err
		}
		n := &accounts.News{Subject: subject.String, Body: body.String, CreatedAt: timePtr(created)}
		news[id] = n
		s.News = append(s.News, n)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("news: %w", err)
	}
	err = eachRow(ctx, tx, `SELECT news_id, tag FROM news_tag ORDER BY id`, func(r pgx.Rows) error {
		var nid int64
		var tag pgtype.Text
		if err := r.Scan(&nid, &tag); err != nil {
			return err
		}
		if n := news[nid]; n != nil {
			n.Tags = append(n.Tags, tag.String)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("news tags: %w", err)
	}
	return s, nil
}

func textOrNull(s string) pgtype.Text { return pgtype.Text{String: s, Valid: s != ""} }

// apply adds to the database what union has and have (its current
// accounts, read in this transaction) lacks.
func apply(ctx context.Context, tx pgx.Tx, union, have *accounts.Snapshot) (accounts.Changes, error) {
	var ch accounts.Changes
	type row struct {
		id               int64
		name, email, bio string
	}
	users := map[string]*row{}
	if err := eachRow(ctx, tx, `SELECT id, charm_id, name, email, bio FROM charm_user`, func(r pgx.Rows) error {
		var charmID string
		var name, email, bio pgtype.Text
		x := &row{}
		if err := r.Scan(&x.id, &charmID, &name, &email, &bio); err != nil {
			return err
		}
		x.name, x.email, x.bio = name.String, email.String, bio.String
		users[charmID] = x
		return nil
	}); err != nil {
		return ch, err
	}
	keys := map[string]int64{}
	if err := eachRow(ctx, tx, `SELECT id, public_key FROM public_key`, func(r pgx.Rows) error {
		var id int64
		var k string
		if err := r.Scan(&id, &k); err != nil {
			return err
		}
		keys[k] = id
		return nil
	}); err != nil {
		return ch, err
	}
	type seqID struct {
		user int64
		name string
	}
	seqs := map[seqID]uint64{}
	if err := eachRow(ctx, tx, `SELECT user_id, name, seq FROM named_seq`, func(r pgx.Rows) error {
		var id seqID
		var v int64
		if err := r.Scan(&id.user, &id.name, &v); err != nil {
			return err
		}
		seqs[id] = uint64(v)
		return nil
	}); err != nil {
		return ch, err
	}

	for _, u := range union.Users {
		x := users[u.CharmID]
		if x == nil {
			x = &row{name: u.Name, email: u.Email, bio: u.Bio}
			if err := tx.QueryRow(ctx, `INSERT INTO charm_user (charm_id, name, email, bio, created_at)
				VALUES ($1, $2, $3, $4, coalesce($5::timestamptz, now())) RETURNING id`,
				u.CharmID, textOrNull(u.Name), textOrNull(u.Email), textOrNull(u.Bio), u.CreatedAt).Scan(&x.id); err != nil {
				return ch, fmt.Errorf("add user %s: %w", u.CharmID, err)
			}
			users[u.CharmID] = x
			ch.Users++
		} else {
			updated := false
			for _, f := range []struct {
				col       string
				have, add string
			}{{"name", x.name, u.Name}, {"email", x.email, u.Email}, {"bio", x.bio, u.Bio}} {
				if f.have != "" || f.add == "" {
					continue
				}
				if _, err := tx.Exec(ctx, `UPDATE charm_user SET `+f.col+` = $1 WHERE id = $2`, f.add, x.id); err != nil {
					return ch, fmt.Errorf("set %s of %s: %w", f.col, u.CharmID, err)
				}
				updated = true
			}
			if updated {
				ch.UsersUpdated++
			}
		}
		for _, k := range u.Keys {
			kid, ok := keys[k.Key]
			if !ok {
				if err := tx.QueryRow(ctx, `INSERT INTO public_key (user_id, public_key, created_at)
					VALUES ($1, $2, coalesce($3::timestamptz, now())) RETURNING id`, x.id, k.Key, k.CreatedAt).Scan(&kid); err != nil {
					return ch, fmt.Errorf("add key of %s: %w", u.CharmID, err)
				}
				keys[k.Key] = kid
				ch.Keys++
			}
			for _, e := range k.EncryptKeys {
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
			if cur, ok := seqs[seqID{x.id, name}]; ok && cur >= v {
				continue
			}
			if _, err := tx.Exec(ctx, `INSERT INTO named_seq (user_id, name, seq) VALUES ($1, $2, $3)
				ON CONFLICT (user_id, name) DO UPDATE SET seq = greatest(named_seq.seq, excluded.seq)`, x.id, name, int64(v)); err != nil {
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
