package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/cring-dev/cring/internal/accounts"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// Administration of a closed server's accounts (cring accounts add, list,
// remove). Every node reads the same rows on every login and every HTTP
// request, so a change here holds on every node from its commit on.

// AddAccount admits keys: into the account na.CharmID names, or into a new
// account (a fresh charm ID, named na.Name) — or, when every key already
// belongs to one account, changes nothing but the unset name (running it
// again is harmless). A key of another account, or a name another account
// has (ignoring ASCII case), is a conflict: nothing changes and the
// conflicts come back with accounts.ErrConflicts.
func (d *DB) AddAccount(ctx context.Context, na accounts.NewAccount) (*accounts.AddResult, []accounts.Conflict, error) {
	if len(na.Keys) == 0 {
		return nil, nil, errors.New("add account: no key")
	}
	var res *accounts.AddResult
	var conflicts []accounts.Conflict
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		// One admin change (or name change) at a time: the checks below
		// and the inserts are one step.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockNames); err != nil {
			return err
		}
		owners := map[string]string{} // key → charm ID
		for _, k := range na.Keys {
			var id string
			err := tx.QueryRow(ctx, `SELECT u.charm_id FROM public_key k JOIN charm_user u ON u.id = k.user_id WHERE k.public_key = $1`, k).Scan(&id)
			switch {
			case err == nil:
				owners[k] = id
			case !errors.Is(err, pgx.ErrNoRows):
				return err
			}
		}
		target := na.CharmID
		if target == "" {
			target = accounts.SoleOwner(na.Keys, owners)
		}
		res = &accounts.AddResult{CharmID: target, Store: "postgres"}
		var user struct {
			id   int64
			name pgtype.Text
		}
		if target != "" {
			err := tx.QueryRow(ctx, `SELECT id, name FROM charm_user WHERE charm_id = $1`, target).Scan(&user.id, &user.name)
			if errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("%w: %s", accounts.ErrNoAccount, target)
			}
			if err != nil {
				return err
			}
		} else {
			res.CharmID, res.Created = uuid.New().String(), true
		}
		for _, k := range na.Keys {
			if o, ok := owners[k]; ok && o != res.CharmID {
				conflicts = append(conflicts, accounts.Conflict{Kind: "key", What: accounts.Fingerprint(k), KeyShort: accounts.KeyShort(k),
					Values: []string{o, res.CharmID}, Sources: []string{"postgres", "requested"}})
			}
		}
		if na.Name != "" {
			other, err := userWithName(ctx, tx, na.Name)
			switch {
			case err == nil && other.CharmID != res.CharmID:
				conflicts = append(conflicts, accounts.Conflict{Kind: "name", What: na.Name,
					Values: []string{other.CharmID, res.CharmID}, Sources: []string{"postgres", "requested"}})
			case err != nil && !errors.Is(err, pgx.ErrNoRows):
				return err
			}
			if user.name.String != "" && !accounts.SameName(user.name.String, na.Name) {
				conflicts = append(conflicts, accounts.Conflict{Kind: "field", What: "name of " + res.CharmID,
					Values: []string{user.name.String, na.Name}, Sources: []string{"postgres", "requested"}})
			}
		}
		if len(conflicts) > 0 {
			return accounts.ErrConflicts
		}
		if res.Created {
			if err := tx.QueryRow(ctx, `INSERT INTO charm_user (charm_id, name) VALUES ($1, $2) RETURNING id`,
				res.CharmID, nullIfEmpty(na.Name)).Scan(&user.id); err != nil {
				return fmt.Errorf("create account: %w", err)
			}
			res.Named = na.Name != ""
		} else if na.Name != "" && user.name.String == "" {
			if _, err := tx.Exec(ctx, `UPDATE charm_user SET name = $1 WHERE id = $2`, na.Name, user.id); err != nil {
				return fmt.Errorf("name account: %w", err)
			}
			res.Named = true
		}
		for _, k := range na.Keys {
			fp := accounts.Fingerprint(k)
			if _, ok := owners[k]; ok {
				res.Already = append(res.Already, fp)
				continue
			}
			if _, err := tx.Exec(ctx, `INSERT INTO public_key (user_id, public_key) VALUES ($1, $2)`, user.id, k); err != nil {
				return fmt.Errorf("add key %s: %w", fp, err)
			}
			owners[k] = res.CharmID
			res.Added = append(res.Added, fp)
		}
		return nil
	})
	if errors.Is(err, accounts.ErrConflicts) {
		return nil, conflicts, err
	}
	if err != nil {
		return nil, nil, fmt.Errorf("add account: %w", err)
	}
	return res, nil, nil
}

func nullIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// Accounts lists every account with its keys, oldest first. Bytes is -1
// (the database does not know what a user stores).
func (d *DB) Accounts(ctx context.Context) ([]accounts.Account, error) {
	rows, err := d.pool.Query(ctx, `SELECT u.charm_id, u.name, u.created_at, k.public_key, k.created_at
		FROM charm_user u LEFT JOIN public_key k ON k.user_id = u.id
		ORDER BY u.created_at NULLS FIRST, u.id, k.created_at NULLS FIRST, k.id`)
	if err != nil {
		return nil, fmt.Errorf("list accounts: %w", err)
	}
	defer rows.Close()
	var out []accounts.Account
	for rows.Next() {
		var id string
		var name, key pgtype.Text
		var created, keyCreated pgtype.Timestamptz
		if err := rows.Scan(&id, &name, &created, &key, &keyCreated); err != nil {
			return nil, fmt.Errorf("list accounts: %w", err)
		}
		if len(out) == 0 || out[len(out)-1].CharmID != id {
			out = append(out, accounts.Account{CharmID: id, Name: name.String, CreatedAt: timePtr(created), Keys: []accounts.AccountKey{}, Bytes: -1})
		}
		if key.Valid {
			a := &out[len(out)-1]
			a.Keys = append(a.Keys, accounts.AccountKey{Key: key.String, Fingerprint: accounts.Fingerprint(key.String), CreatedAt: timePtr(keyCreated)})
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list accounts: %w", err)
	}
	return out, nil
}

// Lookup finds the account named by target: its charm ID, one of its keys
// (charm's form) or a key's SHA256 fingerprint. key is the matching key
// ("" when target is a charm ID).
func (d *DB) Lookup(ctx context.Context, target string) (acct *accounts.Account, key string, err error) {
	all, err := d.Accounts(ctx)
	if err != nil {
		return nil, "", err
	}
	for i := range all {
		a := &all[i]
		if a.CharmID == target {
			return a, "", nil
		}
		for _, k := range a.Keys {
			if accounts.MatchKey(k.Key, target) {
				return a, k.Key, nil
			}
		}
	}
	return nil, "", fmt.Errorf("%w: %s", accounts.ErrNoKey, target)
}

// RemoveKey removes one key from an account. Its last key is refused
// (accounts.ErrLastKey): removing it would remove the account, which
// RemoveAccount does on purpose.
func (d *DB) RemoveKey(ctx context.Context, charmID, key string) error {
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		var uid int64
		err := tx.QueryRow(ctx, `SELECT id FROM charm_user WHERE charm_id = $1 FOR UPDATE`, charmID).Scan(&uid)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: %s", accounts.ErrNoAccount, charmID)
		}
		if err != nil {
			return err
		}
		var keys []string
		rows, err := tx.Query(ctx, `SELECT public_key FROM public_key WHERE user_id = $1`, uid)
		if err != nil {
			return err
		}
		for rows.Next() {
			var k string
			if err := rows.Scan(&k); err != nil {
				rows.Close()
				return err
			}
			keys = append(keys, k)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if !slices.Contains(keys, key) {
			return fmt.Errorf("%w: %s on %s", accounts.ErrNoKey, accounts.Fingerprint(key), charmID)
		}
		if len(keys) == 1 {
			return accounts.ErrLastKey
		}
		_, err = tx.Exec(ctx, `DELETE FROM public_key WHERE user_id = $1 AND public_key = $2`, uid, key)
		return err
	})
	if err != nil {
		return fmt.Errorf("remove key %s from %s: %w", accounts.Fingerprint(key), charmID, err)
	}
	return nil
}

// RemoveAccount removes an account with its keys, encrypt keys and
// sequences. Its files stay on the nodes (under the charm ID).
func (d *DB) RemoveAccount(ctx context.Context, charmID string) error {
	tag, err := d.pool.Exec(ctx, `DELETE FROM charm_user WHERE charm_id = $1`, charmID)
	if err != nil {
		return fmt.Errorf("remove account %s: %w", charmID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("remove account %s: %w", charmID, accounts.ErrNoAccount)
	}
	return nil
}
