package backup

import (
	"container/list"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Kind is what an Op does to the backup.
type Kind int

// Op kinds.
const (
	Put Kind = iota + 1
	Delete
)

func (k Kind) String() string {
	switch k {
	case Put:
		return "put"
	case Delete:
		return "delete"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Op is one change to carry to the target.
type Op struct {
	Kind Kind
	Key  string // <charmID>/<path>
	// SpoolPath holds a Put's body, exactly Size bytes (empty for an empty
	// body). For Enqueue it must be a file from Queue.Spool.
	SpoolPath string
	Size      int64
	Meta      Meta
}

// QueueStats is the queue's state for status pages and metrics.
// Its JSON keys are /status's style (snake_case, like every other section).
type QueueStats struct {
	Depth       int       `json:"depth"`         // ops not yet applied (including in flight)
	Oldest      time.Time `json:"oldest"`        // when the oldest pending op was enqueued; zero when empty. Lag = now - Oldest.
	Failures    uint64    `json:"failures"`      // failed attempts since the queue was opened
	LastError   string    `json:"last_error"`    // the most recent failure; empty if none
	LastErrorAt time.Time `json:"last_error_at"` // when it happened
	// Parked counts ops set aside in <dir>/failed because retrying cannot
	// help (their spooled body is missing or damaged). They need an
	// operator; each was logged at error level.
	Parked int `json:"parked"`
}

// Queue carries ops to a Target durably: an op is on disk (record and body
// fsynced) before Enqueue returns, survives a restart (the next OpenQueue on
// the same dir picks it up), is retried with capped exponential backoff while
// the target fails, and is never dropped silently. Ops on one key apply in
// the order they were enqueued, and a Delete (which removes a whole tree) is
// ordered with every op on keys under it; unrelated ops run concurrently.
//
// Layout of dir: ops/<seq>.json one record per pending op, spool/ bodies,
// failed/ parked ops, lock (one process at a time).
//
// Spool-file ownership: a file from Spool belongs to the caller until
// Enqueue returns nil; from then on the queue owns it and removes it once the
// op is applied. If Enqueue fails, the caller still owns it (remove it). Do
// never takes ownership: it only reads Op.SpoolPath.
type Queue struct {
	dir     string
	t       Target
	log     *slog.Logger
	workers int
	minWait time.Duration
	maxWait time.Duration
	lock    *os.File

	mu          sync.Mutex
	pending     *list.List // *entry in seq order
	nextSeq     uint64
	changed     chan struct{} // closed and replaced on every state change
	failures    uint64
	lastErr     string
	lastErrAt   time.Time
	consecutive int       // failures in a row, any op
	pauseUntil  time.Time // no new attempt before this while the target fails
	parked      int
}

type entry struct {
	seq      uint64
	op       Op
	enqueued time.Time
	record   string // ops/<seq>.json; empty for a Do placeholder
	durable  bool   // on disk; until then it only blocks later conflicting ops
	running  bool
	attempts int
	retryAt  time.Time
	elem     *list.Element
}

// QueueOption tunes a Queue.
type QueueOption func(*Queue)

// WithWorkers bounds how many ops are applied at once (default 4).
func WithWorkers(n int) QueueOption {
	return func(q *Queue) {
		if n > 0 {
			q.workers = n
		}
	}
}

// WithBackoff sets the first retry delay and its cap (default 500ms, 1m).
func WithBackoff(first, max time.Duration) QueueOption {
	return func(q *Queue) {
		if first > 0 {
			q.minWait = first
		}
		if max >= first {
			q.maxWait = max
		}
	}
}

// scanWindow bounds how far past the oldest pending op workers look for
// one they may start; conflicts are checked within it.
const scanWindow = 256

// OpenQueue opens (creating) the queue in dir and recovers the ops a
// previous process left there. log may be nil.
func OpenQueue(dir string, t Target, log *slog.Logger, opts ...QueueOption) (*Queue, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	q := &Queue{
		dir: dir, t: t, log: log,
		workers: 4, minWait: 500 * time.Millisecond, maxWait: time.Minute,
		pending: list.New(), nextSeq: 1, changed: make(chan struct{}),
	}
	for _, o := range opts {
		o(q)
	}
	for _, d := range []string{dir, q.path("ops"), q.path("spool"), q.path("failed")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("backup queue: %w", err)
		}
	}
	lf, err := lockFile(q.path("lock"))
	if err != nil {
		return nil, fmt.Errorf("backup queue %s: %w", dir, err)
	}
	q.lock = lf
	if err := q.recover(); err != nil {
		q.Close()
		return nil, err
	}
	return q, nil
}

func (q *Queue) path(elem ...string) string {
	return filepath.Join(append([]string{q.dir}, elem...)...)
}

// Dir is the queue's directory.
func (q *Queue) Dir() string { return q.dir }

// Close releases the queue's directory. Stop Run first.
func (q *Queue) Close() error {
	if q.lock == nil {
		return nil
	}
	err := q.lock.Close()
	q.lock = nil
	return err
}

// record is an op as stored in ops/<seq>.json.
type record struct {
	Seq      uint64    `json:"seq"`
	Kind     string    `json:"kind"`
	Key      string    `json:"key"`
	Spool    string    `json:"spool,omitempty"` // relative to the queue dir
	Size     int64     `json:"size"`
	Mode     uint32    `json:"mode"`
	ModTime  time.Time `json:"modtime"`
	Enqueued time.Time `json:"enqueued"`
}

func (q *Queue) recover() error {
	des, err := os.ReadDir(q.path("ops"))
	if err != nil {
		return fmt.Errorf("backup queue: read ops: %w", err)
	}
	sort.Slice(des, func(i, j int) bool { return des[i].Name() < des[j].Name() })
	referenced := map[string]bool{}
	for _, de := range des {
		name := de.Name()
		p := q.path("ops", name)
		if !strings.HasSuffix(name, ".json") {
			os.Remove(p) // a record whose write never completed: never acknowledged
			continue
		}
		e, err := q.load(p)
		if err != nil {
			q.park(p, "", fmt.Errorf("unreadable op record: %w", err)) // counted with failed/ below
			continue
		}
		if e.op.SpoolPath != "" {
			referenced[e.op.SpoolPath] = true
		}
		e.elem = q.pending.PushBack(e)
		q.nextSeq = max(q.nextSeq, e.seq+1)
	}
	// Bodies spooled by a process that stopped before Enqueue returned were
	// never acknowledged as queued.
	if des, err := os.ReadDir(q.path("spool")); err == nil {
		for _, de := range des {
			if p := q.path("spool", de.Name()); !referenced[p] {
				os.Remove(p)
			}
		}
	}
	if des, err := os.ReadDir(q.path("failed")); err == nil {
		for _, de := range des {
			if strings.HasSuffix(de.Name(), ".json") {
				q.parked++
			}
		}
	}
	if n := q.pending.Len(); n > 0 {
		q.log.Info("backup queue recovered pending ops", "ops", n, "dir", q.dir)
	}
	if q.parked > 0 {
		q.log.Error("backup queue holds parked ops that need an operator", "parked", q.parked, "dir", q.path("failed"))
	}
	return nil
}

func (q *Queue) load(p string) (*entry, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	op := Op{Key: r.Key, Size: r.Size, Meta: Meta{Mode: os.FileMode(r.Mode), ModTime: r.ModTime}}
	switch r.Kind {
	case "put":
		op.Kind = Put
	case "delete":
		op.Kind = Delete
	default:
		return nil, fmt.Errorf("unknown kind %q", r.Kind)
	}
	if r.Spool != "" {
		op.SpoolPath = q.path(filepath.FromSlash(r.Spool))
	}
	if err := checkKey(op.Key); err != nil {
		return nil, err
	}
	return &entry{seq: r.Seq, op: op, enqueued: r.Enqueued, record: p, durable: true}, nil
}

// Spool creates a file in the queue's directory for a body to be enqueued.
func (q *Queue) Spool() (*os.File, error) {
	f, err := os.CreateTemp(q.path("spool"), "body-*")
	if err != nil {
		return nil, fmt.Errorf("backup queue: spool: %w", err)
	}
	return f, nil
}

func validate(op *Op) error {
	if op.Kind != Put && op.Kind != Delete {
		return fmt.Errorf("backup: op kind %v", op.Kind)
	}
	if err := checkKey(op.Key); err != nil {
		return err
	}
	if op.Kind == Delete {
		return nil
	}
	if op.SpoolPath == "" {
		if op.Size != 0 {
			return fmt.Errorf("backup: put %s: %d bytes but no spool file", op.Key, op.Size)
		}
		return nil
	}
	fi, err := os.Stat(op.SpoolPath)
	if err != nil {
		return fmt.Errorf("backup: put %s: spool file: %w", op.Key, err)
	}
	if op.Size < 0 {
		op.Size = fi.Size()
	}
	if fi.Size() != op.Size {
		return fmt.Errorf("backup: put %s: spool file has %d bytes, op says %d", op.Key, fi.Size(), op.Size)
	}
	return nil
}

// Enqueue makes op durable and schedules it. For a Put, op.SpoolPath must
// come from Spool and hold the whole body (Size < 0 means the file's size);
// on success the queue owns the file.
func (q *Queue) Enqueue(op Op) error {
	if err := validate(&op); err != nil {
		return err
	}
	var rel string
	if op.SpoolPath != "" {
		abs, err := filepath.Abs(op.SpoolPath)
		if err != nil {
			return fmt.Errorf("backup: put %s: %w", op.Key, err)
		}
		spoolDir, _ := filepath.Abs(q.path("spool"))
		if filepath.Dir(abs) != spoolDir {
			return fmt.Errorf("backup: put %s: spool file %s is not from this queue's Spool", op.Key, op.SpoolPath)
		}
		op.SpoolPath = q.path("spool", filepath.Base(abs))
		rel = "spool/" + filepath.Base(abs)
		if err := syncFile(op.SpoolPath); err != nil {
			return fmt.Errorf("backup: put %s: sync spool file: %w", op.Key, err)
		}
		if err := syncDir(q.path("spool")); err != nil {
			return fmt.Errorf("backup: put %s: sync spool dir: %w", op.Key, err)
		}
	}

	// Take a place in line first, so a later op on the same key can't
	// overtake this one while its record is being written.
	q.mu.Lock()
	e := &entry{seq: q.nextSeq, op: op, enqueued: time.Now()}
	q.nextSeq++
	e.elem = q.pending.PushBack(e)
	q.mu.Unlock()

	p := q.path("ops", fmt.Sprintf("%020d.json", e.seq))
	err := writeRecord(p, record{
		Seq: e.seq, Kind: op.Kind.String(), Key: op.Key, Spool: rel, Size: op.Size,
		Mode: uint32(op.Meta.Mode), ModTime: op.Meta.ModTime, Enqueued: e.enqueued,
	})

	q.mu.Lock()
	defer q.mu.Unlock()
	if err != nil {
		q.pending.Remove(e.elem)
		q.notifyLocked()
		return fmt.Errorf("backup queue: record %s %s: %w", op.Kind, op.Key, err)
	}
	e.record, e.durable = p, true
	q.notifyLocked()
	return nil
}

// writeRecord writes r to p atomically and durably.
func writeRecord(p string, r record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp := p + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(p))
}

func syncFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func (q *Queue) notifyLocked() {
	close(q.changed)
	q.changed = make(chan struct{})
}

// Run applies pending ops with bounded concurrency until ctx ends. Ops in
// flight when it ends stay queued.
func (q *Queue) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for range q.workers {
		wg.Go(func() { q.work(ctx) })
	}
	wg.Wait()
	return nil
}

func (q *Queue) work(ctx context.Context) {
	for {
		q.mu.Lock()
		e, wait := q.nextLocked(time.Now())
		changed := q.changed
		q.mu.Unlock()
		if e == nil {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-changed:
			case <-t.C:
			}
			t.Stop()
			continue
		}
		err := q.apply(ctx, e)
		if err != nil && ctx.Err() != nil {
			q.mu.Lock()
			e.running = false
			q.notifyLocked()
			q.mu.Unlock()
			return
		}
		q.finish(e, err)
	}
}

// nextLocked picks the oldest op that may start now: durable, not running,
// not waiting for a retry, and with no earlier pending op it must follow.
// Otherwise it says how long to wait at most before looking again.
func (q *Queue) nextLocked(now time.Time) (*entry, time.Duration) {
	if now.Before(q.pauseUntil) {
		return nil, q.pauseUntil.Sub(now)
	}
	wait := time.Minute
	keys := map[string]bool{}      // keys of earlier ops
	ancestors := map[string]bool{} // directories holding earlier ops' keys
	deletes := map[string]bool{}   // keys of earlier deletes
	n := 0
	for el := q.pending.Front(); el != nil && n < scanWindow; el = el.Next() {
		n++
		e := el.Value.(*entry)
		k := e.op.Key
		blocked := keys[k] || (e.op.Kind == Delete && ancestors[k])
		for d := parentKey(k); d != "" && !blocked; d = parentKey(d) {
			blocked = deletes[d]
		}
		if !blocked && e.durable && !e.running {
			if !now.Before(e.retryAt) {
				e.running = true
				return e, 0
			}
			wait = min(wait, e.retryAt.Sub(now))
		}
		keys[k] = true
		if e.op.Kind == Delete {
			deletes[k] = true
		}
		for d := parentKey(k); d != "" && !ancestors[d]; d = parentKey(d) {
			ancestors[d] = true
		}
	}
	return nil, wait
}

func parentKey(k string) string {
	if i := strings.LastIndex(k, "/"); i > 0 {
		return k[:i]
	}
	return ""
}

// conflicts: a and b must apply in order (same key, or one deletes a tree
// holding the other).
func conflicts(a, b Op) bool {
	return a.Key == b.Key || a.Kind == Delete && under(b.Key, a.Key) || b.Kind == Delete && under(a.Key, b.Key)
}

// errPermanent marks failures retrying cannot fix.
type errPermanent struct{ err error }

func (e errPermanent) Error() string { return e.err.Error() }
func (e errPermanent) Unwrap() error { return e.err }

// opTimeout bounds one attempt: generous, but a hung target can't hold an
// op (and its key) forever.
func opTimeout(size int64) time.Duration {
	return 2*time.Minute + time.Duration(size/(256<<10))*time.Second
}

// apply performs op against the target once.
func (q *Queue) apply(ctx context.Context, e *entry) error {
	return applyOp(ctx, q.t, e.op)
}

func applyOp(ctx context.Context, t Target, op Op) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout(op.Size))
	defer cancel()
	switch op.Kind {
	case Delete:
		return t.Delete(ctx, op.Key)
	case Put:
		var body io.Reader = strings.NewReader("")
		if op.SpoolPath != "" {
			f, err := os.Open(op.SpoolPath)
			if err != nil {
				return errPermanent{fmt.Errorf("put %s: spooled body: %w", op.Key, err)}
			}
			defer f.Close()
			fi, err := f.Stat()
			if err != nil {
				return fmt.Errorf("put %s: spooled body: %w", op.Key, err)
			}
			if fi.Size() != op.Size {
				return errPermanent{fmt.Errorf("put %s: spooled body has %d bytes, want %d", op.Key, fi.Size(), op.Size)}
			}
			body = f
		}
		return t.Put(ctx, op.Key, body, op.Size, op.Meta)
	}
	return errPermanent{fmt.Errorf("unknown op kind %v", op.Kind)}
}

// finish records the outcome of one attempt at e.
func (q *Queue) finish(e *entry, err error) {
	if err == nil {
		// The record's removal is durable before any later op on the key
		// can start, so a restart can never replay an older op over a
		// newer one.
		if rerr := os.Remove(e.record); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			q.log.Error("backup queue: remove applied op record", "key", e.op.Key, "err", rerr)
		} else if serr := syncDir(q.path("ops")); serr != nil {
			q.log.Error("backup queue: sync ops dir", "err", serr)
		}
		if e.op.SpoolPath != "" {
			os.Remove(e.op.SpoolPath)
		}
		q.mu.Lock()
		q.pending.Remove(e.elem)
		q.consecutive, q.pauseUntil = 0, time.Time{}
		q.notifyLocked()
		q.mu.Unlock()
		q.log.Debug("backup applied", "op", e.op.Kind.String(), "key", e.op.Key, "bytes", e.op.Size, "attempts", e.attempts+1)
		return
	}
	now := time.Now()
	var perm errPermanent
	if errors.As(err, &perm) {
		q.park(e.record, e.op.SpoolPath, err)
		q.mu.Lock()
		q.pending.Remove(e.elem)
		q.parked++
		q.failures++
		q.lastErr, q.lastErrAt = err.Error(), now
		q.notifyLocked()
		q.mu.Unlock()
		return
	}
	q.mu.Lock()
	e.running = false
	e.attempts++
	e.retryAt = now.Add(q.backoff(e.attempts))
	q.consecutive++
	q.pauseUntil = now.Add(q.backoff(q.consecutive))
	q.failures++
	q.lastErr, q.lastErrAt = err.Error(), now
	attempts, lag := e.attempts, now.Sub(e.enqueued)
	q.notifyLocked()
	q.mu.Unlock()
	q.log.Warn("backup failed, will retry", "op", e.op.Kind.String(), "key", e.op.Key, "attempts", attempts,
		"retry_in", e.retryAt.Sub(now).Round(time.Millisecond), "lag", lag.Round(time.Second), "err", err)
}

// backoff is the delay after n failures: exponential, capped, with jitter
// so many proxies don't retry in step.
func (q *Queue) backoff(n int) time.Duration {
	d := q.minWait
	for i := 1; i < n && d < q.maxWait; i++ {
		d *= 2
	}
	d = min(d, q.maxWait)
	return d - time.Duration(rand.Int64N(int64(d)/10+1))
}

// park moves an op that can never succeed to failed/ with its body, and says
// so loudly: an operator decides what to do with it. The caller counts it,
// under q.mu with the rest of the op's bookkeeping, so stats never show it
// parked and still pending.
func (q *Queue) park(recordPath, spool string, cause error) {
	// Sequence numbers restart once the queue empties: a suffix keeps an
	// older parked op from being overwritten.
	stamp := strconv.FormatInt(time.Now().UnixNano(), 10)
	dst := q.path("failed", strings.TrimSuffix(filepath.Base(recordPath), ".json")+"-"+stamp+".json")
	if err := os.Rename(recordPath, dst); err != nil {
		q.log.Error("backup queue: park op", "record", recordPath, "err", err)
	}
	if spool != "" {
		os.Rename(spool, q.path("failed", filepath.Base(spool)+"-"+stamp))
	}
	_ = syncDir(q.path("ops"))
	q.log.Error("backup op parked: it cannot be applied and needs an operator", "record", dst, "err", cause)
}

// Do applies op now, for synchronous backups. Earlier queued ops it must
// follow (same key, or a delete of a tree holding it) are applied first,
// here, whether Run is running or not; while Do runs, later queued ops on the
// key wait for it. Do only reads op.SpoolPath: the caller keeps ownership of
// the file (and may Enqueue it after a failure).
func (q *Queue) Do(ctx context.Context, op Op) error {
	if err := validate(&op); err != nil {
		return err
	}
	q.mu.Lock()
	me := &entry{seq: q.nextSeq, op: op, enqueued: time.Now()}
	q.nextSeq++
	me.elem = q.pending.PushBack(me)
	q.mu.Unlock()
	defer func() {
		q.mu.Lock()
		q.pending.Remove(me.elem)
		q.notifyLocked()
		q.mu.Unlock()
	}()
	for {
		q.mu.Lock()
		var first *entry
		for el := q.pending.Front(); el != me.elem; el = el.Next() {
			if e := el.Value.(*entry); conflicts(e.op, op) {
				first = e
				break
			}
		}
		changed := q.changed
		claim := first != nil && first.durable && !first.running
		if claim {
			first.running = true
		}
		q.mu.Unlock()
		switch {
		case first == nil:
			return applyOp(ctx, q.t, op)
		case claim:
			err := q.apply(ctx, first)
			if err != nil && ctx.Err() != nil {
				q.mu.Lock()
				first.running = false
				q.notifyLocked()
				q.mu.Unlock()
				return fmt.Errorf("backup %s %s: %w", op.Kind, op.Key, ctx.Err())
			}
			q.finish(first, err)
			var perm errPermanent
			if err != nil && !errors.As(err, &perm) {
				return fmt.Errorf("backup %s %s: an earlier queued %s of %s failed: %w", op.Kind, op.Key, first.op.Kind, first.op.Key, err)
			}
		default:
			select {
			case <-ctx.Done():
				return fmt.Errorf("backup %s %s: waiting for earlier queued ops: %w", op.Kind, op.Key, ctx.Err())
			case <-changed:
			}
		}
	}
}

// Stats reports the queue's depth, lag and failures.
func (q *Queue) Stats() QueueStats {
	q.mu.Lock()
	defer q.mu.Unlock()
	s := QueueStats{Failures: q.failures, LastError: q.lastErr, LastErrorAt: q.lastErrAt, Parked: q.parked}
	for el := q.pending.Front(); el != nil; el = el.Next() {
		e := el.Value.(*entry)
		if !e.durable {
			continue // a Do in progress, or a record being written
		}
		s.Depth++
		if s.Oldest.IsZero() || e.enqueued.Before(s.Oldest) {
			s.Oldest = e.enqueued
		}
	}
	return s
}
