package accounts

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	gossh "golang.org/x/crypto/ssh"
)

// AuthorizedKeysFor is where a stock charm serve looks for the file that
// closes its SSH door, given its account database
// (<data>/db/charm_sqlite.db → <data>/.ssh/authorized_keys). When that file
// exists at start, charm accepts only the keys in it, reading it again on
// every login.
func AuthorizedKeysFor(dbPath string) string {
	return filepath.Join(filepath.Dir(filepath.Dir(dbPath)), ".ssh", "authorized_keys")
}

// AppendAuthorizedKeys adds the keys (charm's form) that path lacks, and
// returns how many it added. The file is replaced atomically (temp file,
// fsync, rename), created 0600 with its directory when missing; lines
// already there are kept as they are.
func AppendAuthorizedKeys(path string, keys []string) (int, error) {
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, err
	}
	have := map[string]bool{}
	for _, line := range bytes.Split(old, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		if pk, _, _, _, err := gossh.ParseAuthorizedKey(line); err == nil {
			have[FormatKey(pk)] = true
		}
	}
	var add []string
	for _, k := range keys {
		if !have[k] {
			have[k] = true
			add = append(add, k)
		}
	}
	if len(add) == 0 {
		return 0, nil
	}
	out := old
	if len(out) > 0 && out[len(out)-1] != '\n' {
		out = append(out, '\n')
	}
	out = append(out, strings.Join(add, "\n")+"\n"...)
	if err := writeAtomic(path, out); err != nil {
		return 0, err
	}
	return len(add), nil
}

func writeAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".authorized_keys-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after the rename: nothing there
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	return nil
}
