package accounts

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/charmbracelet/charm/server/db"
	"github.com/charmbracelet/charm/server/db/sqlite"
	_ "modernc.org/sqlite" // the "sqlite" driver charm's own store uses
)

// OpenSQLite opens (creating when new) charm's own sqlite account store at
// path, as a stock `charm serve` does under <data>/db/charm_sqlite.db.
func OpenSQLite(path string) (d db.DB, err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open sqlite accounts: %w", err)
	}
	// charm's constructor panics on any error.
	defer func() {
		if r := recover(); r != nil {
			d, err = nil, fmt.Errorf("open sqlite accounts %s: %v", path, r)
		}
	}()
	return sqlite.NewDB(path), nil
}

// openExisting opens a charm sqlite file for tools; a missing file or one
// without charm's tables is an error, never created.
func openExisting(ctx context.Context, path string) (*sql.DB, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, err
	}
	sdb, err := sql.Open("sqlite", path+sqlite.DbOptions)
	if err != nil {
		return nil, err
	}
	var n int
	if err := sdb.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('charm_user', 'public_key', 'encrypt_key', 'named_seq')`).Scan(&n); err != nil {
		sdb.Close()
		return nil, fmt.Errorf("not a sqlite database: %w", err)
	}
	if n != 4 {
		sdb.Close()
		return nil, errors.New("not a charm account database (no charm_user, public_key, encrypt_key and named_seq tables)")
	}
	return sdb, nil
}

// ReadSQLite reads a charm sqlite account database (a consistent snapshot,
// taken in one read transaction).
func ReadSQLite(ctx context.Context, path string) (*Snapshot, error) {
	sdb, err := openExisting(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	defer sdb.Close()
	tx, err := sdb.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	defer tx.Rollback() //nolint:errcheck // read only
	s, err := readSnapshot(ctx, tx)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return s, nil
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

type execQuerier interface {
	querier
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func readSnapshot(ctx context.Context, q querier) (*Snapshot, error) {
	s := &Snapshot{}
	users := map[int64]*User{}
	err := each(ctx, q, `SELECT id, charm_id, name, email, bio, created_at FROM charm_user ORDER BY id`, func(r *sql.Rows) error {
		var id int64
		var name, email, bio sql.NullString
		var created any
		u := &User{Seqs: map[string]uint64{}}
		if err := r.Scan(&id, &u.CharmID, &name, &email, &bio, &created); err != nil {
			return err
		}
		u.Name, u.Email, u.Bio = name.String, email.String, bio.String
		t, err := sqliteTime(created)
		if err != nil {
			return fmt.Errorf("user %s: %w", u.CharmID, err)
		}
		u.CreatedAt = t
		users[id] = u
		s.Users = append(s.Users, u)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("users: %w", err)
	}
	keys := map[int64]*Key{}
	err = each(ctx, q, `SELECT id, user_id, public_key, created_at FROM public_key ORDER BY id`, func(r *sql.Rows) error {
		var id, uid int64
		var created any
		k := &Key{}
		if err := r.Scan(&id, &uid, &k.Key, &created); err != nil {
			return err
		}
		t, err := sqliteTime(created)
		if err != nil {
			return fmt.Errorf("key %d: %w", id, err)
		}
		k.CreatedAt = t
		if u := users[uid]; u != nil { // a key of no user is unreachable: dropped
			u.Keys = append(u.Keys, k)
			keys[id] = k
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("public keys: %w", err)
	}
	err = each(ctx, q, `SELECT public_key_id, global_id, encrypted_key, created_at FROM encrypt_key ORDER BY id`, func(r *sql.Rows) error {
		var kid int64
		var created any
		e := &EncryptKey{}
		if err := r.Scan(&kid, &e.GlobalID, &e.EncryptedKey, &created); err != nil {
			return err
		}
		t, err := sqliteTime(created)
		if err != nil {
			return fmt.Errorf("encrypt key %s: %w", e.GlobalID, err)
		}
		e.CreatedAt = t
		if k := keys[kid]; k != nil {
			// sqlite does not stop the same global ID twice: keep the first.
			for _, have := range k.EncryptKeys {
				if have.GlobalID == e.GlobalID {
					return nil
				}
			}
			k.EncryptKeys = append(k.EncryptKeys, e)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("encrypt keys: %w", err)
	}
	err = each(ctx, q, `SELECT user_id, name, seq FROM named_seq ORDER BY id`, func(r *sql.Rows) error {
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
	news := map[int64]*News{}
	err = each(ctx, q, `SELECT id, subject, body, created_at FROM news ORDER BY id`, func(r *sql.Rows) error {
		var id int64
		var subject, body sql.NullString
		var created any
		if err := r.Scan(&id, &subject, &body, &created); err != nil {
			return err
		}
		t, err := sqliteTime(created)
		if err != nil {
			return fmt.Errorf("news %d: %w", id, err)
		}
		n := &News{Subject: subject.String, Body: body.String, CreatedAt: t}
		news[id] = n
		s.News = append(s.News, n)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("news: %w", err)
	}
	err = each(ctx, q, `SELECT news_id, tag FROM news_tag ORDER BY id`, func(r *sql.Rows) error {
		var nid int64
		var tag sql.NullString
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

func each(ctx context.Context, q querier, query string, f func(*sql.Rows) error) error {
	rows, err := q.QueryContext(ctx, query)
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

// sqliteTime reads a timestamp column: the driver parses what it can; charm's
// defaults are "2006-01-02 15:04:05" UTC, and the driver writes Go's
// time.String() form for the times charm passes it.
func sqliteTime(v any) (*time.Time, error) {
	switch t := v.(type) {
	case nil:
		return nil, nil
	case time.Time:
		u := t.UTC()
		return &u, nil
	case string, []byte:
		s := fmt.Sprint(t)
		if b, ok := v.([]byte); ok {
			s = string(b)
		}
		if i := strings.Index(s, " m="); i >= 0 {
			s = s[:i] // a monotonic clock reading, from time.Now().String()
		}
		for _, layout := range []string{
			"2006-01-02 15:04:05.999999999 -0700 MST",
			"2006-01-02 15:04:05.999999999-07:00",
			"2006-01-02 15:04:05.999999999",
			time.RFC3339Nano,
		} {
			if p, err := time.Parse(layout, s); err == nil {
				u := p.UTC()
				return &u, nil
			}
		}
		return nil, fmt.Errorf("unreadable timestamp %q", s)
	case int64:
		u := time.Unix(t, 0).UTC()
		return &u, nil
	}
	return nil, fmt.Errorf("unreadable timestamp %v (%T)", v, v)
}
