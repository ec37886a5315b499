// Package postgres is charm's account store (server/db.DB) on PostgreSQL, so
// every `cring node` serves every user from one database, and that database's
// own replication makes accounts highly available.
//
// It answers exactly as charm's sqlite store does, odd corners included (a
// new sequence starts at 0, GetSeq creates it, names are looked up with
// LIKE), and returns charm's sentinel errors unwrapped since charm's server
// compares them with ==. Where a single sqlite file was safe only because it
// serializes every writer, the database enforces it instead (see schema.go).
package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	charm "github.com/charmbracelet/charm/proto"
	"github.com/charmbracelet/charm/server/db"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultTimeout bounds every call: charm's db.DB passes no context.
const DefaultTimeout = 10 * time.Second

// Options tune Open.
type Options struct {
	Timeout  time.Duration // per call; DefaultTimeout when 0
	MaxConns int32         // pool size; pgx's default when 0
}

// DB is charm's account store on PostgreSQL. Safe for concurrent use, and
// for many DBs (nodes) on one database.
type DB struct {
	pool    *pgxpool.Pool
	timeout time.Duration
}

var _ db.DB = (*DB)(nil)

// Open connects to url (postgres://…), then creates or migrates the schema.
func Open(ctx context.Context, url string, o Options) (*DB, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("postgres accounts: parse url: %w", err)
	}
	if o.MaxConns > 0 {
		cfg.MaxConns = o.MaxConns
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres accounts: connect: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres accounts: connect to %s: %w", cfg.ConnConfig.Host, err)
	}
	if err := migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres accounts: %w", err)
	}
	return &DB{pool: pool, timeout: o.Timeout}, nil
}

// Pool is the connection pool (for tools such as import).
func (d *DB) Pool() *pgxpool.Pool { return d.pool }

func (d *DB) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d.timeout)
}

// Close closes the pool. charm's server.Close calls it.
func (d *DB) Close() error {
	d.pool.Close()
	return nil
}

const userCols = `id, charm_id, name, email, bio, created_at`

// nameMatch is charm's `name like ?`: sqlite's LIKE ignores ASCII case only
// (lower() under the C collation does the same) and has no escape character.
// Without wildcards it is plain equality, which the unique index answers.
func nameMatch(name string) string {
	if strings.ContainsAny(name, "%_") {
		return `lower(name COLLATE "C") LIKE lower($1::text COLLATE "C") ESCAPE ''`
	}
	return `lower(name COLLATE "C") = lower($1::text COLLATE "C")`
}

func scanUser(row pgx.Row, extra ...any) (*charm.User, error) {
	u := &charm.User{}
	var name, email, bio pgtype.Text
	var created pgtype.Timestamptz
	dest := append([]any{&u.ID, &u.CharmID, &name, &email, &bio, &created}, extra...)
	if err := row.Scan(dest...); err != nil {
		return nil, err
	}
	u.Name, u.Email, u.Bio = name.String, email.String, bio.String
	u.CreatedAt = timePtr(created)
	return u, nil
}

func timePtr(t pgtype.Timestamptz) *time.Time {
	if !t.Valid {
		return nil
	}
	v := t.Time.UTC()
	return &v
}

func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

// queryer is a pool or a transaction.
type queryer interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func userWithName(ctx context.Context, q queryer, name string) (*charm.User, error) {
	return scanUser(q.QueryRow(ctx, `SELECT `+userCols+` FROM charm_user WHERE `+nameMatch(name)+` ORDER BY id LIMIT 1`, name))
}

func userWithCharmID(ctx context.Context, q queryer, charmID string) (*charm.User, error) {
	return scanUser(q.QueryRow(ctx, `SELECT `+userCols+` FROM charm_user WHERE charm_id = $1`, charmID))
}

// UserCount returns the number of users.
func (d *DB) UserCount() (int, error) {
	ctx, cancel := d.ctx()
	defer cancel()
	var n int
	if err := d.pool.QueryRow(ctx, `SELECT count(*) FROM charm_user`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count users: %w", err)
	}
	return n, nil
}

// UserNameCount returns the number of users with a name.
func (d *DB) UserNameCount() (int, error) {
	ctx, cancel := d.ctx()
	defer cancel()
	var n int
	if err := d.pool.QueryRow(ctx, `SELECT count(*) FROM charm_user WHERE name <> ''`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count user names: %w", err)
	}
	return n, nil
}

// GetUserWithID returns the user with a charm ID, or charm.ErrMissingUser.
func (d *DB) GetUserWithID(charmID string) (*charm.User, error) {
	ctx, cancel := d.ctx()
	defer cancel()
	u, err := userWithCharmID(ctx, d.pool, charmID)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, charm.ErrMissingUser
	}
	if err != nil {
		// charm's sqlite answers (nil, nil) here, which panics its callers.
		return nil, fmt.Errorf("get user %s: %w", charmID, err)
	}
	return u, nil
}

// GetUserWithName returns the first user whose name is LIKE name.
func (d *DB) GetUserWithName(name string) (*charm.User, error) {
	ctx, cancel := d.ctx()
	defer cancel()
	u, err := userWithName(ctx, d.pool, name)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, charm.ErrMissingUser
	}
	if err != nil {
		return nil, fmt.Errorf("get user named %q: %w", name, err)
	}
	return u, nil
}

// SetUserName names a user. As in charm: a name LIKE one already taken by
// another user is charm.ErrNameTaken; LIKE the user's own current name
// changes nothing and returns the user as stored.
func (d *DB) SetUserName(charmID string, name string) (*charm.User, error) {
	ctx, cancel := d.ctx()
	defer cancel()
	var u *charm.User
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		// The LIKE check and the update must be one step, as they are on a
		// single sqlite file; the unique index backs it up for equal names.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockNames); err != nil {
			return err
		}
		var err error
		u, err = userWithName(ctx, tx, name)
		switch {
		case err == nil:
			if u.CharmID != charmID {
				return charm.ErrNameTaken
			}
			return nil
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		if _, err := userWithCharmID(ctx, tx, charmID); errors.Is(err, pgx.ErrNoRows) {
			return charm.ErrMissingUser
		} else if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE charm_user SET name = $1 WHERE charm_id = $2`, name, charmID); err != nil {
			if isUniqueViolation(err) {
				return charm.ErrNameTaken
			}
			return err
		}
		u, err = userWithName(ctx, tx, name)
		return err
	})
	switch {
	case err == nil:
		return u, nil
	case errors.Is(err, charm.ErrNameTaken), errors.Is(err, charm.ErrMissingUser):
		return nil, err
	}
	return nil, fmt.Errorf("set name of %s: %w", charmID, err)
}

// errLostRace: another node created the user for this key first.
var errLostRace = errors.New("key created concurrently")

// UserForKey returns the user owning key (with PublicKey set), creating a
// user with a new charm ID when create is set. Nodes creating the same key
// at once agree on one user: the key is unique, the loser rolls back.
func (d *DB) UserForKey(key string, create bool) (*charm.User, error) {
	ctx, cancel := d.ctx()
	defer cancel()
	for range 3 {
		pk := &charm.PublicKey{}
		u, err := scanUser(d.pool.QueryRow(ctx, `
			SELECT u.id, u.charm_id, u.name, u.email, u.bio, u.created_at, k.id, k.user_id, k.public_key
			FROM public_key k JOIN charm_user u ON u.id = k.user_id
			WHERE k.public_key = $1`, key), &pk.ID, &pk.UserID, &pk.Key)
		if err == nil {
			u.PublicKey = pk
			return u, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("user for key %s: %w", charm.PublicKeySha(key), err)
		}
		if !create {
			return nil, charm.ErrMissingUser
		}
		err = pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
			var id int
			if err := tx.QueryRow(ctx, `INSERT INTO charm_user (charm_id) VALUES ($1) RETURNING id`, uuid.New().String()).Scan(&id); err != nil {
				return err
			}
			tag, err := tx.Exec(ctx, `INSERT INTO public_key (user_id, public_key) VALUES ($1, $2) ON CONFLICT (public_key) DO NOTHING`, id, key)
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				return errLostRace
			}
			return nil
		})
		if err != nil && !errors.Is(err, errLostRace) {
			return nil, fmt.Errorf("create user for key %s: %w", charm.PublicKeySha(key), err)
		}
	}
	return nil, fmt.Errorf("user for key %s: still missing after creating it", charm.PublicKeySha(key))
}

// LinkUserKey adds key to user. A key already on the user is kept; a key on
// another user is an error (sqlite would list it under both).
func (d *DB) LinkUserKey(user *charm.User, key string) error {
	ctx, cancel := d.ctx()
	defer cancel()
	tag, err := d.pool.Exec(ctx, `INSERT INTO public_key (user_id, public_key) VALUES ($1, $2) ON CONFLICT (public_key) DO NOTHING`, user.ID, key)
	if err != nil {
		return fmt.Errorf("link key to %s: %w", user.CharmID, err)
	}
	if tag.RowsAffected() == 1 {
		return nil
	}
	var owner int
	if err := d.pool.QueryRow(ctx, `SELECT user_id FROM public_key WHERE public_key = $1`, key).Scan(&owner); err != nil {
		return fmt.Errorf("link key to %s: %w", user.CharmID, err)
	}
	if owner != user.ID {
		return fmt.Errorf("link key to %s: the key belongs to another account", user.CharmID)
	}
	return nil
}

// UnlinkUserKey removes key from user, and the user with its last key.
func (d *DB) UnlinkUserKey(user *charm.User, key string) error {
	ctx, cancel := d.ctx()
	defer cancel()
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		// Lock the user: a key linked meanwhile must not be deleted with it.
		if _, err := tx.Exec(ctx, `SELECT 1 FROM charm_user WHERE id = $1 FOR UPDATE`, user.ID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM public_key WHERE user_id = $1 AND public_key = $2`, user.ID, key); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM public_key WHERE user_id = $1`, user.ID).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			_, err := tx.Exec(ctx, `DELETE FROM charm_user WHERE id = $1`, user.ID)
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("unlink key from %s: %w", user.CharmID, err)
	}
	return nil
}

// KeysForUser returns the user's public keys, in sqlite's order (its
// (user_id, public_key) index: by key).
func (d *DB) KeysForUser(user *charm.User) ([]*charm.PublicKey, error) {
	ctx, cancel := d.ctx()
	defer cancel()
	rows, err := d.pool.Query(ctx, `SELECT id, public_key, created_at FROM public_key WHERE user_id = $1 ORDER BY public_key COLLATE "C"`, user.ID)
	if err != nil {
		return nil, fmt.Errorf("keys of %s: %w", user.CharmID, err)
	}
	var keys []*charm.PublicKey
	for rows.Next() {
		k := &charm.PublicKey{}
		var created pgtype.Timestamptz
		if err := rows.Scan(&k.ID, &k.Key, &created); err != nil {
			rows.Close()
			return nil, fmt.Errorf("keys of %s: %w", user.CharmID, err)
		}
		k.CreatedAt = timePtr(created)
		keys = append(keys, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("keys of %s: %w", user.CharmID, err)
	}
	return keys, nil
}

// MergeUsers moves every key of userID2 to userID1, then deletes userID2
// (its seqs go with it, as in charm).
func (d *DB) MergeUsers(userID1 int, userID2 int) error {
	ctx, cancel := d.ctx()
	defer cancel()
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE public_key SET user_id = $1 WHERE user_id = $2`, userID1, userID2); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM charm_user WHERE id = $1`, userID2)
		return err
	})
	if err != nil {
		return fmt.Errorf("merge user %d into %d: %w", userID2, userID1, err)
	}
	return nil
}

// EncryptKeysForPublicKey returns the encrypt keys stored for a public key,
// oldest first.
func (d *DB) EncryptKeysForPublicKey(pk *charm.PublicKey) ([]*charm.EncryptKey, error) {
	ctx, cancel := d.ctx()
	defer cancel()
	rows, err := d.pool.Query(ctx, `SELECT global_id, encrypted_key, created_at FROM encrypt_key
		WHERE public_key_id = $1 ORDER BY created_at ASC NULLS FIRST, id`, pk.ID)
	if err != nil {
		return nil, fmt.Errorf("encrypt keys of key %d: %w", pk.ID, err)
	}
	var ks []*charm.EncryptKey
	for rows.Next() {
		k := &charm.EncryptKey{}
		var created pgtype.Timestamptz
		if err := rows.Scan(&k.ID, &k.Key, &created); err != nil {
			rows.Close()
			return nil, fmt.Errorf("encrypt keys of key %d: %w", pk.ID, err)
		}
		k.CreatedAt = timePtr(created)
		ks = append(ks, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("encrypt keys of key %d: %w", pk.ID, err)
	}
	return ks, nil
}

// AddEncryptKeyForPublicKey stores an encrypt key for one of u's public keys;
// one already stored under that global ID is kept.
func (d *DB) AddEncryptKeyForPublicKey(u *charm.User, publicKey string, globalID string, encryptedKey string, createdAt *time.Time) error {
	u2, err := d.UserForKey(publicKey, false)
	if err != nil {
		return err
	}
	if u2.ID != u.ID {
		return fmt.Errorf("trying to add encrypted key for unauthorized user")
	}
	ctx, cancel := d.ctx()
	defer cancel()
	if _, err := d.pool.Exec(ctx, `INSERT INTO encrypt_key (encrypted_key, global_id, public_key_id, created_at)
		VALUES ($1, $2, $3, coalesce($4::timestamptz, now()))
		ON CONFLICT (public_key_id, global_id) DO NOTHING`, encryptedKey, globalID, u2.PublicKey.ID, createdAt); err != nil {
		return fmt.Errorf("add encrypt key %s for %s: %w", globalID, u.CharmID, err)
	}
	return nil
}

// NextSeq increments the named sequence and returns it: a new sequence
// starts at 0. One statement, so concurrent increments never repeat.
func (d *DB) NextSeq(u *charm.User, name string) (uint64, error) {
	ctx, cancel := d.ctx()
	defer cancel()
	var seq int64
	if err := d.pool.QueryRow(ctx, `INSERT INTO named_seq (user_id, name) VALUES ($1, $2)
		ON CONFLICT (user_id, name) DO UPDATE SET seq = named_seq.seq + 1
		RETURNING seq`, u.ID, name).Scan(&seq); err != nil {
		return 0, fmt.Errorf("next seq %s of %s: %w", name, u.CharmID, err)
	}
	return uint64(seq), nil
}

// GetSeq returns the named sequence, creating it at 0. It never increments,
// even when two nodes create the same sequence at once.
func (d *DB) GetSeq(u *charm.User, name string) (uint64, error) {
	ctx, cancel := d.ctx()
	defer cancel()
	for range 3 {
		var seq int64
		err := d.pool.QueryRow(ctx, `SELECT seq FROM named_seq WHERE user_id = $1 AND name = $2`, u.ID, name).Scan(&seq)
		if err == nil {
			return uint64(seq), nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return 0, fmt.Errorf("get seq %s of %s: %w", name, u.CharmID, err)
		}
		err = d.pool.QueryRow(ctx, `INSERT INTO named_seq (user_id, name) VALUES ($1, $2)
			ON CONFLICT (user_id, name) DO NOTHING RETURNING seq`, u.ID, name).Scan(&seq)
		if err == nil {
			return uint64(seq), nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return 0, fmt.Errorf("create seq %s of %s: %w", name, u.CharmID, err)
		}
		// Created meanwhile by another node: read it.
	}
	return 0, fmt.Errorf("get seq %s of %s: no row after creating it", name, u.CharmID)
}

// PostNews publishes news with tags.
func (d *DB) PostNews(subject string, body string, tags []string) error {
	ctx, cancel := d.ctx()
	defer cancel()
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		var id int64
		if err := tx.QueryRow(ctx, `INSERT INTO news (subject, body) VALUES ($1, $2) RETURNING id`, subject, body).Scan(&id); err != nil {
			return err
		}
		for _, tag := range tags {
			if _, err := tx.Exec(ctx, `INSERT INTO news_tag (news_id, tag) VALUES ($1, $2)`, id, tag); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("post news: %w", err)
	}
	return nil
}

// GetNews returns one news item; an unknown id is sql.ErrNoRows, as in charm.
func (d *DB) GetNews(id string) (*charm.News, error) {
	i, err := strconv.Atoi(id)
	if err != nil {
		return nil, err
	}
	ctx, cancel := d.ctx()
	defer cancel()
	n := &charm.News{}
	var created pgtype.Timestamptz
	err = d.pool.QueryRow(ctx, `SELECT id::text, subject, body, created_at FROM news WHERE id = $1`, i).
		Scan(&n.ID, &n.Subject, &n.Body, &created)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, sql.ErrNoRows
	}
	if err != nil {
		return nil, fmt.Errorf("get news %s: %w", id, err)
	}
	if created.Valid {
		n.CreatedAt = created.Time.UTC()
	}
	return n, nil
}

// GetNewsList returns up to 50 news items with a tag, newest first, skipping
// offset (charm's server passes an offset as "page"; sqlite reads a
// negative one as 0). sqlite keeps whole seconds and lists ties oldest
// first: so does this.
func (d *DB) GetNewsList(tag string, offset int) ([]*charm.News, error) {
	ctx, cancel := d.ctx()
	defer cancel()
	rows, err := d.pool.Query(ctx, `SELECT n.id::text, n.subject, n.created_at FROM news AS n
		INNER JOIN news_tag AS t ON t.news_id = n.id
		WHERE t.tag = $1
		ORDER BY date_trunc('second', n.created_at) DESC, n.id
		LIMIT 50 OFFSET $2`, tag, max(offset, 0))
	if err != nil {
		return nil, fmt.Errorf("list news: %w", err)
	}
	var ns []*charm.News
	for rows.Next() {
		n := &charm.News{}
		var created pgtype.Timestamptz
		if err := rows.Scan(&n.ID, &n.Subject, &created); err != nil {
			rows.Close()
			return nil, fmt.Errorf("list news: %w", err)
		}
		if created.Valid {
			n.CreatedAt = created.Time.UTC()
		}
		ns = append(ns, n)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list news: %w", err)
	}
	return ns, nil
}

// SetToken stores a link token; an existing one is charm.ErrTokenExists.
func (d *DB) SetToken(token charm.Token) error {
	ctx, cancel := d.ctx()
	defer cancel()
	if _, err := d.pool.Exec(ctx, `INSERT INTO token (pin) VALUES ($1)`, string(token)); err != nil {
		if isUniqueViolation(err) {
			return charm.ErrTokenExists
		}
		return fmt.Errorf("set token: %w", err)
	}
	return nil
}

// DeleteToken deletes a link token.
func (d *DB) DeleteToken(token charm.Token) error {
	ctx, cancel := d.ctx()
	defer cancel()
	if _, err := d.pool.Exec(ctx, `DELETE FROM token WHERE pin = $1`, string(token)); err != nil {
		return fmt.Errorf("delete token: %w", err)
	}
	return nil
}
