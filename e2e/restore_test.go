package e2e

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/backup"
	"github.com/cring-dev/cring/internal/miniotest"
	"github.com/cring-dev/cring/internal/testwait"
)

// rtResult is one run of the cring binary.
type rtResult struct {
	out  string // stdout and stderr
	code int
}

func rtRun(t *testing.T, bin string, env []string, args ...string) rtResult {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("cring %v: %v", args, err)
	}
	return rtResult{string(out), code}
}

// rtFiles counts the regular files under every node's files dir.
func rtFiles(t *testing.T, tc *testCluster) int {
	n := 0
	for _, nd := range tc.dc.Nodes {
		filepath.WalkDir(filepath.Join(nd.DataDir, "files"), func(_ string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				n++
			}
			return nil
		})
	}
	return n
}

// TestRestoreWipedCluster: a backup holding exactly what the nodes store is
// put back, through the proxy, into a cluster whose every node lost its
// files; charm's own client then reads every file back identical. Along the
// way: dry run changes nothing, restore by user and by prefix, idempotent
// re-runs, as-of a time on a versioned bucket, and `backup verify` finds
// each kind of difference and none once restored.
func TestRestoreWipedCluster(t *testing.T) {
	bin := cringBinary(t)
	m := miniotest.Start(t)
	for _, kind := range []string{"minio", "file"} {
		t.Run(kind, func(t *testing.T) {
			ctx := context.Background()
			cfg := backup.Config{URL: "file://" + filepath.Join(t.TempDir(), "backup")}
			var env []string
			if kind == "minio" {
				cfg = backup.Config{URL: m.Endpoint, Bucket: "restore-e2e", AccessKey: m.AccessKey, SecretKey: m.SecretKey}
				env = []string{"AWS_ACCESS_KEY_ID=" + m.AccessKey, "AWS_SECRET_ACCESS_KEY=" + m.SecretKey}
			}
			targetArgs := []string{"--backup-url", cfg.URL}
			if cfg.Bucket != "" {
				targetArgs = append(targetArgs, "--backup-bucket", cfg.Bucket)
			}
			tc := startCluster(t, clusterOpts{nodes: 3, replicas: 2, quorum: 2})
			clusterArgs := []string{"--server-key", tc.dc.KeyPath, "--public-url", tc.cfg.PublicURL, "--url", "http://" + tc.httpAddr}
			cring := func(args ...string) rtResult {
				t.Helper()
				r := rtRun(t, bin, env, args...)
				t.Logf("cring %s %s → exit %d\n%s", args[0], args[1], r.code, r.out)
				return r
			}
			must := func(r rtResult, want ...string) {
				t.Helper()
				if r.code != 0 {
					t.Fatalf("exit %d:\n%s", r.code, r.out)
				}
				for _, w := range want {
					if !strings.Contains(r.out, w) {
						t.Fatalf("output lacks %q:\n%s", w, r.out)
					}
				}
			}

			r := cring(append([]string{"backup", "init"}, targetArgs...)...)
			if kind == "minio" {
				must(r, "is ready", "versioning enabled")
			} else {
				must(r, "is ready", "no versioning: versioning needs an S3 bucket")
			}
			tg, err := backup.Open(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}

			u1, u2 := tc.newUser(t), tc.newUser(t)
			files := []struct {
				u    *user
				name string
				data []byte
			}{
				{u1, "notes.txt", []byte("remember the milk")},
				{u1, "docs/a.md", randBytes(t, 10<<10)},
				{u1, "docs/deep/b.bin", randBytes(t, 2<<20)},
				{u2, "x", []byte("user two")},
				{u2, "kv/1", randBytes(t, 5000)},
				{u2, "kv/2", randBytes(t, 7000)},
			}
			// The backup holds what the nodes store, under <charmID>/<path>,
			// exactly as the proxy puts it there.
			keyOf := func(u *user, name string) string {
				ep, err := u.fs.EncryptPath(name)
				if err != nil {
					t.Fatal(err)
				}
				return u.id + "/" + ep
			}
			backupFromDisk := func(u *user, name string) {
				t.Helper()
				for _, b := range tc.onDisk(t, u, name) {
					if err := tg.Put(ctx, keyOf(u, name), bytes.NewReader(b), int64(len(b)), backup.Meta{Mode: 0o644, ModTime: time.Now()}); err != nil {
						t.Fatal(err)
					}
					return
				}
				t.Fatalf("%s is on no node", name)
			}
			for _, f := range files {
				f.u.put(t, f.name, f.data)
				backupFromDisk(f.u, f.name)
			}
			readsBack := func(why string) {
				t.Helper()
				for _, f := range files {
					if got := f.u.get(t, f.name); !bytes.Equal(got, f.data) {
						t.Fatalf("%s: %s reads back %d bytes, want %d identical", why, f.name, len(got), len(f.data))
					}
				}
			}

			verify := append(append([]string{"backup", "verify"}, targetArgs...), clusterArgs...)
			must(cring(verify...), "2 users, 6 files identical")

			// One object missing from the backup is a difference (exit 1).
			gone := keyOf(u1, "notes.txt")
			if err := tg.Delete(ctx, gone); err != nil {
				t.Fatal(err)
			}
			if r := cring(verify...); r.code != 1 || !strings.Contains(r.out, "missing from backup") || !strings.Contains(r.out, gone) {
				t.Fatalf("verify after deleting a backup object: exit %d\n%s", r.code, r.out)
			}
			backupFromDisk(u1, "notes.txt")
			// S3 keeps times to the millisecond: the as-of time is in a
			// millisecond no backup version was written in, before or after.
			nextMilli := func(after time.Time) {
				testwait.For(t, time.Second, "the next millisecond", func() bool { return time.Now().Truncate(time.Millisecond).After(after) })
			}
			nextMilli(time.Now())
			seeded := time.Now()
			nextMilli(seeded)

			// Every node loses its files; accounts stay.
			for i, nd := range tc.dc.Nodes {
				tc.stop(i)
				if err := os.RemoveAll(filepath.Join(nd.DataDir, "files")); err != nil {
					t.Fatal(err)
				}
			}
			for i := range tc.dc.Nodes {
				tc.start(i)
			}
			tc.waitReady(3)
			if _, err := u1.fs.ReadFile("notes.txt"); err == nil {
				t.Fatal("a file survived the wipe")
			}
			if r := cring(verify...); r.code != 1 || strings.Count(r.out, "missing from cluster") < 6 {
				t.Fatalf("verify after the wipe: exit %d\n%s", r.code, r.out)
			}

			restore := append(append([]string{"restore"}, targetArgs...), clusterArgs...)
			r = cring(append(restore, "--all", "--dry-run")...)
			must(r, "Would restore 6 files", "dry run: nothing was written", gone)
			if n := rtFiles(t, tc); n != 0 {
				t.Fatalf("dry run wrote %d files", n)
			}

			// One directory of one user.
			kvDir, _ := u2.fs.EncryptPath("kv")
			must(cring(append(restore, "--user", u2.id, "--prefix", kvDir)...), "restored 2 files")
			if got := u2.get(t, "kv/1"); !bytes.Equal(got, files[4].data) {
				t.Fatal("kv/1 not restored")
			}
			if _, err := u2.fs.ReadFile("x"); err == nil {
				t.Fatal("--prefix restored a file outside the prefix")
			}
			// One user.
			must(cring(append(restore, "--user", u1.id)...), "restored 3 files")
			if _, err := u2.fs.ReadFile("x"); err == nil {
				t.Fatal("--user restored another user's file")
			}
			// Everything, with the issuer discovered from the cluster.
			discover := append(append([]string{"restore"}, targetArgs...), "--server-key", tc.dc.KeyPath, "--url", "http://"+tc.httpAddr)
			must(cring(append(discover, "--all")...), "restored 6 files")
			readsBack("after restore")
			// Again: the same bytes, on at least N nodes each (a node the
			// proxy saw fail right after the restarts may have passed its
			// copy to a handoff).
			must(cring(append(restore, "--all")...), "restored 6 files")
			readsBack("after a second restore")
			for _, f := range files {
				copies := tc.onDisk(t, f.u, f.name)
				if len(copies) < 2 {
					t.Fatalf("%s on %d nodes after restore, want 2 replicas", f.name, len(copies))
				}
				for n, b := range copies {
					if want := copies["node1"]; want != nil && !bytes.Equal(b, want) {
						t.Fatalf("%s differs between node1 and %s", f.name, n)
					}
				}
			}
			must(cring(verify...), "2 users, 6 files identical")

			if kind == "file" {
				r := cring(append(restore, "--all", "--as-of", seeded.Format(time.RFC3339Nano))...)
				if r.code != 2 || !strings.Contains(r.out, "versioning needs an S3 bucket") {
					t.Fatalf("--as-of on file://: exit %d\n%s", r.code, r.out)
				}
				return
			}
			// As of a time, on the versioned bucket: a newer version is
			// written (cluster and backup), then the old one comes back.
			v2 := []byte("remember the milk and the eggs")
			u1.put(t, "notes.txt", v2)
			backupFromDisk(u1, "notes.txt")
			must(cring(append(restore, "--user", u1.id, "--as-of", seeded.Format(time.RFC3339Nano))...), "restored 3 files")
			if got := u1.get(t, "notes.txt"); string(got) != "remember the milk" {
				t.Fatalf("as-of restore: notes.txt = %q", got)
			}
			if r := cring(verify...); r.code != 1 || !strings.Contains(r.out, "different bytes") || !strings.Contains(r.out, gone) {
				t.Fatalf("verify with an older version restored: exit %d\n%s", r.code, r.out)
			}
			must(cring(append(restore, "--user", u1.id)...), "restored 3 files")
			if got := u1.get(t, "notes.txt"); !bytes.Equal(got, v2) {
				t.Fatalf("current restore: notes.txt = %q", got)
			}
			must(cring(verify...), "identical")
		})
	}
}

// TestRestoreRejectsBadInput: bad flags are one line and exit 2, before
// anything is written.
func TestRestoreRejectsBadInput(t *testing.T) {
	bin := cringBinary(t)
	dir := "file://" + t.TempDir()
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"no scope", []string{"restore", "--backup-url", dir}, "say what to restore"},
		{"all and user", []string{"restore", "--backup-url", dir, "--all", "--user", "x"}, "--all restores everything"},
		{"bad time", []string{"restore", "--backup-url", dir, "--all", "--as-of", "yesterday"}, "want RFC 3339"},
		{"no target", []string{"restore", "--all"}, "--backup-url is required"},
		{"no server key", []string{"restore", "--all", "--backup-url", dir}, "--server-key is required"},
		{"unreachable S3", []string{"backup", "verify", "--backup-url", "http://127.0.0.1:1", "--backup-bucket", "b", "--server-key", "k"}, "cannot connect"},
		{"bad url", []string{"backup", "init", "--backup-url", "ftp://x"}, "want file:///dir"},
		{"zero parallel", []string{"restore", "--backup-url", dir, "--all", "--parallel", "0"}, "--parallel must be at least 1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := rtRun(t, bin, []string{"AWS_ACCESS_KEY_ID=a", "AWS_SECRET_ACCESS_KEY=b"}, tt.args...)
			msg := strings.TrimSpace(r.out)
			if r.code != 2 || !strings.Contains(msg, tt.want) || strings.Contains(msg, "\n") {
				t.Fatalf("exit %d, output %q; want exit 2 and one line containing %q", r.code, msg, tt.want)
			}
		})
	}
	// Flags come from CRING_* too.
	r := rtRun(t, bin, []string{"CRING_BACKUP_URL=" + dir, "CRING_ALL=true"}, "restore", "--dry-run")
	if r.code != 0 || !strings.Contains(r.out, "Would restore 0 files") {
		t.Fatalf("restore from CRING_* env: exit %d\n%s", r.code, r.out)
	}
}
