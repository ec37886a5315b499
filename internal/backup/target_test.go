package backup_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/backup"
	"github.com/cring-dev/cring/internal/miniotest"
	"github.com/cring-dev/cring/internal/testwait"
)

var bucketSeq atomic.Int64

// s3Config is a config for a fresh bucket on m.
func s3Config(m *miniotest.Server) backup.Config {
	return backup.Config{
		URL:       m.Endpoint,
		Bucket:    fmt.Sprintf("cring-test-%d-%d", time.Now().UnixNano()%1e6, bucketSeq.Add(1)),
		AccessKey: m.AccessKey,
		SecretKey: m.SecretKey,
	}
}

// targets opens one of each kind of target on real storage.
func targets(t *testing.T) map[string]backup.Target {
	t.Helper()
	m := miniotest.Start(t)
	ctx := context.Background()
	s3, err := backup.Open(ctx, s3Config(m))
	if err != nil {
		t.Fatal(err)
	}
	dir, err := backup.Open(ctx, backup.Config{URL: "file://" + filepath.Join(t.TempDir(), "backup")})
	if err != nil {
		t.Fatal(err)
	}
	return map[string]backup.Target{"minio": s3, "file": dir}
}

func randBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func put(t testing.TB, tg backup.Target, key string, b []byte, mode fs.FileMode, mt time.Time) {
	t.Helper()
	if err := tg.Put(context.Background(), key, bytes.NewReader(b), int64(len(b)), backup.Meta{Mode: mode, ModTime: mt}); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

func get(t testing.TB, tg backup.Target, key string) ([]byte, backup.Object) {
	t.Helper()
	rc, o, err := tg.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return b, o
}

func keys(objs []backup.Object) []string {
	var out []string
	for _, o := range objs {
		k := o.Key
		if o.IsDir {
			k += "/"
		}
		out = append(out, k)
	}
	return out
}

func TestTargetRoundTrip(t *testing.T) {
	ctx := context.Background()
	for name, tg := range targets(t) {
		t.Run(name, func(t *testing.T) {
			mt := time.Date(2024, 11, 5, 10, 30, 0, 123456789, time.UTC)
			files := map[string][]byte{
				"u1/a":         randBytes(t, 1000),
				"u1/dir/b":     randBytes(t, 17<<20), // above minio-go's multipart threshold
				"u1/dir/sub/c": {},
				"u1/dir/sub/d": []byte("d"),
				"u2/e":         []byte("other user"),
			}
			for k, b := range files {
				put(t, tg, k, b, 0o640, mt)
			}
			for k, want := range files {
				got, o := get(t, tg, k)
				if !bytes.Equal(got, want) {
					t.Fatalf("%s: got %d bytes, want %d identical", k, len(got), len(want))
				}
				if o.Key != k || o.Size != int64(len(want)) || o.Mode != 0o640 || !o.ModTime.Equal(mt) {
					t.Fatalf("%s: object %+v, want size %d mode 0640 modtime %s", k, o, len(want), mt)
				}
				st, err := tg.Stat(ctx, k)
				if err != nil || st.Size != int64(len(want)) || st.Mode != 0o640 {
					t.Fatalf("stat %s: %+v %v", k, st, err)
				}
			}
			// Overwrite keeps the newest bytes and metadata.
			put(t, tg, "u1/a", []byte("v2"), 0o600, mt.Add(time.Hour))
			if got, o := get(t, tg, "u1/a"); string(got) != "v2" || o.Mode != 0o600 || !o.ModTime.Equal(mt.Add(time.Hour)) {
				t.Fatalf("after overwrite: %q %+v", got, o)
			}

			for _, tt := range []struct {
				prefix    string
				recursive bool
				want      []string
			}{
				{"", true, []string{"u1/a", "u1/dir/b", "u1/dir/sub/c", "u1/dir/sub/d", "u2/e"}},
				{"", false, []string{"u1/", "u2/"}},
				{"u1/", false, []string{"u1/a", "u1/dir/"}},
				{"u1/dir/", false, []string{"u1/dir/b", "u1/dir/sub/"}},
				{"u1/dir/", true, []string{"u1/dir/b", "u1/dir/sub/c", "u1/dir/sub/d"}},
				{"u1/di", false, []string{"u1/dir/"}},
				{"u3/", true, nil},
			} {
				got, err := tg.List(ctx, tt.prefix, tt.recursive)
				if err != nil {
					t.Fatalf("list %q: %v", tt.prefix, err)
				}
				if !slices.Equal(keys(got), tt.want) {
					t.Fatalf("list %q recursive=%v: %v, want %v", tt.prefix, tt.recursive, keys(got), tt.want)
				}
				for _, o := range got {
					if !o.IsDir && o.Size != int64(len(files[o.Key])) && o.Key != "u1/a" {
						t.Fatalf("list %q: %s size %d, want %d", tt.prefix, o.Key, o.Size, len(files[o.Key]))
					}
				}
			}

			// Delete of a file, then of a directory (its whole tree, like Charm).
			if err := tg.Delete(ctx, "u1/a"); err != nil {
				t.Fatal(err)
			}
			if _, _, err := tg.Get(ctx, "u1/a"); !errors.Is(err, backup.ErrNotFound) {
				t.Fatalf("get after delete: %v, want ErrNotFound", err)
			}
			if _, err := tg.Stat(ctx, "u1/a"); !errors.Is(err, backup.ErrNotFound) {
				t.Fatalf("stat after delete: %v, want ErrNotFound", err)
			}
			if err := tg.Delete(ctx, "u1/dir"); err != nil {
				t.Fatal(err)
			}
			if err := tg.Delete(ctx, "u1/never-there"); err != nil {
				t.Fatalf("deleting nothing: %v", err)
			}
			got, err := tg.List(ctx, "", true)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(keys(got), []string{"u2/e"}) {
				t.Fatalf("after deletes: %v", keys(got))
			}
			if got, _ := tg.List(ctx, "", false); !slices.Equal(keys(got), []string{"u2/"}) {
				t.Fatalf("top level after deletes: %v", keys(got))
			}
			for _, bad := range []string{"", "/abs", "a/../../x", "a/", ".."} {
				if err := tg.Put(ctx, bad, strings.NewReader(""), 0, backup.Meta{}); err == nil {
					t.Fatalf("put %q: no error", bad)
				}
			}
		})
	}
}

// TestOpenFailsClearly: a bad endpoint, bad credentials or bad input fail
// in Open, quickly, with one line that says what is wrong.
func TestOpenFailsClearly(t *testing.T) {
	m := miniotest.Start(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := l.Addr().String()
	l.Close()
	good := s3Config(m)
	badSecret := good
	badSecret.SecretKey = "not-the-secret"
	badKey := good
	badKey.AccessKey = "nobody"
	refused := good
	refused.URL = "http://" + closedPort
	noBucket := good
	noBucket.Bucket = ""
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	noCreds := good
	noCreds.AccessKey, noCreds.SecretKey = "", ""
	for _, tt := range []struct {
		name string
		cfg  backup.Config
		want string
	}{
		{"refused", refused, "cannot connect: " + closedPort},
		{"bad secret", badSecret, "credentials rejected (SignatureDoesNotMatch"},
		{"unknown key", badKey, "credentials rejected (InvalidAccessKeyId"},
		{"no bucket", noBucket, "backup-bucket is required"},
		{"no credentials", noCreds, "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"},
		{"path in endpoint", backup.Config{URL: m.Endpoint + "/bucket", Bucket: "b"}, "no path"},
		{"scheme", backup.Config{URL: "ftp://x", Bucket: "b"}, "want file:///dir"},
		{"relative dir", backup.Config{URL: "file://relative/dir"}, "file:///absolute/dir"},
		{"empty", backup.Config{}, "no backup target"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			_, err := backup.Open(context.Background(), tt.cfg)
			if err == nil {
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q, want one line containing %q", err, tt.want)
			}
			if testing.Verbose() {
				t.Logf("%s", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("took %s to fail", d)
			}
		})
	}
}

// TestOpenCreatesBucket: a missing bucket (or directory) is created, and
// credentials come from the prototype's environment variables.
func TestOpenCreatesBucket(t *testing.T) {
	m := miniotest.Start(t)
	ctx := context.Background()
	cfg := s3Config(m)
	t.Setenv("AWS_ACCESS_KEY_ID", cfg.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", cfg.SecretKey)
	cfg.AccessKey, cfg.SecretKey = "", ""
	tg, err := backup.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	put(t, tg, "u/x", []byte("x"), 0o644, time.Now())
	if _, err := os.Stat(filepath.Join(m.Dir, cfg.Bucket)); err != nil {
		t.Fatalf("bucket not on the MinIO drive: %v", err)
	}
	// Opening again finds it.
	tg2, err := backup.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := get(t, tg2, "u/x"); string(b) != "x" {
		t.Fatalf("got %q", b)
	}

	dir := filepath.Join(t.TempDir(), "not", "yet")
	dt, err := backup.Open(ctx, backup.Config{URL: "file://" + dir})
	if err != nil {
		t.Fatal(err)
	}
	put(t, dt, "u/x", []byte("x"), 0o644, time.Now())
	// The directory mirrors a node's files dir.
	if b, err := os.ReadFile(filepath.Join(dir, "u", "x")); err != nil || string(b) != "x" {
		t.Fatalf("file target layout: %q %v", b, err)
	}
}

// TestVersionsAsOf: with versioning, ListAsOf picks what was current at a
// time, deleted keys included up to their deletion, and GetVersion returns
// those bytes.
func TestVersionsAsOf(t *testing.T) {
	ctx := context.Background()
	tgs := targets(t)
	tg := tgs["minio"]

	if _, err := tg.ListAsOf(ctx, "", time.Now()); !errors.Is(err, backup.ErrNotVersioned) {
		t.Fatalf("as-of on an unversioned bucket: %v, want ErrNotVersioned", err)
	}
	if err := tgs["file"].EnableVersioning(ctx); !errors.Is(err, backup.ErrVersioningUnsupported) {
		t.Fatalf("file versioning: %v", err)
	}
	if _, err := tgs["file"].ListAsOf(ctx, "", time.Now()); !errors.Is(err, backup.ErrVersioningUnsupported) {
		t.Fatalf("file as-of: %v", err)
	}
	if err := tg.EnableVersioning(ctx); err != nil {
		t.Fatal(err)
	}
	// S3 times have millisecond precision: a mark is taken in a
	// millisecond no version was written in, before or after it.
	nextMilli := func(after time.Time) {
		testwait.For(t, time.Second, "the next millisecond", func() bool { return time.Now().Truncate(time.Millisecond).After(after) })
	}
	mark := func() time.Time {
		nextMilli(time.Now())
		at := time.Now()
		nextMilli(at)
		return at
	}
	t0 := mark()
	put(t, tg, "u/k", []byte("k1"), 0o600, time.Now())
	put(t, tg, "u/d/x", []byte("x1"), 0o644, time.Now())
	t1 := mark()
	put(t, tg, "u/k", []byte("k2"), 0o644, time.Now())
	put(t, tg, "u/k2", []byte("k2-only"), 0o644, time.Now())
	t2 := mark()
	if err := tg.Delete(ctx, "u/k"); err != nil {
		t.Fatal(err)
	}
	if err := tg.Delete(ctx, "u/d"); err != nil {
		t.Fatal(err)
	}
	put(t, tg, "u/k3", []byte("k3"), 0o644, time.Now())
	t3 := mark()

	for _, tt := range []struct {
		name string
		at   time.Time
		want map[string]string
	}{
		{"before anything", t0, map[string]string{}},
		{"first writes", t1, map[string]string{"u/k": "k1", "u/d/x": "x1"}},
		{"overwrite", t2, map[string]string{"u/k": "k2", "u/k2": "k2-only", "u/d/x": "x1"}},
		{"after deletes", t3, map[string]string{"u/k2": "k2-only", "u/k3": "k3"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			objs, err := tg.ListAsOf(ctx, "u/", tt.at)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, o := range objs {
				if o.VersionID == "" {
					t.Fatalf("%s: no version id", o.Key)
				}
				rc, vo, err := tg.GetVersion(ctx, o.Key, o.VersionID)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(rc)
				rc.Close()
				got[o.Key] = string(b)
				if o.Key == "u/k" && tt.name == "first writes" && vo.Mode != 0o600 {
					t.Fatalf("version metadata: mode %v", vo.Mode)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("as of %s: %v, want %v", tt.name, got, tt.want)
			}
		})
	}
	// The current state is unaffected.
	cur, err := tg.List(ctx, "u/", true)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(keys(cur), []string{"u/k2", "u/k3"}) {
		t.Fatalf("current: %v", keys(cur))
	}
}

// TestPutStreamsFromDisk: a large spooled body goes to S3 without being
// held in memory (minio-go reads sections of the file), and comes back
// identical through a streamed Get.
func TestPutStreamsFromDisk(t *testing.T) {
	const size = 96 << 20
	ctx := context.Background()
	tg := targets(t)["minio"]
	p := filepath.Join(t.TempDir(), "body")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	chunk := randBytes(t, 1<<20)
	want := sha256.New()
	for i := 0; i < size; i += len(chunk) {
		chunk[0] = byte(i >> 20) // no two chunks alike
		f.Write(chunk)
		want.Write(chunk)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if err := tg.Put(ctx, "u/big", f, size, backup.Meta{Mode: 0o644}); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	t.Logf("put of %d MiB allocated %d MiB", size>>20, (after.TotalAlloc-before.TotalAlloc)>>20)
	if a := after.TotalAlloc - before.TotalAlloc; a > 32<<20 {
		t.Fatalf("put of %d MiB allocated %d MiB: the body is being buffered", size>>20, a>>20)
	}

	rc, o, err := tg.Get(ctx, "u/big")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := sha256.New()
	runtime.ReadMemStats(&before)
	n, err := io.Copy(got, rc)
	runtime.ReadMemStats(&after)
	if err != nil || n != size || o.Size != size || !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Fatalf("get: %d bytes (object says %d), err %v; want %d identical", n, o.Size, err, size)
	}
	if a := after.TotalAlloc - before.TotalAlloc; a > 32<<20 {
		t.Fatalf("get of %d MiB allocated %d MiB", size>>20, a>>20)
	}
}
