// Package filestore is cring node's file store. It keeps charm's layout
// (<data>/files/<charmID>/<path>, exactly the bytes the client sent, so a
// data directory moves between `charm serve` and `cring node` both ways) and
// adds what a replica needs to decide "which copy wins" without trusting any
// clock of its own (docs/node.md):
//
//   - every version's stamp, SHA-256 and size, recorded in extended
//     attributes of the file when it is written;
//   - writes that replace a file atomically: a temp file outside the user's
//     tree, fsynced, renamed over the name under a per-key lock, then the
//     directory fsynced, so a crash leaves the old or the new version;
//   - durable tombstones, so a write or delete older than what the node
//     holds (a file or a delete of it or of any directory above it) is
//     refused with a *ConflictError.
//
// Store also implements charm's storage.FileStore, for charm's own handler:
// those writes and deletes are unstamped, like stock charm.
package filestore

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	charm "github.com/charmbracelet/charm/proto"

	"github.com/cring-dev/cring/internal/stamp"
)

// Names of the extended attributes a version is recorded in.
const (
	AttrStamp  = "user.cring.stamp"  // the stamp's text form; absent when unstamped
	AttrSHA256 = "user.cring.sha256" // hex SHA-256 of the content
	AttrSize   = "user.cring.size"   // decimal byte count
)

// DefaultGrace is how long tombstones are kept when Options.Grace is 0:
// the proxy's default, 30 days.
const DefaultGrace = 720 * time.Hour

// Options configure Open.
type Options struct {
	// Grace is how long a tombstone refuses older writes (DefaultGrace when
	// 0). A tombstone's age is its stamp's wall time.
	Grace  time.Duration
	Now    func() time.Time // time.Now when nil; tests inject theirs
	Logger *slog.Logger
}

// Version is what the store recorded about a stored file.
type Version struct {
	Stamp  stamp.Stamp // zero when unstamped
	SHA256 string      // hex; "" when not recorded (a file written by stock charm)
	Size   int64       // recorded size; -1 when not recorded
}

// ConflictError refuses a write or delete older than what the node holds.
type ConflictError struct {
	Held    stamp.Stamp // the newer version's stamp
	Deleted bool        // Held is a tombstone's: the path (or a directory above it) was deleted
}

func (e *ConflictError) Error() string { return "a newer version is stored" }

// Store is a versioned file store under one data directory.
type Store struct {
	files string // <data>/files: charm's layout
	tmp   string // <data>/cring/tmp: uploads in flight, same filesystem
	tombs string // <data>/cring/tombstones/<charmID>/<sha256(path)>
	grace time.Duration
	now   func() time.Time
	log   *slog.Logger

	// users orders a user's commits (shared) against the user's deletes
	// (exclusive): a delete of a directory must not miss a file renamed
	// into it while it prunes. keys serializes commits of one path.
	users lockTable
	keys  lockTable
}

// Open prepares the store under dataDir: it creates its directories,
// refuses a filesystem without user extended attributes, removes uploads a
// crash left behind and finishes deletes a crash interrupted.
func Open(dataDir string, o Options) (*Store, error) {
	s := &Store{
		files: filepath.Join(dataDir, "files"),
		tmp:   filepath.Join(dataDir, "cring", "tmp"),
		tombs: filepath.Join(dataDir, "cring", "tombstones"),
		grace: o.Grace,
		now:   o.Now,
		log:   o.Logger,
	}
	if s.grace <= 0 {
		s.grace = DefaultGrace
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	for _, d := range []string{s.files, s.tmp, s.tombs} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("file store: %w", err)
		}
	}
	for _, d := range []string{s.tmp, s.tombs} {
		same, err := sameFilesystem(s.files, d)
		if err != nil {
			return nil, fmt.Errorf("file store: %w", err)
		}
		if !same {
			return nil, fmt.Errorf("file store: %s and %s are on different filesystems: replacing a file would not be atomic", s.files, d)
		}
	}
	if err := s.cleanTmp(); err != nil {
		return nil, err
	}
	if err := s.probeXattr(); err != nil {
		return nil, err
	}
	if err := s.finishDeletes(); err != nil {
		return nil, err
	}
	return s, nil
}

// FilesDir is charm's files directory the store keeps.
func (s *Store) FilesDir() string { return s.files }

// TmpDir holds uploads in flight (empty when none is).
func (s *Store) TmpDir() string { return s.tmp }

// cleanTmp removes what a crash left in the temp directory: uploads that
// never reached their name.
func (s *Store) cleanTmp() error {
	des, err := os.ReadDir(s.tmp)
	if err != nil {
		return fmt.Errorf("file store: %w", err)
	}
	for _, de := range des {
		if err := os.RemoveAll(filepath.Join(s.tmp, de.Name())); err != nil {
			return fmt.Errorf("file store: remove leftover upload: %w", err)
		}
	}
	if len(des) > 0 {
		s.log.Info("removed uploads a crash left unfinished", "count", len(des), "dir", s.tmp)
	}
	return nil
}

// probeXattr fails loudly when the data directory's filesystem can't hold
// the attributes versions are recorded in: serving without them would
// silently lose every stamp and checksum.
func (s *Store) probeXattr() error {
	f, err := s.createTemp("probe-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	err = setXattr(f, AttrStamp, "probe")
	if err == nil {
		_, _, err = fgetXattr(f, AttrStamp)
	}
	if unsupportedXattr(err) {
		return fmt.Errorf("file store: the filesystem of %s does not support user extended attributes, where cring node records each file's stamp and checksum: use ext4, xfs or btrfs (mounted without nouser_xattr), or tmpfs on Linux 6.6+: %w", s.tmp, err)
	}
	if err != nil {
		return fmt.Errorf("file store: extended attributes: %w", err)
	}
	return nil
}

// createTemp creates a new empty file in the temp directory. Its mode is
// 0666 less the umask, what charm's os.Create gives an upload.
func (s *Store) createTemp(prefix string) (*os.File, error) {
	for range 10 {
		var b [8]byte
		_, _ = rand.Read(b[:])
		f, err := os.OpenFile(filepath.Join(s.tmp, prefix+hex.EncodeToString(b[:])), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o666)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("file store: temp file: %w", err)
		}
		return f, nil
	}
	return nil, errors.New("file store: temp file: no free name")
}

// Key is a path as the store names it: cleaned as rooted (so it can't
// climb out of the user's directory), without the leading slash; "" is the
// user's root. It is the path part of the proxy's placement key.
func Key(p string) string { return strings.TrimPrefix(path.Clean("/"+p), "/") }

// locate checks charmID and returns p's key and its file's path.
func (s *Store) locate(charmID, p string) (key, file string, err error) {
	if charmID == "" || charmID == "." || charmID == ".." || strings.ContainsAny(charmID, "/\\\x00") {
		return "", "", fmt.Errorf("file store: bad charm id %q", charmID)
	}
	key = Key(p)
	return key, filepath.Join(s.files, charmID, filepath.FromSlash(key)), nil
}

// lockKey is the name a path's commits are serialized under.
func lockKey(charmID, key string) string { return charmID + "\x00" + key }

// Write stores the bytes of r as version st of charmID's file p. The zero
// stamp writes unstamped, like stock charm: no version check. It returns
// the version p holds afterwards and whether r was written: false when that
// very version was already held intact (a repeated write or a repair copy).
// A *ConflictError means a newer version or delete is held; r was read
// whole either way, and nothing was changed unless written.
func (s *Store) Write(charmID, p string, st stamp.Stamp, mode fs.FileMode, r io.Reader) (Version, bool, error) {
	key, dst, err := s.locate(charmID, p)
	if err != nil {
		return Version{}, false, err
	}
	if key == "" {
		return Version{}, false, errors.New("invalid path specified: /") // charm's answer
	}
	if mode.IsDir() {
		// charm's Put makes a directory of it; the body carries nothing.
		if _, err := io.Copy(io.Discard, r); err != nil {
			return Version{}, false, fmt.Errorf("store %s: read body: %w", key, err)
		}
		unlock := s.users.rlock(charmID)
		defer unlock()
		if err := mkdirAll(dst, dirPerm(mode)); err != nil {
			return Version{}, false, fmt.Errorf("store %s: %w", key, err)
		}
		return Version{Size: -1}, true, nil
	}
	tmp, v, err := s.spool(r, st, mode)
	if err != nil {
		return Version{}, false, fmt.Errorf("store %s: %w", key, err)
	}
	defer os.Remove(tmp) // still there unless renamed onto dst
	held, written, err := s.commit(charmID, key, dst, tmp, v, mode)
	if err != nil {
		var ce *ConflictError
		if errors.As(err, &ce) {
			return held, false, err
		}
		return held, false, fmt.Errorf("store %s: %w", key, err)
	}
	return held, written, nil
}

// bufPool holds copy buffers: a write costs one buffer, whatever its size.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// spool writes r to a new temp file with its version recorded, fsynced.
func (s *Store) spool(r io.Reader, st stamp.Stamp, mode fs.FileMode) (string, Version, error) {
	f, err := s.createTemp("up-")
	if err != nil {
		return "", Version{}, err
	}
	v, err := fill(f, r, st, mode)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close upload: %w", cerr)
	}
	if err != nil {
		os.Remove(f.Name())
		return "", Version{}, err
	}
	return f.Name(), v, nil
}

func fill(f *os.File, r io.Reader, st stamp.Stamp, mode fs.FileMode) (Version, error) {
	h := sha256.New()
	buf := bufPool.Get().(*[]byte)
	defer bufPool.Put(buf)
	n, err := io.CopyBuffer(io.MultiWriter(f, h), r, *buf)
	if err != nil {
		return Version{}, fmt.Errorf("upload: %w", err)
	}
	v := Version{Stamp: st, SHA256: hex.EncodeToString(h.Sum(nil)), Size: n}
	// Attributes first: once chmod makes the file read-only, only root
	// could still set them.
	if !st.IsZero() {
		if err := setXattr(f, AttrStamp, st.String()); err != nil {
			return Version{}, err
		}
	}
	if err := setXattr(f, AttrSHA256, v.SHA256); err != nil {
		return Version{}, err
	}
	if err := setXattr(f, AttrSize, strconv.FormatInt(n, 10)); err != nil {
		return Version{}, err
	}
	if mode != 0 { // like charm's Put
		if err := f.Chmod(mode); err != nil {
			return Version{}, fmt.Errorf("upload: %w", err)
		}
	}
	if err := f.Sync(); err != nil {
		return Version{}, fmt.Errorf("upload: fsync: %w", err)
	}
	return v, nil
}

// commit renames the spooled version tmp onto dst if it is still the
// newest the node knows of, then makes the new name durable.
func (s *Store) commit(charmID, key, dst, tmp string, v Version, mode fs.FileMode) (Version, bool, error) {
	held, same, err := func() (Version, bool, error) {
		unlockUser := s.users.rlock(charmID)
		defer unlockUser()
		unlockKey := s.keys.lock(lockKey(charmID, key))
		defer unlockKey()
		if !v.Stamp.IsZero() {
			held, same, err := s.admit(charmID, key, dst, v.Stamp)
			if err != nil || same {
				return held, same, err
			}
		}
		if err := mkdirAll(filepath.Dir(dst), dirPerm(mode)); err != nil {
			return Version{}, false, err
		}
		if err := os.Rename(tmp, dst); err != nil {
			return Version{}, false, err
		}
		return v, false, nil
	}()
	if err != nil || same {
		return held, false, err
	}
	// Outside the locks: a newer version renamed over it meanwhile is as
	// good, and this write is only acknowledged once its name is durable.
	if err := syncDir(filepath.Dir(dst)); err != nil {
		return v, false, err
	}
	return v, true, nil
}

// admit decides, under the path's locks, whether version st may replace
// what dst holds. same reports that dst already holds st intact.
func (s *Store) admit(charmID, key, dst string, st stamp.Stamp) (held Version, same bool, err error) {
	cur, exists, err := versionAt(dst)
	if err != nil {
		return Version{}, false, err
	}
	if exists {
		switch c := cur.Stamp.Compare(st); {
		case c > 0:
			return cur, false, &ConflictError{Held: cur.Stamp}
		case c == 0:
			// A stamp names one version. If the copy held rotted, the
			// incoming one repairs it.
			ok, err := intact(dst, cur)
			if err != nil {
				return Version{}, false, err
			}
			if ok {
				return cur, true, nil
			}
			s.log.Warn("replacing a corrupt copy with the same version", "file", dst, "stamp", st.String())
		}
	}
	t, deleted, err := s.covering(charmID, key)
	if err != nil {
		return Version{}, false, err
	}
	if deleted && t.Compare(st) >= 0 {
		return Version{Stamp: t, Size: -1}, false, &ConflictError{Held: t, Deleted: true}
	}
	return Version{}, false, nil
}

// versionAt reads the version recorded for the file at p; exists is false
// when there is no file (nothing, or a directory).
func versionAt(p string) (v Version, exists bool, err error) {
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return Version{}, false, nil
	}
	if err != nil {
		return Version{}, false, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return Version{}, false, err
	}
	if info.IsDir() {
		return Version{}, false, nil
	}
	v, err = ReadVersion(f)
	return v, err == nil, err
}

// intact reports whether the file at p still has the recorded content.
func intact(p string, v Version) (bool, error) {
	if v.SHA256 == "" {
		return false, nil
	}
	f, err := os.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	sum, n, err := Hash(f)
	if err != nil {
		return false, err
	}
	return sum == v.SHA256 && (v.Size < 0 || n == v.Size), nil
}

// ReadVersion reads the version recorded on an open file.
func ReadVersion(f *os.File) (Version, error) {
	v := Version{Size: -1}
	text, ok, err := fgetXattr(f, AttrStamp)
	if err != nil {
		return v, err
	}
	if ok {
		if v.Stamp, err = stamp.Parse(text); err != nil {
			return v, fmt.Errorf("%s: recorded %w", f.Name(), err)
		}
	}
	if v.SHA256, _, err = fgetXattr(f, AttrSHA256); err != nil {
		return v, err
	}
	text, ok, err = fgetXattr(f, AttrSize)
	if err != nil {
		return v, err
	}
	if ok {
		if v.Size, err = strconv.ParseInt(text, 10, 64); err != nil {
			return v, fmt.Errorf("%s: recorded size %q: %w", f.Name(), text, err)
		}
	}
	return v, nil
}

// stampAt is the stamp recorded on the file at p (zero when none or
// unreadable: such a file loses to every stamped version).
func stampAt(p string) stamp.Stamp {
	text, ok, err := getXattr(p, AttrStamp)
	if err != nil || !ok {
		return stamp.Stamp{}
	}
	st, err := stamp.Parse(text)
	if err != nil {
		return stamp.Stamp{}
	}
	return st
}

// Hash reads r to the end and returns its hex SHA-256 and length.
func Hash(r io.Reader) (string, int64, error) {
	h := sha256.New()
	buf := bufPool.Get().(*[]byte)
	defer bufPool.Put(buf)
	n, err := io.CopyBuffer(h, r, *buf)
	if err != nil {
		return "", n, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// Remove deletes charmID's path p (a file, or a directory and what is
// under it) as of stamp st. The zero stamp removes everything, like stock
// charm, and leaves no tombstone. A stamped delete refuses a file newer
// than st with a *ConflictError, removes only files no newer than st under
// a directory (a newer one was written after the delete and stays), and
// records a tombstone so a write older than st arriving later is refused.
func (s *Store) Remove(charmID, p string, st stamp.Stamp) error {
	key, fp, err := s.locate(charmID, p)
	if err != nil {
		return err
	}
	unlock := s.users.lock(charmID)
	defer unlock()
	if st.IsZero() {
		if err := os.RemoveAll(fp); err != nil {
			return fmt.Errorf("delete %s: %w", key, err)
		}
		if err := syncDir(filepath.Dir(fp)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("delete %s: %w", key, err)
		}
		return nil
	}
	if info, err := os.Lstat(fp); err == nil && !info.IsDir() {
		if held := stampAt(fp); held.After(st) {
			return &ConflictError{Held: held}
		}
	}
	// Only the newest tombstone of a path is kept; files no newer than it
	// are dead either way.
	t := st
	if old, ok, err := s.tombstone(charmID, key); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	} else if ok && old.After(t) {
		t = old
	}
	// The tombstone goes first, marked pending: a crash in the middle of
	// the pruning is finished on the next start (finishDeletes).
	rec := record{Path: key, Stamp: t.String(), Pending: true}
	if err := s.putTombstone(charmID, rec, true); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	if err := prune(fp, t); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	rec.Pending = false
	// Not fsynced: if this is lost, the next start prunes again, which
	// changes nothing.
	if err := s.putTombstone(charmID, rec, false); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

// prune removes the file at p, or every file under the directory p, whose
// stamp is not newer than t, then the directories that leaves empty.
func prune(p string, t stamp.Stamp) error {
	info, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	removed := false
	if info.IsDir() {
		empty, err := pruneDir(p, t)
		if err != nil {
			return err
		}
		removed = empty
	} else {
		removed = !stampAt(p).After(t)
	}
	if !removed {
		return nil
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return syncDir(filepath.Dir(p))
}

// pruneDir prunes what dir holds and reports whether it is left empty.
func pruneDir(dir string, t stamp.Stamp) (empty bool, err error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return false, err
	}
	kept, changed := 0, false
	for _, de := range des {
		p := filepath.Join(dir, de.Name())
		gone := false
		if de.IsDir() {
			if gone, err = pruneDir(p, t); err != nil {
				return false, err
			}
		} else {
			gone = !stampAt(p).After(t)
		}
		if !gone {
			kept++
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return false, err
		}
		changed = true
	}
	if changed {
		if err := syncDir(dir); err != nil {
			return false, err
		}
	}
	return kept == 0, nil
}

// dirPerm is the mode charm's storage.EnsureDir gives directories it
// creates for a file of mode m.
func dirPerm(m fs.FileMode) fs.FileMode { return charm.AddExecPermsForMkDir(m.Perm()).Perm() }

// mkdirAll creates dir and its missing parents with perm, like
// os.MkdirAll, and fsyncs the parent of each directory it created, so a
// file renamed into dir is still reachable after a crash.
func mkdirAll(dir string, perm fs.FileMode) error {
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		_, err := os.Stat(d)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		missing = append(missing, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(missing[i], perm); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := syncDir(filepath.Dir(missing[i])); err != nil {
			return err
		}
	}
	return nil
}

// syncDir makes a directory's entries (a rename, a removal) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
