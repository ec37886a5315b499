package accounts

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"
)

// Rows runs a query in one store's transaction and calls each with every
// row's Scan. A database/sql and a pgx transaction both fit it, so reading
// accounts is written once for charm's sqlite files and for PostgreSQL:
// both drivers scan text columns into sql.NullString and timestamps into
// an any (a time.Time, or text for what sqlite stored as text).
type Rows func(ctx context.Context, query string, each func(scan func(dest ...any) error) error) error

// SQLRows reads through a database/sql connection or transaction.
func SQLRows(q interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}) Rows {
	return func(ctx context.Context, query string, each func(scan func(dest ...any) error) error) error {
		rows, err := q.QueryContext(ctx, query)
		if err != nil {
			return err
		}
		defer rows.Close()
		return EachRow(rows, each)
	}
}

// EachRow calls each with every row of rows, then returns rows' error.
func EachRow(rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
}, each func(scan func(dest ...any) error) error) error {
	for rows.Next() {
		if err := each(rows.Scan); err != nil {
			return err
		}
	}
	return rows.Err()
}

// ReadSnapshot reads every account of a store. Run it in one transaction
// for a consistent snapshot.
func ReadSnapshot(ctx context.Context, rows Rows) (*Snapshot, error) {
	s := &Snapshot{}
	users := map[int64]*User{}
	err := rows(ctx, `SELECT id, charm_id, name, email, bio, created_at FROM charm_user ORDER BY id`, func(scan func(...any) error) error {
		var id int64
		var name, email, bio sql.NullString
		var created any
		u := &User{Seqs: map[string]uint64{}}
		if err := scan(&id, &u.CharmID, &name, &email, &bio, &created); err != nil {
			return err
		}
		u.Name, u.Email, u.Bio = name.String, email.String, bio.String
		t, err := decodeTime(created)
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
	err = rows(ctx, `SELECT id, user_id, public_key, created_at FROM public_key ORDER BY id`, func(scan func(...any) error) error {
		var id, uid int64
		var created any
		k := &Key{}
		if err := scan(&id, &uid, &k.Key, &created); err != nil {
			return err
		}
		t, err := decodeTime(created)
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
	err = rows(ctx, `SELECT public_key_id, global_id, encrypted_key, created_at FROM encrypt_key ORDER BY id`, func(scan func(...any) error) error {
		var kid int64
		var created any
		e := &EncryptKey{}
		if err := scan(&kid, &e.GlobalID, &e.EncryptedKey, &created); err != nil {
			return err
		}
		t, err := decodeTime(created)
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
	err = rows(ctx, `SELECT user_id, name, seq FROM named_seq ORDER BY id`, func(scan func(...any) error) error {
		var uid, seq int64
		var name string
		if err := scan(&uid, &name, &seq); err != nil {
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
	err = rows(ctx, `SELECT id, subject, body, created_at FROM news ORDER BY id`, func(scan func(...any) error) error {
		var id int64
		var subject, body sql.NullString
		var created any
		if err := scan(&id, &subject, &body, &created); err != nil {
			return err
		}
		t, err := decodeTime(created)
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
	err = rows(ctx, `SELECT news_id, tag FROM news_tag ORDER BY id`, func(scan func(...any) error) error {
		var nid int64
		var tag sql.NullString
		if err := scan(&nid, &tag); err != nil {
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

// IDs are the row ids a store already has, what adding a union to it needs.
type IDs struct {
	Users       map[string]*UserRow // by charm ID
	Keys        map[string]int64    // by public key
	EncryptKeys map[EncryptKeyID]bool
	Seqs        map[SeqID]uint64
}

// UserRow is a user row as stored; empty fields are unset.
type UserRow struct {
	ID               int64
	Name, Email, Bio string
}

// EncryptKeyID names an encrypt key row.
type EncryptKeyID struct {
	Key      int64 // public_key id
	GlobalID string
}

// SeqID names a named_seq row.
type SeqID struct {
	User int64
	Name string
}

// ReadIDs reads the ids of a store's users, keys, encrypt keys and
// sequences.
func ReadIDs(ctx context.Context, rows Rows) (*IDs, error) {
	ids := &IDs{Users: map[string]*UserRow{}, Keys: map[string]int64{}, EncryptKeys: map[EncryptKeyID]bool{}, Seqs: map[SeqID]uint64{}}
	if err := rows(ctx, `SELECT id, charm_id, name, email, bio FROM charm_user`, func(scan func(...any) error) error {
		var charmID string
		var name, email, bio sql.NullString
		x := &UserRow{}
		if err := scan(&x.ID, &charmID, &name, &email, &bio); err != nil {
			return err
		}
		x.Name, x.Email, x.Bio = name.String, email.String, bio.String
		ids.Users[charmID] = x
		return nil
	}); err != nil {
		return nil, fmt.Errorf("users: %w", err)
	}
	if err := rows(ctx, `SELECT id, public_key FROM public_key`, func(scan func(...any) error) error {
		var id int64
		var k string
		if err := scan(&id, &k); err != nil {
			return err
		}
		ids.Keys[k] = id
		return nil
	}); err != nil {
		return nil, fmt.Errorf("public keys: %w", err)
	}
	if err := rows(ctx, `SELECT public_key_id, global_id FROM encrypt_key`, func(scan func(...any) error) error {
		var id EncryptKeyID
		if err := scan(&id.Key, &id.GlobalID); err != nil {
			return err
		}
		ids.EncryptKeys[id] = true
		return nil
	}); err != nil {
		return nil, fmt.Errorf("encrypt keys: %w", err)
	}
	if err := rows(ctx, `SELECT user_id, name, seq FROM named_seq`, func(scan func(...any) error) error {
		var id SeqID
		var v int64
		if err := scan(&id.User, &id.Name, &v); err != nil {
			return err
		}
		ids.Seqs[id] = uint64(v)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("named seqs: %w", err)
	}
	return ids, nil
}

// Unset lists the fields u has that row x leaves unset (column, value):
// merging fills them and never overwrites a set one.
func (x *UserRow) Unset(u *User) [][2]string {
	var out [][2]string
	for _, f := range []struct{ col, have, add string }{{"name", x.Name, u.Name}, {"email", x.Email, u.Email}, {"bio", x.Bio, u.Bio}} {
		if f.have == "" && f.add != "" {
			out = append(out, [2]string{f.col, f.add})
		}
	}
	return out
}

// decodeTime reads a timestamp column. PostgreSQL's are time.Time; in
// sqlite the driver parses what it can, charm's defaults are
// "2006-01-02 15:04:05" UTC, and the driver writes Go's time.String() form
// for the times charm passes it.
func decodeTime(v any) (*time.Time, error) {
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
