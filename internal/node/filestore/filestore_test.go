package filestore

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	localstorage "github.com/charmbracelet/charm/server/storage/local"

	"github.com/cring-dev/cring/internal/stamp"
)

// base keeps stamps recent: tombstones expire after the grace period.
var base = time.Now().Add(-time.Hour).Truncate(time.Second)

// at is the stamp n seconds after base.
func at(n int) stamp.Stamp {
	return stamp.Stamp{Wall: base.Add(time.Duration(n) * time.Second).UnixNano(), Proxy: "p1"}
}

func open(t *testing.T, dir string, o Options) *Store {
	t.Helper()
	s, err := Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func content(t *testing.T, s *Store, user, p string) (string, Version, bool) {
	t.Helper()
	e, err := s.Open(user, p)
	if errors.Is(err, fs.ErrNotExist) {
		return "", Version{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	if e.File == nil {
		t.Fatalf("%s is a directory", p)
	}
	defer e.File.Close()
	b, err := io.ReadAll(e.File)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), e.Version, true
}

func tmpEmpty(t *testing.T, s *Store) {
	t.Helper()
	des, err := os.ReadDir(s.TmpDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(des) != 0 {
		t.Fatalf("temp dir holds %d entries, want none (%s)", len(des), des[0].Name())
	}
}

// op is one write (data != "" or dir) or delete, with the outcome expected.
type op struct {
	del      bool
	path     string
	st       stamp.Stamp
	data     string
	conflict stamp.Stamp // the newer stamp a refusal names; zero: accepted
	deleted  bool        // the refusal is a tombstone's
	written  bool        // for accepted writes: false when the version was already held
}

func TestVersionRules(t *testing.T) {
	w := func(p string, n int, data string) op {
		return op{path: p, st: at(n), data: data, written: true}
	}
	for _, tt := range []struct {
		name string
		ops  []op
		want map[string]string // path → content; "" absent
	}{
		{
			name: "older write refused, newer bytes stay",
			ops:  []op{w("f", 2, "new"), {path: "f", st: at(1), data: "old", conflict: at(2)}},
			want: map[string]string{"f": "new"},
		},
		{
			name: "newer write replaces",
			ops:  []op{w("f", 1, "old"), w("f", 2, "new")},
			want: map[string]string{"f": "new"},
		},
		{
			name: "equal stamp is not rewritten",
			ops:  []op{w("f", 1, "v1"), {path: "f", st: at(1), data: "v1"}},
			want: map[string]string{"f": "v1"},
		},
		{
			name: "late write after delete refused, file absent",
			ops:  []op{{del: true, path: "f", st: at(2)}, {path: "f", st: at(1), data: "late", conflict: at(2), deleted: true}},
			want: map[string]string{"f": ""},
		},
		{
			name: "write at the delete's stamp refused",
			ops:  []op{{del: true, path: "f", st: at(2)}, {path: "f", st: at(2), data: "same", conflict: at(2), deleted: true}},
			want: map[string]string{"f": ""},
		},
		{
			name: "newer write after delete succeeds",
			ops:  []op{w("f", 1, "a"), {del: true, path: "f", st: at(2)}, w("f", 3, "b")},
			want: map[string]string{"f": "b"},
		},
		{
			name: "delete older than the file refused",
			ops:  []op{w("f", 2, "keep"), {del: true, path: "f", st: at(1), conflict: at(2)}},
			want: map[string]string{"f": "keep"},
		},
		{
			name: "directory delete removes older files, keeps a newer one",
			ops: []op{
				w("d/a", 1, "a"), w("d/sub/b", 1, "b"), w("d/c", 3, "c"),
				{del: true, path: "d", st: at(2)},
				{path: "d/sub/x", st: at(1), data: "late", conflict: at(2), deleted: true},
				w("d/sub/y", 4, "y"),
			},
			want: map[string]string{"d/a": "", "d/sub/b": "", "d/c": "c", "d/sub/x": "", "d/sub/y": "y"},
		},
		{
			name: "root delete covers everything",
			ops:  []op{w("x/y", 1, "y"), {del: true, path: "/", st: at(2)}, {path: "z", st: at(1), data: "z", conflict: at(2), deleted: true}},
			want: map[string]string{"x/y": "", "z": ""},
		},
		{
			name: "newest tombstone kept",
			ops:  []op{{del: true, path: "d", st: at(5)}, {del: true, path: "d", st: at(3)}, {path: "d/f", st: at(4), data: "x", conflict: at(5), deleted: true}},
			want: map[string]string{"d/f": ""},
		},
		{
			name: "unstamped write and delete behave like charm",
			ops: []op{
				w("f", 2, "stamped"),
				{path: "f", data: "direct", written: true},
				{del: true, path: "g", st: at(9)},
				{path: "g", data: "direct too", written: true},
			},
			want: map[string]string{"f": "direct", "g": "direct too"},
		},
		{
			name: "unstamped delete removes a stamped file",
			ops:  []op{w("d/f", 2, "x"), {del: true, path: "d"}},
			want: map[string]string{"d/f": ""},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t, t.TempDir(), Options{})
			for i, o := range tt.ops {
				var err error
				var written bool
				if o.del {
					err = s.Remove("u", o.path, o.st)
				} else {
					_, written, err = s.Write("u", o.path, o.st, 0o600, bytes.NewReader([]byte(o.data)))
				}
				var ce *ConflictError
				switch {
				case !o.conflict.IsZero():
					if !errors.As(err, &ce) || ce.Held != o.conflict || ce.Deleted != o.deleted {
						t.Fatalf("op %d: err %v (%+v), want a conflict with %s deleted=%v", i, err, ce, o.conflict, o.deleted)
					}
				case err != nil:
					t.Fatalf("op %d: %v", i, err)
				case !o.del && written != o.written:
					t.Fatalf("op %d: written %v, want %v", i, written, o.written)
				}
			}
			for p, want := range tt.want {
				got, _, ok := content(t, s, "u", p)
				if want == "" && ok || want != "" && got != want {
					t.Errorf("%s = %q (present %v), want %q", p, got, ok, want)
				}
			}
			tmpEmpty(t, s)
		})
	}
}

func TestEqualStampKeepsInode(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	write := func(data string) {
		t.Helper()
		if _, _, err := s.Write("u", "f", at(1), 0o600, bytes.NewReader([]byte(data))); err != nil {
			t.Fatal(err)
		}
	}
	write("v1")
	p := filepath.Join(s.FilesDir(), "u", "f")
	before, _ := os.Stat(p)
	write("v1")
	after, _ := os.Stat(p)
	if !os.SameFile(before, after) {
		t.Fatal("the same version was rewritten")
	}
	// A rotten copy of the same version is replaced by the repair copy.
	os.WriteFile(p, []byte("v!"), 0o600)
	write("v1")
	if got, _, _ := content(t, s, "u", "f"); got != "v1" {
		t.Fatalf("rotten copy not repaired: %q", got)
	}
}

func TestVersionRecorded(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	data := bytes.Repeat([]byte("0123456789"), 20000)
	v, written, err := s.Write("u", "dir/f", at(1), 0o640, bytes.NewReader(data))
	if err != nil || !written {
		t.Fatal(err, written)
	}
	_, got, _ := content(t, s, "u", "dir/f")
	sum, _, _ := Hash(bytes.NewReader(data))
	want := Version{Stamp: at(1), SHA256: sum, Size: int64(len(data))}
	if got != want || v != want {
		t.Fatalf("recorded %+v, returned %+v, want %+v", got, v, want)
	}
	info, _ := os.Stat(filepath.Join(s.FilesDir(), "u", "dir", "f"))
	dinfo, _ := os.Stat(filepath.Join(s.FilesDir(), "u", "dir"))
	if info.Mode().Perm() != 0o640 || dinfo.Mode().Perm()&0o750 != 0o750 {
		t.Fatalf("modes %v %v, want charm's 0640 file in a directory with x for each r", info.Mode(), dinfo.Mode())
	}
	if _, _, err := s.Write("u", "/", at(1), 0o600, bytes.NewReader(nil)); err == nil {
		t.Fatal("a write to the root was accepted")
	}
}

// failingReader gives n bytes, then fails like a client that went away.
type failingReader struct{ n int }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, io.ErrUnexpectedEOF
	}
	k := min(len(p), r.n)
	for i := range p[:k] {
		p[i] = 'x'
	}
	r.n -= k
	return k, nil
}

func TestCutUploadLeavesOldVersion(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	if _, _, err := s.Write("u", "f", at(1), 0o600, bytes.NewReader([]byte("old"))); err != nil {
		t.Fatal(err)
	}
	for _, st := range []stamp.Stamp{at(2), {}} {
		if _, _, err := s.Write("u", "f", st, 0o600, &failingReader{n: 300 << 10}); err == nil {
			t.Fatal("a cut upload was stored")
		}
		if got, v, _ := content(t, s, "u", "f"); got != "old" || v.Stamp != at(1) {
			t.Fatalf("after a cut upload: %q %v", got, v.Stamp)
		}
		tmpEmpty(t, s)
	}
}

func TestOpenCleansAndFinishesDeletes(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	for _, p := range []string{"d/a", "d/b/c", "e"} {
		if _, _, err := s.Write("u", p, at(1), 0o600, bytes.NewReader([]byte(p))); err != nil {
			t.Fatal(err)
		}
	}
	// What a kill -9 can leave: a half-written upload, and a delete whose
	// tombstone is recorded while its files are still there.
	os.WriteFile(filepath.Join(s.TmpDir(), "up-0123456789abcdef"), []byte("half"), 0o600)
	if err := s.putTombstone("u", record{Path: "d", Stamp: at(2).String(), Pending: true}, true); err != nil {
		t.Fatal(err)
	}

	s = open(t, dir, Options{})
	tmpEmpty(t, s)
	for p, want := range map[string]bool{"d/a": false, "d/b/c": false, "e": true} {
		if _, _, ok := content(t, s, "u", p); ok != want {
			t.Errorf("%s present %v, want %v", p, ok, want)
		}
	}
	if _, err := os.Stat(filepath.Join(s.FilesDir(), "u", "d")); !errors.Is(err, fs.ErrNotExist) {
		t.Error("the emptied directory is still there")
	}
	if st, ok, _ := s.Deleted("u", "d/a"); !ok || st != at(2) {
		t.Fatalf("tombstone after restart: %v %v", st, ok)
	}
}

func TestTombstoneGrace(t *testing.T) {
	var now atomic.Int64
	now.Store(base.Add(time.Minute).UnixNano())
	s := open(t, t.TempDir(), Options{Grace: time.Hour, Now: func() time.Time { return time.Unix(0, now.Load()) }})
	if err := s.Remove("u", "d", at(10)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Write("u", "d/f", at(5), 0o600, bytes.NewReader([]byte("x"))); !errors.As(err, new(*ConflictError)) {
		t.Fatalf("within the grace period: %v, want a conflict", err)
	}
	if n, err := s.CollectTombstones(); err != nil || n != 0 {
		t.Fatalf("collected %d %v within the grace period", n, err)
	}
	now.Add(int64(2 * time.Hour))
	if n, err := s.CollectTombstones(); err != nil || n != 1 {
		t.Fatalf("collected %d %v, want 1", n, err)
	}
	if _, ok, _ := s.Deleted("u", "d/f"); ok {
		t.Fatal("tombstone still answers after collection")
	}
	if _, _, err := s.Write("u", "d/f", at(5), 0o600, bytes.NewReader([]byte("x"))); err != nil {
		t.Fatalf("after the grace period: %v", err)
	}
}

// TestConcurrentVersions: writers and deletes race on one key and one
// directory; whatever the interleaving, what is left is decided by stamps
// alone: the newest write survives unless a newer delete covers it.
func TestConcurrentVersions(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	const n = 40
	r := rand.New(rand.NewPCG(1, 2))
	stamps := r.Perm(n)
	var wg sync.WaitGroup
	for i, k := range stamps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := at(k + 1)
			var err error
			switch {
			case i%7 == 3:
				err = s.Remove("u", "d", st)
			default:
				_, _, err = s.Write("u", fmt.Sprintf("d/f%d", i%3), st, 0o600, bytes.NewReader([]byte(st.String())))
			}
			if err != nil && !errors.As(err, new(*ConflictError)) {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	newestDelete := stamp.Stamp{}
	newest := map[string]stamp.Stamp{}
	for i, k := range stamps {
		st := at(k + 1)
		if i%7 == 3 {
			newestDelete = stamp.Max(newestDelete, st)
			continue
		}
		p := fmt.Sprintf("d/f%d", i%3)
		newest[p] = stamp.Max(newest[p], st)
	}
	for p, st := range newest {
		got, v, ok := content(t, s, "u", p)
		if !st.After(newestDelete) {
			if ok {
				t.Errorf("%s: %q survived a newer delete %s", p, got, newestDelete)
			}
			continue
		}
		if !ok || got != st.String() || v.Stamp != st {
			t.Errorf("%s: %q (%v), want the newest write %s", p, got, ok, st)
		}
	}
	tmpEmpty(t, s)
}

// TestListingMatchesCharm: without stamps, a listing is byte for byte what
// charm's own local store serves for the same directory; with them, the
// same plus each file's stamp.
func TestListingMatchesCharm(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	for _, p := range []string{"d/a", "d/b", "d/sub/c"} {
		if err := s.Put("u", p, bytes.NewReader([]byte(p)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	charm, err := localstorage.NewLocalFileStore(s.FilesDir())
	if err != nil {
		t.Fatal(err)
	}
	read := func(get func(string, string) (fs.File, error)) []byte {
		t.Helper()
		f, err := get("u", "/d")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b, err := io.ReadAll(f)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	want, got := read(charm.Get), read(s.Get)
	if !bytes.Equal(got, want) {
		t.Fatalf("listing\n%s\ncharm's\n%s", got, want)
	}

	if _, _, err := s.Write("u", "d/a", at(3), 0o644, bytes.NewReader([]byte("a2"))); err != nil {
		t.Fatal(err)
	}
	e, err := s.Open("u", "d")
	if err != nil {
		t.Fatal(err)
	}
	stamps := map[string]string{}
	for _, f := range e.Listing.Files {
		stamps[f.Name] = f.Stamp
	}
	if stamps["a"] != at(3).String() || stamps["b"] != "" || stamps["sub"] != "" {
		t.Fatalf("stamps in the listing: %v", stamps)
	}
}
