package accounts

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"

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
	s, err := ReadSnapshot(ctx, SQLRows(tx))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return s, nil
}
