package accounts

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"time"
)

// ErrConflicts is returned when a merge would have to guess: nothing changed.
var ErrConflicts = errors.New("conflicting accounts")

// Changes counts what one store gained.
type Changes struct {
	Store        string `json:"store"`
	Users        int    `json:"users"`         // users added
	UsersUpdated int    `json:"users_updated"` // unset name, email or bio filled
	Keys         int    `json:"keys"`
	EncryptKeys  int    `json:"encrypt_keys"`
	Seqs         int    `json:"seqs"` // sequences added or raised
	News         int    `json:"news,omitempty"`
}

// Total is the number of changes.
func (c Changes) Total() int {
	return c.Users + c.UsersUpdated + c.Keys + c.EncryptKeys + c.Seqs + c.News
}

// SyncReport is what Sync found and did.
type SyncReport struct {
	Users       int        `json:"users"` // in the union
	Keys        int        `json:"keys"`
	EncryptKeys int        `json:"encrypt_keys"`
	Seqs        int        `json:"seqs"`
	Files       []Changes  `json:"files"`
	Conflicts   []Conflict `json:"conflicts,omitempty"`
	DryRun      bool       `json:"dry_run,omitempty"`
}

// Sync merges stock charm sqlite account databases in place: afterwards
// every file holds the union of users, keys, encrypt keys, names and
// sequences (at their maximum). Rows already there are never altered, except
// unset user fields filled and sequences raised. On conflicts (see Merge) it
// returns them with ErrConflicts and changes nothing.
//
// Every file is write-locked (BEGIN IMMEDIATE) from the first read to the
// last commit, so nodes still running can't slip a conflicting change in.
func Sync(ctx context.Context, paths []string, dryRun bool) (*SyncReport, error) {
	if len(paths) < 2 {
		return nil, errors.New("sync needs two or more databases")
	}
	if err := distinctPaths(paths); err != nil {
		return nil, err
	}
	locked, sources, err := lockStores(ctx, paths)
	if err != nil {
		return nil, err
	}
	defer locked.close()

	union, conflicts := Merge(sources)
	if conflicts != nil {
		return &SyncReport{Conflicts: conflicts, DryRun: dryRun}, ErrConflicts
	}
	rep := &SyncReport{DryRun: dryRun}
	rep.Users, rep.Keys, rep.EncryptKeys, rep.Seqs = union.Counts()
	rep.Files, err = locked.apply(ctx, union, dryRun)
	if rep.Files == nil && err != nil {
		return nil, err
	}
	return rep, err
}

// distinctPaths refuses one file named twice (two paths, one file).
func distinctPaths(paths []string) error {
	seen := map[string]string{}
	for _, p := range paths {
		abs, err := filepath.Abs(p)
		if err == nil {
			if r, err := filepath.EvalSymlinks(abs); err == nil {
				abs = r
			}
		}
		if prev, ok := seen[abs]; ok {
			return fmt.Errorf("%s and %s are the same file", prev, p)
		}
		seen[abs] = p
	}
	return nil
}

// lockedStores are sqlite account files, each in a write transaction
// (BEGIN IMMEDIATE) from the first read to the last commit.
type lockedStores []*lockedStore

type lockedStore struct {
	path string
	db   *sql.DB
	conn *sql.Conn
	open bool // a transaction is open
}

// lockStores opens and write-locks every file, then reads each one.
func lockStores(ctx context.Context, paths []string) (lockedStores, []Source, error) {
	var stores lockedStores
	var sources []Source
	for _, p := range paths {
		sdb, err := openExisting(ctx, p)
		if err != nil {
			stores.close()
			return nil, nil, fmt.Errorf("open %s: %w", p, err)
		}
		conn, err := sdb.Conn(ctx)
		if err != nil {
			sdb.Close()
			stores.close()
			return nil, nil, fmt.Errorf("open %s: %w", p, err)
		}
		s := &lockedStore{path: p, db: sdb, conn: conn}
		stores = append(stores, s)
		if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
			stores.close()
			return nil, nil, fmt.Errorf("lock %s: %w", p, err)
		}
		s.open = true
		snap, err := ReadSnapshot(ctx, SQLRows(conn))
		if err != nil {
			stores.close()
			return nil, nil, fmt.Errorf("read %s: %w", p, err)
		}
		sources = append(sources, Source{Name: p, Snap: snap})
	}
	return stores, sources, nil
}

// apply adds union to every file and commits them all (or, for a dry run,
// leaves close to roll everything back).
func (ls lockedStores) apply(ctx context.Context, union *Snapshot, dryRun bool) ([]Changes, error) {
	var out []Changes
	for _, s := range ls {
		ch, err := applySQLite(ctx, s.conn, union)
		if err != nil {
			return nil, fmt.Errorf("update %s: %w", s.path, err)
		}
		ch.Store = s.path
		out = append(out, ch)
	}
	if dryRun {
		return out, nil
	}
	for _, s := range ls {
		if _, err := s.conn.ExecContext(ctx, "COMMIT"); err != nil {
			return out, fmt.Errorf("commit %s: %w (files before it are changed; run it again)", s.path, err)
		}
		s.open = false
	}
	return out, nil
}

// close rolls back what is still open and closes every file.
func (ls lockedStores) close() {
	for _, s := range ls {
		if s.open {
			_, _ = s.conn.ExecContext(context.Background(), "ROLLBACK")
		}
		s.conn.Close()
		s.db.Close()
	}
}

func nullIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// sqliteValue is a time as the driver stores it for charm (UTC, no
// monotonic reading, which it could not read back).
func sqliteValue(t *time.Time) any {
	if t == nil {
		return nil
	}
	return t.UTC()
}

// applySQLite adds to one charm sqlite database (q: a connection in a
// write transaction) what union has and it lacks.
func applySQLite(ctx context.Context, q *sql.Conn, union *Snapshot) (Changes, error) {
	var ch Changes
	ids, err := ReadIDs(ctx, SQLRows(q))
	if err != nil {
		return ch, err
	}
	for _, u := range union.Users {
		x := ids.Users[u.CharmID]
		if x == nil {
			res, err := q.ExecContext(ctx, `INSERT INTO charm_user (charm_id, name, email, bio, created_at) VALUES (?, ?, ?, ?, coalesce(?, current_timestamp))`,
				u.CharmID, nullIfEmpty(u.Name), nullIfEmpty(u.Email), nullIfEmpty(u.Bio), sqliteValue(u.CreatedAt))
			if err != nil {
				return ch, fmt.Errorf("add user %s: %w", u.CharmID, err)
			}
			id, err := res.LastInsertId()
			if err != nil {
				return ch, err
			}
			x = &UserRow{ID: id, Name: u.Name, Email: u.Email, Bio: u.Bio}
			ids.Users[u.CharmID] = x
			ch.Users++
		} else {
			unset := x.Unset(u)
			for _, f := range unset {
				if _, err := q.ExecContext(ctx, `UPDATE charm_user SET `+f[0]+` = ? WHERE id = ?`, f[1], x.ID); err != nil {
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
				res, err := q.ExecContext(ctx, `INSERT INTO public_key (user_id, public_key, created_at) VALUES (?, ?, coalesce(?, current_timestamp))`,
					x.ID, k.Key, sqliteValue(k.CreatedAt))
				if err != nil {
					return ch, fmt.Errorf("add key of %s: %w", u.CharmID, err)
				}
				if kid, err = res.LastInsertId(); err != nil {
					return ch, err
				}
				ids.Keys[k.Key] = kid
				ch.Keys++
			}
			for _, e := range k.EncryptKeys {
				if ids.EncryptKeys[EncryptKeyID{kid, e.GlobalID}] {
					continue
				}
				if _, err := q.ExecContext(ctx, `INSERT INTO encrypt_key (public_key_id, global_id, encrypted_key, created_at) VALUES (?, ?, ?, coalesce(?, current_timestamp))`,
					kid, e.GlobalID, e.EncryptedKey, sqliteValue(e.CreatedAt)); err != nil {
					return ch, fmt.Errorf("add encrypt key %s of %s: %w", e.GlobalID, u.CharmID, err)
				}
				ids.EncryptKeys[EncryptKeyID{kid, e.GlobalID}] = true
				ch.EncryptKeys++
			}
		}
		for name, v := range u.Seqs {
			have, ok := ids.Seqs[SeqID{x.ID, name}]
			switch {
			case !ok:
				if _, err := q.ExecContext(ctx, `INSERT INTO named_seq (user_id, name, seq) VALUES (?, ?, ?)`, x.ID, name, int64(v)); err != nil {
					return ch, fmt.Errorf("add seq %s of %s: %w", name, u.CharmID, err)
				}
			case have < v:
				if _, err := q.ExecContext(ctx, `UPDATE named_seq SET seq = ? WHERE user_id = ? AND name = ?`, int64(v), x.ID, name); err != nil {
					return ch, fmt.Errorf("raise seq %s of %s: %w", name, u.CharmID, err)
				}
			default:
				continue
			}
			ids.Seqs[SeqID{x.ID, name}] = v
			ch.Seqs++
		}
	}
	return ch, nil
}
