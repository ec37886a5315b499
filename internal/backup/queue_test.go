package backup_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/backup"
	"github.com/cring-dev/cring/internal/miniotest"
	"github.com/cring-dev/cring/internal/testwait"
)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// spool writes b to a spool file of q and returns its Put op.
func spoolPut(t testing.TB, q *backup.Queue, key string, b []byte) backup.Op {
	t.Helper()
	f, err := q.Spool()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return backup.Op{Kind: backup.Put, Key: key, SpoolPath: f.Name(), Size: int64(len(b)), Meta: backup.Meta{Mode: 0o644, ModTime: time.Now()}}
}

func runQueue(t testing.TB, q *backup.Queue) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); q.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

func dirEntries(t testing.TB, dir string) []string {
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		out = append(out, de.Name())
	}
	return out
}

// TestQueueSurvivesOutageAndRestart: ops enqueued while MinIO is down are
// retried, survive the process going away (a new Queue on the same dir),
// and all arrive with identical bytes once MinIO is back.
func TestQueueSurvivesOutageAndRestart(t *testing.T) {
	m := miniotest.Start(t)
	ctx := context.Background()
	tg, err := backup.Open(ctx, s3Config(m))
	if err != nil {
		t.Fatal(err)
	}
	put(t, tg, "u/gone", []byte("to be deleted while the target is down"), 0o644, time.Now())
	m.Stop()

	dir := filepath.Join(t.TempDir(), "queue")
	q, err := backup.OpenQueue(dir, tg, testLogger(t), backup.WithBackoff(20*time.Millisecond, 200*time.Millisecond), backup.WithWorkers(3))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{}
	for i, size := range []int{0, 1, 1000, 64 << 10, 3 << 20, 17 << 20} {
		key := fmt.Sprintf("u/f%d", i)
		want[key] = randBytes(t, size)
		if err := q.Enqueue(spoolPut(t, q, key, want[key])); err != nil {
			t.Fatal(err)
		}
	}
	// An overwrite of an earlier key and a delete, all while down.
	want["u/f2"] = []byte("second version wins")
	if err := q.Enqueue(spoolPut(t, q, "u/f2", want["u/f2"])); err != nil {
		t.Fatal(err)
	}
	if err := q.Enqueue(backup.Op{Kind: backup.Delete, Key: "u/gone"}); err != nil {
		t.Fatal(err)
	}
	stop := runQueue(t, q)
	testwait.For(t, 10*time.Second, "failed attempts", func() bool { return q.Stats().Failures >= 3 })
	st := q.Stats()
	if st.Depth != 8 || st.LastError == "" || st.Oldest.IsZero() || time.Since(st.Oldest) <= 0 {
		t.Fatalf("stats while down: %+v", st)
	}
	t.Logf("while down: depth %d, lag %s, %d failures, last error %q", st.Depth, time.Since(st.Oldest).Round(time.Millisecond), st.Failures, st.LastError)

	// The process goes away: a new queue on the same dir recovers every op.
	stop()
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q2, err := backup.OpenQueue(dir, tg, testLogger(t), backup.WithBackoff(20*time.Millisecond, 200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q2.Close() })
	if d := q2.Stats().Depth; d != 8 {
		t.Fatalf("recovered %d ops, want 8", d)
	}
	runQueue(t, q2)
	// The recovered queue works its ops (and fails) before MinIO is back.
	testwait.For(t, 10*time.Second, "the recovered queue's first failed attempt", func() bool { return q2.Stats().Failures >= 1 })
	m.Start()
	testwait.For(t, 30*time.Second, "queue drained", func() bool { return q2.Stats().Depth == 0 })

	objs, err := tg.List(ctx, "u/", true)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != len(want) {
		t.Fatalf("bucket holds %v, want %d objects", keys(objs), len(want))
	}
	for k, b := range want {
		got, o := get(t, tg, k)
		if !bytes.Equal(got, b) || o.Mode != 0o644 {
			t.Fatalf("%s: %d bytes mode %v, want %d identical bytes", k, len(got), o.Mode, len(b))
		}
	}
	if _, err := tg.Stat(ctx, "u/gone"); !errors.Is(err, backup.ErrNotFound) {
		t.Fatalf("deleted while down: %v", err)
	}
	if left := dirEntries(t, filepath.Join(dir, "spool")); len(left) != 0 {
		t.Fatalf("spool files left behind: %v", left)
	}
	if left := dirEntries(t, filepath.Join(dir, "ops")); len(left) != 0 {
		t.Fatalf("op records left behind: %v", left)
	}
}

// recorder is instrumentation around a real target: it delays every call
// randomly (so an ordering bug shows) and records the order ops hit it.
type recorder struct {
	backup.Target
	mu  sync.Mutex
	log []string
}

// jitter is the fault, not a wait: random delays reorder concurrent calls.
func (r *recorder) jitter() { time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond) }

func (r *recorder) Put(ctx context.Context, key string, body io.Reader, size int64, meta backup.Meta) error {
	r.jitter()
	b, _ := io.ReadAll(body)
	r.mu.Lock()
	r.log = append(r.log, "put "+key+" "+string(b))
	r.mu.Unlock()
	return r.Target.Put(ctx, key, bytes.NewReader(b), int64(len(b)), meta)
}

func (r *recorder) Delete(ctx context.Context, key string) error {
	r.jitter()
	r.mu.Lock()
	r.log = append(r.log, "delete "+key)
	r.mu.Unlock()
	return r.Target.Delete(ctx, key)
}

// TestQueueOrder: with many workers and random delays, ops on one key apply
// in enqueue order, and a delete of a directory is ordered with the ops on
// keys under it; the final state is what the nodes would hold.
func TestQueueOrder(t *testing.T) {
	ctx := context.Background()
	base, err := backup.Open(ctx, backup.Config{URL: "file://" + filepath.Join(t.TempDir(), "b")})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{Target: base}
	q, err := backup.OpenQueue(t.TempDir(), rec, testLogger(t), backup.WithWorkers(16))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	enq := func(op backup.Op) {
		t.Helper()
		if err := q.Enqueue(op); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]string{}
	for i := range 20 {
		k := fmt.Sprintf("u/k%d", i)
		enq(spoolPut(t, q, k, []byte("v1")))
		enq(spoolPut(t, q, k, []byte("v2")))
		enq(backup.Op{Kind: backup.Delete, Key: k})
		if i%2 == 0 {
			enq(spoolPut(t, q, k, []byte("v3")))
			want[k] = "v3"
		}
		// A tree written, deleted as a whole, then partly rewritten.
		d := fmt.Sprintf("u/d%d", i)
		enq(spoolPut(t, q, d+"/a", []byte("old")))
		enq(spoolPut(t, q, d+"/sub/b", []byte("old")))
		enq(backup.Op{Kind: backup.Delete, Key: d})
		enq(spoolPut(t, q, d+"/sub/b", []byte("new")))
		want[d+"/sub/b"] = "new"
	}
	runQueue(t, q)
	testwait.For(t, 30*time.Second, "queue drained", func() bool { return q.Stats().Depth == 0 })

	objs, err := base.List(ctx, "", true)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, o := range objs {
		b, _ := get(t, base, o.Key)
		got[o.Key] = string(b)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("final state %v\nwant %v", got, want)
	}
	// Every pair of conflicting ops hit the target in enqueue order.
	pos := map[string]int{}
	rec.mu.Lock()
	for i, l := range rec.log {
		pos[l] = i // lines are unique
	}
	rec.mu.Unlock()
	for i := range 20 {
		k := fmt.Sprintf("u/k%d", i)
		d := fmt.Sprintf("u/d%d", i)
		order := []string{"put " + k + " v1", "put " + k + " v2", "delete " + k}
		if i%2 == 0 {
			order = append(order, "put "+k+" v3")
		}
		checkOrder(t, pos, order)
		checkOrder(t, pos, []string{"put " + d + "/a old", "delete " + d, "put " + d + "/sub/b new"})
	}
}

func checkOrder(t *testing.T, pos map[string]int, order []string) {
	t.Helper()
	for i := 1; i < len(order); i++ {
		a, aok := pos[order[i-1]]
		b, bok := pos[order[i]]
		if !aok || !bok || a >= b {
			t.Fatalf("%q (at %d, seen %v) must reach the target before %q (at %d, seen %v)", order[i-1], a, aok, order[i], b, bok)
		}
	}
}

// TestQueueDo: a synchronous op applies the queued ops it must follow
// first, even with no Run, and leaves its spool file to the caller.
func TestQueueDo(t *testing.T) {
	ctx := context.Background()
	tg, err := backup.Open(ctx, backup.Config{URL: "file://" + filepath.Join(t.TempDir(), "b")})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{Target: tg}
	q, err := backup.OpenQueue(t.TempDir(), rec, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	if err := q.Enqueue(spoolPut(t, q, "u/k", []byte("queued"))); err != nil {
		t.Fatal(err)
	}
	if err := q.Enqueue(backup.Op{Kind: backup.Delete, Key: "u/dir"}); err != nil {
		t.Fatal(err)
	}
	if err := q.Enqueue(spoolPut(t, q, "u/other", []byte("unrelated"))); err != nil {
		t.Fatal(err)
	}
	op := spoolPut(t, q, "u/k", []byte("sync"))
	if err := q.Do(ctx, op); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(op.SpoolPath); err != nil {
		t.Fatalf("Do removed the caller's spool file: %v", err)
	}
	under := spoolPut(t, q, "u/dir/x", []byte("x"))
	if err := q.Do(ctx, under); err != nil {
		t.Fatal(err)
	}
	if b, _ := get(t, tg, "u/k"); string(b) != "sync" {
		t.Fatalf("u/k = %q, want the synchronous write", b)
	}
	if b, _ := get(t, tg, "u/dir/x"); string(b) != "x" {
		t.Fatalf("u/dir/x = %q", b)
	}
	rec.mu.Lock()
	log := strings.Join(rec.log, "; ")
	rec.mu.Unlock()
	if log != "put u/k queued; put u/k sync; delete u/dir; put u/dir/x x" {
		t.Fatalf("applied %s", log)
	}
	if st := q.Stats(); st.Depth != 1 {
		t.Fatalf("depth %d, want only the unrelated op left", st.Depth)
	}
}

// TestQueueDoTargetDown: Do reports the target's failure and keeps nothing.
func TestQueueDoTargetDown(t *testing.T) {
	m := miniotest.Start(t)
	ctx := context.Background()
	tg, err := backup.Open(ctx, s3Config(m))
	if err != nil {
		t.Fatal(err)
	}
	m.Stop()
	q, err := backup.OpenQueue(t.TempDir(), tg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	start := time.Now()
	err = q.Do(dctx, spoolPut(t, q, "u/k", []byte("x")))
	if err == nil {
		t.Fatal("Do succeeded with the target down")
	}
	// A refused connection fails the call at once, not after minio-go's
	// own retries: sync writes answer promptly.
	if d := time.Since(start); d > 2*time.Second || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Do failed after %s with %v; want a prompt connection refused", d, err)
	}
	if st := q.Stats(); st.Depth != 0 {
		t.Fatalf("Do left %d ops queued", st.Depth)
	}
}

// TestQueueParksLostBodies: an op whose spooled body vanished can never
// succeed; it is parked where an operator finds it, counted and logged.
func TestQueueParksLostBodies(t *testing.T) {
	ctx := context.Background()
	tg, err := backup.Open(ctx, backup.Config{URL: "file://" + filepath.Join(t.TempDir(), "b")})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	q, err := backup.OpenQueue(dir, tg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	op := spoolPut(t, q, "u/k", []byte("body"))
	if err := q.Enqueue(op); err != nil {
		t.Fatal(err)
	}
	os.Truncate(op.SpoolPath, 1) // the disk lost part of it
	runQueue(t, q)
	testwait.For(t, 10*time.Second, "op parked", func() bool { return q.Stats().Parked == 1 })
	st := q.Stats()
	if st.Depth != 0 || st.Failures == 0 || !strings.Contains(st.LastError, "spooled body has 1 bytes, want 4") {
		t.Fatalf("stats %+v", st)
	}
	if len(dirEntries(t, filepath.Join(dir, "failed"))) != 2 {
		t.Fatalf("failed/ holds %v, want the record and its body", dirEntries(t, filepath.Join(dir, "failed")))
	}
	q.Close()
	q2, err := backup.OpenQueue(dir, tg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer q2.Close()
	if st := q2.Stats(); st.Parked != 1 {
		t.Fatalf("after reopen: parked %d, want 1", st.Parked)
	}
}

func TestQueueRejects(t *testing.T) {
	tg, err := backup.Open(context.Background(), backup.Config{URL: "file://" + filepath.Join(t.TempDir(), "b")})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	q, err := backup.OpenQueue(dir, tg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if _, err := backup.OpenQueue(dir, tg, nil); err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Fatalf("second OpenQueue on one dir: %v", err)
	}
	outside := filepath.Join(t.TempDir(), "body")
	os.WriteFile(outside, []byte("x"), 0o600)
	good := spoolPut(t, q, "u/k", []byte("abc"))
	short := good
	short.Size = 10
	for _, tt := range []struct {
		name string
		op   backup.Op
		want string
	}{
		{"foreign spool", backup.Op{Kind: backup.Put, Key: "u/k", SpoolPath: outside, Size: 1}, "not from this queue"},
		{"wrong size", short, "spool file has 3 bytes, op says 10"},
		{"bad key", backup.Op{Kind: backup.Delete, Key: "../etc"}, "invalid key"},
		{"no kind", backup.Op{Key: "u/k"}, "op kind"},
		{"missing body", backup.Op{Kind: backup.Put, Key: "u/k", Size: 5}, "no spool file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := q.Enqueue(tt.op); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Enqueue: %v, want %q", err, tt.want)
			}
		})
	}
	if st := q.Stats(); st.Depth != 0 {
		t.Fatalf("rejected ops were queued: %+v", st)
	}
}

// TestQueueDoWithRun: synchronous and queued ops on the same keys, issued in
// one order while workers run, reach the target in that order.
func TestQueueDoWithRun(t *testing.T) {
	ctx := context.Background()
	tg, err := backup.Open(ctx, backup.Config{URL: "file://" + filepath.Join(t.TempDir(), "b")})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{Target: tg}
	q, err := backup.OpenQueue(t.TempDir(), rec, testLogger(t), backup.WithWorkers(8))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	runQueue(t, q)
	var want []string
	for i := range 60 {
		k := fmt.Sprintf("u/k%d", i%3)
		v := fmt.Sprintf("v%d", i)
		op := spoolPut(t, q, k, []byte(v))
		if i%4 == 3 {
			if err := q.Do(ctx, op); err != nil {
				t.Fatal(err)
			}
			os.Remove(op.SpoolPath) // Do leaves it to us
		} else if err := q.Enqueue(op); err != nil {
			t.Fatal(err)
		}
		want = append(want, "put "+k+" "+v)
	}
	testwait.For(t, 20*time.Second, "queue drained", func() bool { return q.Stats().Depth == 0 })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for k := range 3 {
		key := fmt.Sprintf("u/k%d ", k)
		var got, exp []string
		for _, l := range rec.log {
			if strings.HasPrefix(l, "put "+key) {
				got = append(got, l)
			}
		}
		for _, l := range want {
			if strings.HasPrefix(l, "put "+key) {
				exp = append(exp, l)
			}
		}
		if strings.Join(got, ";") != strings.Join(exp, ";") {
			t.Fatalf("%s applied in order\n%v\nwant\n%v", key, got, exp)
		}
	}
	if left := dirEntries(t, filepath.Join(q.Dir(), "spool")); len(left) != 0 {
		t.Fatalf("spool files left: %v", left)
	}
}

// TestQueueParksUnreadableRecord: an op record that can't be read at open is
// parked once, and counted once.
func TestQueueParksUnreadableRecord(t *testing.T) {
	tg, err := backup.Open(context.Background(), backup.Config{URL: "file://" + filepath.Join(t.TempDir(), "b")})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	q, err := backup.OpenQueue(dir, tg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	q.Close()
	if err := os.WriteFile(filepath.Join(dir, "ops", "00000000000000000001.json"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	q, err = backup.OpenQueue(dir, tg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if st := q.Stats(); st.Parked != 1 || st.Depth != 0 {
		t.Fatalf("stats %+v, want the record parked once", st)
	}
}
