package filestore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cring-dev/cring/internal/stamp"
)

// record is a tombstone file: the delete of Path (a file, or a directory
// and everything under it) at Stamp.
type record struct {
	Path  string `json:"path"`
	Stamp string `json:"stamp"`
	// Pending: files under Path may not be pruned yet (the node stopped in
	// the middle of the delete); the next start finishes it.
	Pending bool `json:"pending,omitempty"`
}

// tombstoneFile is where the tombstone of charmID's key lives.
func (s *Store) tombstoneFile(charmID, key string) string {
	sum := sha256.Sum256([]byte(key))
	return filepath.Join(s.tombs, charmID, hex.EncodeToString(sum[:]))
}

// readRecord reads one tombstone file.
func readRecord(p string) (record, stamp.Stamp, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return record{}, stamp.Stamp{}, err
	}
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil {
		return record{}, stamp.Stamp{}, fmt.Errorf("tombstone %s: %w", p, err)
	}
	st, err := stamp.Parse(rec.Stamp)
	if err == nil && st.IsZero() {
		err = errors.New("no stamp")
	}
	if err != nil {
		return record{}, stamp.Stamp{}, fmt.Errorf("tombstone %s: %w", p, err)
	}
	return rec, st, nil
}

// tombstone is the stamp of the delete of exactly key, expired or not.
func (s *Store) tombstone(charmID, key string) (stamp.Stamp, bool, error) {
	rec, st, err := readRecord(s.tombstoneFile(charmID, key))
	if errors.Is(err, fs.ErrNotExist) {
		return stamp.Stamp{}, false, nil
	}
	if err != nil {
		return stamp.Stamp{}, false, err
	}
	if rec.Path != key {
		return stamp.Stamp{}, false, nil
	}
	return st, true, nil
}

// expired reports whether a tombstone of stamp st is past the grace period.
func (s *Store) expired(st stamp.Stamp) bool { return s.now().Sub(st.Time()) > s.grace }

// covering is the newest live tombstone of key or of any directory above
// it: a version of key no newer than it is deleted.
func (s *Store) covering(charmID, key string) (stamp.Stamp, bool, error) {
	if _, err := os.Stat(filepath.Join(s.tombs, charmID)); errors.Is(err, fs.ErrNotExist) {
		return stamp.Stamp{}, false, nil // never deleted anything: the common case, one stat
	}
	var best stamp.Stamp
	found := false
	for k := key; ; k = parentKey(k) {
		st, ok, err := s.tombstone(charmID, k)
		if err != nil {
			return stamp.Stamp{}, false, err
		}
		if ok && !s.expired(st) && (!found || st.After(best)) {
			best, found = st, true
		}
		if k == "" {
			return best, found, nil
		}
	}
}

// parentKey is the key of the directory holding key ("" is the root).
func parentKey(key string) string {
	i := strings.LastIndexByte(key, '/')
	if i < 0 {
		return ""
	}
	return key[:i]
}

// Deleted reports the newest live tombstone covering charmID's path p: the
// stamp of the delete of p or of a directory above it, if any.
func (s *Store) Deleted(charmID, p string) (stamp.Stamp, bool, error) {
	key, _, err := s.locate(charmID, p)
	if err != nil {
		return stamp.Stamp{}, false, err
	}
	unlock := s.users.rlock(charmID)
	defer unlock()
	return s.covering(charmID, key)
}

// putTombstone replaces a tombstone atomically; durable also fsyncs it and
// its directory before returning.
func (s *Store) putTombstone(charmID string, rec record, durable bool) error {
	dir := filepath.Join(s.tombs, charmID)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("tombstone: %w", err)
		}
		if durable {
			if err := syncDir(s.tombs); err != nil {
				return fmt.Errorf("tombstone: %w", err)
			}
		}
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("tombstone: %w", err)
	}
	f, err := s.createTemp("ts-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // still there unless renamed
	_, err = f.Write(b)
	if err == nil && durable {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), s.tombstoneFile(charmID, rec.Path))
	}
	if err == nil && durable {
		err = syncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("tombstone: %w", err)
	}
	return nil
}

// eachTombstone calls fn for every tombstone of every user, holding that
// user's exclusive lock, so no commit or delete of the user runs meanwhile.
func (s *Store) eachTombstone(fn func(charmID, file string, rec record, st stamp.Stamp) error) error {
	users, err := os.ReadDir(s.tombs)
	if err != nil {
		return fmt.Errorf("tombstones: %w", err)
	}
	for _, u := range users {
		if !u.IsDir() {
			continue
		}
		if err := s.eachOfUser(u.Name(), fn); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) eachOfUser(charmID string, fn func(charmID, file string, rec record, st stamp.Stamp) error) error {
	if _, _, err := s.locate(charmID, ""); err != nil {
		return nil // not a directory the store made
	}
	unlock := s.users.lock(charmID)
	defer unlock()
	dir := filepath.Join(s.tombs, charmID)
	des, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("tombstones: %w", err)
	}
	for _, de := range des {
		file := filepath.Join(dir, de.Name())
		rec, st, err := readRecord(file)
		if err != nil {
			s.log.Warn("unreadable tombstone left alone", "file", file, "err", err)
			continue
		}
		if err := fn(charmID, file, rec, st); err != nil {
			return err
		}
	}
	// Gone when it holds nothing more (fails, harmlessly, otherwise).
	_ = os.Remove(dir)
	return nil
}

// finishDeletes completes the deletes a crash interrupted (tombstones
// still pending): their older files are pruned now.
func (s *Store) finishDeletes() error {
	n := 0
	err := s.eachTombstone(func(charmID, _ string, rec record, st stamp.Stamp) error {
		if !rec.Pending {
			return nil
		}
		_, fp, err := s.locate(charmID, rec.Path)
		if err != nil {
			return err
		}
		if err := prune(fp, st); err != nil {
			return fmt.Errorf("finish delete of %s: %w", rec.Path, err)
		}
		rec.Pending = false
		n++
		return s.putTombstone(charmID, rec, false)
	})
	if err != nil {
		return fmt.Errorf("file store: %w", err)
	}
	if n > 0 {
		s.log.Info("finished deletes interrupted by a crash", "count", n)
	}
	return nil
}

// CollectTombstones removes the tombstones past the grace period and
// returns how many it removed. Expired ones are ignored by every check
// already; this only frees their space.
func (s *Store) CollectTombstones() (int, error) {
	n := 0
	err := s.eachTombstone(func(_, file string, rec record, st stamp.Stamp) error {
		if rec.Pending || !s.expired(st) {
			return nil
		}
		if err := os.Remove(file); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("collect tombstone: %w", err)
		}
		n++
		return nil
	})
	return n, err
}

// CollectLoop collects expired tombstones every interval until ctx ends.
func (s *Store) CollectLoop(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := s.CollectTombstones()
		if err != nil {
			s.log.Warn("collect tombstones", "err", err)
		}
		if n > 0 {
			s.log.Info("collected expired tombstones", "count", n)
		}
	}
}
