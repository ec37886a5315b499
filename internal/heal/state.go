package heal

import (
	"bufio"
	"container/heap"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cring-dev/cring/internal/clusterstate"
	"github.com/cring-dev/cring/internal/tombstone"
)

// state is the healer's durable memory under the data dir: the users it has
// seen (so the scan knows whose files to walk) and the hints it owes (so a
// restart doesn't forget a missed replica). Both are append-only JSON-lines
// logs. The hint log is group-committed by one flusher goroutine (writers
// wait for the fsync of the batch their record is in, never under a lock a
// request takes) and compacted online, while it keeps taking records.
//
// Hints are indexed by node, then by (user, directory): replay takes the
// due batches of the nodes that are up from a per-node heap, and a lookup
// (reads ask one per key) is a few map reads. A node owed more than limit
// hints is marked for a full scan instead (docs/design.md, "Hints and
// repairs"): its hints are dropped, and it is owed everything until a scan
// that started after the mark has read it for every user.
type state struct {
	dir   string
	limit int // hints per node before the node is marked for a full scan

	umu      sync.RWMutex
	users    map[string]bool
	usersLog *os.File

	mu      sync.RWMutex // the hint index
	nodes   map[string]*nodeHints
	perUser map[string]int // user+"\x00"+node → pending hints
	total   int
	seq     uint64 // bumped by every hint recorded (see settle)

	// The hint log. logMu guards what writers hand the flusher; it is taken
	// under mu (records are queued in the order the index changed) and held
	// only to append bytes.
	logMu    sync.Mutex
	logBuf   []byte
	logLines int
	logCur   *flush // the flush logBuf's records will be in
	closed   bool
	kick     chan struct{}
	quit     chan struct{}
	flushed  chan struct{}
	hintPath string

	// flusher goroutine only
	logF       *os.File
	logWritten int  // records in logF
	logTorn    bool // the last write failed
	cmp        *compaction
	cmpSlack   int          // records a log may hold beyond 2x the live hints before it is compacted
	flushes    atomic.Int64 // group commits done (tests)

	vmu      sync.Mutex
	verified map[string]uint64 // key → fingerprint of replicas last confirmed identical

	// With a shared store (share): the batches holding a hint not yet
	// published to it (mu guards it). A published hint leaves the log.
	sharing bool
	unpub   map[*batch]bool
}

// DefaultHintLimit is the hints a node may be owed before it is marked for a
// full scan instead (about 1.5 h of missed writes at 375 writes/s; each
// pending hint costs the proxy 130-200 bytes of memory, by its path's length,
// and ~200 bytes of log).
const DefaultHintLimit = 2_000_000

// hint: node (by name: indexes change with membership) is owed path of user.
type hint struct {
	User string `json:"user"`
	Path string `json:"path"`
	Node string `json:"node"`
}

type hintRecord struct {
	hint
	Done bool      `json:"done,omitempty"`
	Mark string    `json:"mark,omitempty"` // markFull, markScanned: Node only
	At   time.Time `json:"at"`
}

const (
	markFull    = "full-scan"    // the node's hints were dropped: owed everything until a full scan
	markScanned = "full-scanned" // a full scan covered it
)

// batchKey names the hints of one node in one directory of one user.
type batchKey struct{ user, dir string }

// batch is the hints of one node in one directory: replayed together from
// one listing of the directory.
type batch struct {
	batchKey
	node     string
	names    map[string]uint64 // file name → seq of its latest hint
	oldest   time.Time
	next     time.Time // next attempt
	backoff  time.Duration
	reserved bool // cring's own files: replayed after clients' keys
	inflight bool // taken by replay, not in the heap
	idx      int  // position in the node's heap; -1 when not in it
}

type nodeHints struct {
	count   int
	batches map[batchKey]*batch
	due     batchHeap
	full    time.Time // marked for a full scan at (zero: not)
}

// batchHeap orders a node's batches by next attempt; clients' keys before
// cring's own, then the oldest first.
type batchHeap []*batch

func (q batchHeap) Len() int { return len(q) }
func (q batchHeap) Less(a, b int) bool {
	x, y := q[a], q[b]
	if !x.next.Equal(y.next) {
		return x.next.Before(y.next)
	}
	if x.reserved != y.reserved {
		return !x.reserved
	}
	return x.oldest.Before(y.oldest)
}
func (q batchHeap) Swap(a, b int) { q[a], q[b] = q[b], q[a]; q[a].idx = a; q[b].idx = b }
func (q *batchHeap) Push(x any)   { b := x.(*batch); b.idx = len(*q); *q = append(*q, b) }
func (q *batchHeap) Pop() any {
	old := *q
	b := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	b.idx = -1
	return b
}

// flush is one group commit: closed once its records are fsynced.
type flush struct {
	done chan struct{}
	err  error
}

func newFlush() *flush { return &flush{done: make(chan struct{})} }

// openState opens the state under dir; limit is the hints per node before
// a full scan [DefaultHintLimit], slack the records a hint log may hold
// beyond twice the live hints before it is compacted [100,000].
func openState(dir string, limit, slack int) (*state, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("heal state dir: %w", err)
	}
	if limit <= 0 {
		limit = DefaultHintLimit
	}
	if slack <= 0 {
		slack = 100_000
	}
	s := &state{
		dir: dir, limit: limit, users: map[string]bool{},
		nodes: map[string]*nodeHints{}, perUser: map[string]int{}, verified: map[string]uint64{},
		logCur: newFlush(), kick: make(chan struct{}, 1), quit: make(chan struct{}), flushed: make(chan struct{}),
		hintPath: filepath.Join(dir, "hints"), cmpSlack: slack,
	}
	if err := s.loadUsers(); err != nil {
		return nil, err
	}
	if err := s.loadHints(); err != nil {
		s.usersLog.Close()
		return nil, err
	}
	go s.flushLoop()
	return s, nil
}

func (s *state) loadUsers() error {
	p := filepath.Join(s.dir, "users")
	if err := readLines(p, func(b []byte) { s.users[string(b)] = true }); err != nil {
		return fmt.Errorf("read users: %w", err)
	}
	var lines [][]byte
	for u := range s.users {
		lines = append(lines, []byte(u))
	}
	f, err := rewrite(p, lines)
	if err != nil {
		return fmt.Errorf("compact users: %w", err)
	}
	s.usersLog = f
	return nil
}

func (s *state) loadHints() error {
	err := readLines(s.hintPath, func(b []byte) {
		var r hintRecord
		if json.Unmarshal(b, &r) != nil {
			return // a torn last line after a crash
		}
		s.apply(r)
	})
	if err != nil {
		return fmt.Errorf("read hints: %w", err)
	}
	lines := s.snapshotLines()
	f, err := rewrite(s.hintPath, lines)
	if err != nil {
		return fmt.Errorf("compact hints: %w", err)
	}
	s.logF, s.logWritten = f, len(lines)
	return nil
}

// apply replays one log record into the index (at load).
func (s *state) apply(r hintRecord) {
	switch {
	case r.Mark == markFull:
		s.dropNode(r.Node, r.At)
	case r.Mark == markScanned:
		if nh := s.nodes[r.Node]; nh != nil && !nh.full.After(r.At) {
			nh.full = time.Time{}
		}
	case r.Done:
		s.remove(r.hint)
	default:
		s.insert(r.hint, r.At)
	}
}

// snapshotLines is the whole index as log records (at load, nothing else
// runs).
func (s *state) snapshotLines() [][]byte {
	var lines [][]byte
	for name, nh := range s.nodes {
		if !nh.full.IsZero() {
			b, _ := json.Marshal(hintRecord{hint: hint{Node: name}, Mark: markFull, At: nh.full})
			lines = append(lines, b)
		}
		for _, b := range nh.batches {
			lines = b.appendLines(lines)
		}
	}
	return lines
}

func (b *batch) appendLines(lines [][]byte) [][]byte {
	for name := range b.names {
		r, _ := json.Marshal(hintRecord{hint: hint{User: b.user, Path: joinKey(b.dir, name), Node: b.node}, At: b.oldest})
		lines = append(lines, r)
	}
	return lines
}

func readLines(p string, each func([]byte)) error {
	f, err := os.Open(p)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if len(sc.Bytes()) > 0 {
			each(append([]byte(nil), sc.Bytes()...))
		}
	}
	return sc.Err()
}

// rewrite atomically replaces p with lines and returns it open for appends.
func rewrite(p string, lines [][]byte) (*os.File, error) {
	tmp := p + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	w := bufio.NewWriter(f)
	for _, l := range lines {
		w.Write(l)
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, err
	}
	f.Close()
	if err := os.Rename(tmp, p); err != nil {
		return nil, err
	}
	syncDir(filepath.Dir(p))
	return os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0o600)
}

// syncDir makes a rename in dir durable (best effort: not every file
// system can sync a directory).
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// addUser records a user; true when new.
func (s *state) addUser(u string) (bool, error) {
	s.umu.RLock()
	known := s.users[u]
	s.umu.RUnlock()
	if known {
		return false, nil
	}
	s.umu.Lock()
	defer s.umu.Unlock()
	if s.users[u] {
		return false, nil
	}
	s.users[u] = true
	if _, err := s.usersLog.WriteString(u + "\n"); err != nil {
		return true, fmt.Errorf("record user: %w", err)
	}
	return true, nil
}

func (s *state) userList() []string {
	s.umu.RLock()
	defer s.umu.RUnlock()
	out := make([]string, 0, len(s.users))
	for u := range s.users {
		out = append(out, u)
	}
	sort.Strings(out)
	return out
}

func (s *state) userCount() int {
	s.umu.RLock()
	defer s.umu.RUnlock()
	return len(s.users)
}

// splitKey splits a path into the directory its hints are batched by and
// the name in it.
func splitKey(p string) (dir, name string) {
	dir, name = path.Split(p)
	return strings.TrimSuffix(dir, "/"), name
}

func joinKey(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

func (s *state) node(name string) *nodeHints {
	nh := s.nodes[name]
	if nh == nil {
		nh = &nodeHints{batches: map[batchKey]*batch{}}
		s.nodes[name] = nh
	}
	return nh
}

// insert puts a hint in the index (mu held); true when it was not there.
func (s *state) insert(h hint, at time.Time) bool {
	dir, name := splitKey(h.Path)
	nh := s.node(h.Node)
	k := batchKey{h.User, dir}
	b := nh.batches[k]
	if b == nil {
		b = &batch{batchKey: k, node: h.Node, names: map[string]uint64{}, oldest: at, idx: -1,
			reserved: tombstone.Reserved(dir)}
		nh.batches[k] = b
		heap.Push(&nh.due, b)
	}
	if s.sharing {
		s.unpub[b] = true
	}
	s.seq++
	_, had := b.names[name]
	b.names[name] = s.seq
	if had {
		return false
	}
	nh.count++
	s.total++
	s.perUser[h.User+"\x00"+h.Node]++
	return true
}

// remove takes a hint out of the index (mu held); true when it was there.
func (s *state) remove(h hint) bool {
	dir, name := splitKey(h.Path)
	nh := s.nodes[h.Node]
	if nh == nil {
		return false
	}
	b := nh.batches[batchKey{h.User, dir}]
	if b == nil {
		return false
	}
	if _, ok := b.names[name]; !ok {
		return false
	}
	delete(b.names, name)
	s.uncount(nh, h.User, h.Node, 1)
	if len(b.names) == 0 && !b.inflight {
		s.dropBatch(nh, b)
	}
	return true
}

func (s *state) uncount(nh *nodeHints, user, node string, n int) {
	nh.count -= n
	s.total -= n
	if k := user + "\x00" + node; s.perUser[k] <= n {
		delete(s.perUser, k)
	} else {
		s.perUser[k] -= n
	}
}

func (s *state) dropBatch(nh *nodeHints, b *batch) {
	delete(s.unpub, b)
	if nh.batches[b.batchKey] == b {
		delete(nh.batches, b.batchKey)
	}
	if b.idx >= 0 {
		heap.Remove(&nh.due, b.idx)
	}
}

// dropNode forgets every hint of a node and marks it for a full scan (mu
// held). Batches replay holds are left to it: settling them finds nothing.
func (s *state) dropNode(node string, at time.Time) {
	nh := s.node(node)
	for _, b := range nh.batches {
		s.uncount(nh, b.user, node, len(b.names))
		delete(s.unpub, b)
	}
	s.nodes[node] = &nodeHints{batches: map[batchKey]*batch{}, full: at}
}

// queue hands a record to the flusher (mu held, so records are logged in
// the order the index changed) and returns the flush it will be in.
func (s *state) queue(r hintRecord) (*flush, error) {
	b, _ := json.Marshal(r)
	s.logMu.Lock()
	defer s.logMu.Unlock()
	if s.closed {
		return nil, errors.New("hint log closed")
	}
	s.logBuf = append(append(s.logBuf, b...), '\n')
	s.logLines++
	select {
	case s.kick <- struct{}{}:
	default:
	}
	return s.logCur, nil
}

// addHint records durably that node is owed path: it returns once the
// record is fsynced (group commit: one fsync for every hint recorded
// meanwhile), without holding any lock while it waits.
func (s *state) addHint(h hint) error {
	now := time.Now()
	s.mu.Lock()
	var marked *flush
	if nh := s.nodes[h.Node]; nh != nil && nh.count >= s.limit && !s.has(nh, h) {
		// Past the hint limit: a full scan repairs the node instead of
		// replaying its hints one by one.
		s.dropNode(h.Node, now)
		var err error
		if marked, err = s.queue(hintRecord{hint: hint{Node: h.Node}, Mark: markFull, At: now}); err != nil {
			s.mu.Unlock()
			return fmt.Errorf("record hint: %w", err)
		}
	}
	s.insert(h, now)
	f, err := s.queue(hintRecord{hint: h, At: now})
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("record hint: %w", err)
	}
	if marked != nil && marked != f {
		<-marked.done
	}
	<-f.done
	if f.err != nil {
		return fmt.Errorf("record hint: %w", f.err)
	}
	return nil
}

func (s *state) has(nh *nodeHints, h hint) bool {
	dir, name := splitKey(h.Path)
	b := nh.batches[batchKey{h.User, dir}]
	if b == nil {
		return false
	}
	_, ok := b.names[name]
	return ok
}

// owed reports whether node may lack the latest state of path: a hint is
// pending, or the node is marked for a full scan.
func (s *state) owed(h hint) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	nh := s.nodes[h.Node]
	if nh == nil {
		return false
	}
	return !nh.full.IsZero() || s.has(nh, h)
}

func (s *state) owesUser(user, node string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if nh := s.nodes[node]; nh != nil && !nh.full.IsZero() {
		return true
	}
	return s.perUser[user+"\x00"+node] > 0
}

// hintedNodes lists the nodes with a pending hint for path.
func (s *state) hintedNodes(user, p string) []string {
	dir, name := splitKey(p)
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []string
	for node, nh := range s.nodes {
		if b := nh.batches[batchKey{user, dir}]; b != nil {
			if _, ok := b.names[name]; ok {
				out = append(out, node)
			}
		}
	}
	return out
}

// seqNow is the sequence number of the latest hint recorded: hints
// recorded later are not settled by what was read after this.
func (s *state) seqNow() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.seq
}

// dueBatch is one batch taken for replay: the names it held when taken.
// It is this proxy's (b) or claimed from the shared store (claim).
type dueBatch struct {
	b     *batch
	names []string

	claim   *clusterstate.Batch
	mu      sync.Mutex
	settled []string // the claim's names repaired on its node
}

func (d *dueBatch) key() batchKey {
	if d.b != nil {
		return d.b.batchKey
	}
	return batchKey{d.claim.User, d.claim.Dir}
}

func (d *dueBatch) node() string {
	if d.b != nil {
		return d.b.node
	}
	return d.claim.Node
}

func (d *dueBatch) oldest() time.Time {
	if d.b != nil {
		return d.b.oldest
	}
	return d.claim.Oldest
}

// settle notes that the claim's hint for name is repaired.
func (d *dueBatch) settle(name string) {
	d.mu.Lock()
	d.settled = append(d.settled, name)
	d.mu.Unlock()
}

// takeDue takes, for every node up(node) says is up, the batches whose
// next attempt has come, with at most most of each one's names; each stays
// in the index (reads still see its hints) but out of its heap until
// release. The lock is held to pop the heaps, then once per batch to copy
// its names, so reads never wait for a copy of every hint.
func (s *state) takeDue(up func(node string) bool, now time.Time, most int) []*dueBatch {
	var out []*dueBatch
	s.mu.Lock()
	for node, nh := range s.nodes {
		if len(nh.due) == 0 || nh.due[0].next.After(now) || !up(node) {
			continue
		}
		for len(nh.due) > 0 && !nh.due[0].next.After(now) {
			b := heap.Pop(&nh.due).(*batch)
			b.inflight = true
			out = append(out, &dueBatch{b: b})
		}
	}
	s.mu.Unlock()
	for _, d := range out {
		s.mu.RLock()
		d.names = make([]string, 0, min(len(d.b.names), most))
		for n := range d.b.names {
			if len(d.names) == most {
				break
			}
			d.names = append(d.names, n)
		}
		s.mu.RUnlock()
	}
	return out
}

// settle removes node's hint for path if it was recorded no later than
// seq (a hint recorded since may be for a write the repair did not see).
func (s *state) settle(node, user, p string, seq uint64) bool {
	dir, name := splitKey(p)
	s.mu.Lock()
	defer s.mu.Unlock()
	nh := s.nodes[node]
	if nh == nil {
		return false
	}
	b := nh.batches[batchKey{user, dir}]
	if b == nil {
		return false
	}
	if got, ok := b.names[name]; !ok || got > seq {
		return false
	}
	delete(b.names, name)
	s.uncount(nh, user, node, 1)
	if len(b.names) == 0 && !b.inflight {
		s.dropBatch(nh, b)
	}
	// Not waited for: losing it only replays a hint.
	_, _ = s.queue(hintRecord{hint: hint{User: user, Path: p, Node: node}, Done: true, At: time.Now()})
	return true
}

// release puts a batch taken by takeDue back: gone when empty, due again at
// once when hints arrived meanwhile, after its backoff when some failed.
func (s *state) release(d *dueBatch, failed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := d.b
	b.inflight = false
	nh := s.nodes[b.node]
	if nh == nil || nh.batches[b.batchKey] != b {
		return // dropped meanwhile (the node passed the hint limit)
	}
	if len(b.names) == 0 {
		s.dropBatch(nh, b)
		return
	}
	if failed {
		b.backoff = min(max(2*b.backoff, time.Second), clusterstate.MaxBackoff)
		b.next = time.Now().Add(b.backoff)
	} else {
		b.backoff = 0
		b.next = time.Time{}
	}
	heap.Push(&nh.due, b)
}

// retryAllNow makes every batch due at once (backoffs are kept): a walk of
// the batches, not the hints, when a node comes back.
func (s *state) retryAllNow() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, nh := range s.nodes {
		for _, b := range nh.due {
			b.next = time.Time{}
		}
		heap.Init(&nh.due)
	}
}

func (s *state) hintCounts() map[string]int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := map[string]int{}
	for node, nh := range s.nodes {
		if nh.count > 0 {
			out[node] = nh.count
		}
	}
	return out
}

// fullScanOwed lists the nodes marked for a full scan, and since when.
func (s *state) fullScanOwed() map[string]time.Time {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := map[string]time.Time{}
	for node, nh := range s.nodes {
		if !nh.full.IsZero() {
			out[node] = nh.full
		}
	}
	return out
}

// scanned clears node's full-scan mark when a scan that started at started
// (after the mark) read it for every user.
func (s *state) scanned(node string, started time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	nh := s.nodes[node]
	if nh == nil || nh.full.IsZero() || !started.After(nh.full) {
		return
	}
	nh.full = time.Time{}
	_, _ = s.queue(hintRecord{hint: hint{Node: node}, Mark: markScanned, At: started})
}

// share makes the log the fast path in front of a shared store: every hint
// it holds is to be published (called once, before the healer runs).
func (s *state) share() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sharing = true
	s.unpub = map[*batch]bool{}
	for _, nh := range s.nodes {
		for _, b := range nh.batches {
			s.unpub[b] = true
		}
	}
}

// pubHint is a hint handed to the publisher, with the seq it had then.
type pubHint struct {
	hint
	dir, name string
	seq       uint64
	at        time.Time
}

// takeUnpublished copies up to most hints not yet published (batches
// replay holds are left for later), and the nodes' full-scan marks.
func (s *state) takeUnpublished(most int) ([]pubHint, map[string]time.Time) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []pubHint
	marks := map[string]time.Time{}
	for node, nh := range s.nodes {
		if !nh.full.IsZero() {
			marks[node] = nh.full
		}
	}
	for b := range s.unpub {
		if b.inflight {
			continue
		}
		for name, seq := range b.names {
			if len(out) == most {
				return out, marks
			}
			out = append(out, pubHint{hint: hint{User: b.user, Path: joinKey(b.dir, name), Node: b.node},
				dir: b.dir, name: name, seq: seq, at: b.oldest})
		}
	}
	return out, marks
}

// published drops from the log the hints (and full-scan marks) the shared
// store now holds, unless recorded again since they were taken: those are
// published again.
func (s *state) published(hs []pubHint, marks map[string]time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	for _, h := range hs {
		nh := s.nodes[h.Node]
		if nh == nil {
			continue
		}
		b := nh.batches[batchKey{h.User, h.dir}]
		if b == nil {
			continue
		}
		if got, ok := b.names[h.name]; !ok || got != h.seq {
			continue
		}
		delete(b.names, h.name)
		s.uncount(nh, h.User, h.Node, 1)
		// Not waited for: losing it only publishes the hint again.
		_, _ = s.queue(hintRecord{hint: h.hint, Done: true, At: now})
		if len(b.names) == 0 {
			delete(s.unpub, b)
			if !b.inflight {
				s.dropBatch(nh, b)
			}
		}
	}
	for node, at := range marks {
		if nh := s.nodes[node]; nh != nil && nh.full.Equal(at) {
			nh.full = time.Time{}
			_, _ = s.queue(hintRecord{hint: hint{Node: node}, Mark: markScanned, At: at})
		}
	}
}

// maxVerified bounds the memory of confirmed keys; past it the set starts
// over (those keys are just compared again by the next scan).
const maxVerified = 1 << 20

func (s *state) setVerified(key string, fp uint64) {
	s.vmu.Lock()
	if len(s.verified) >= maxVerified {
		clear(s.verified)
	}
	s.verified[key] = fp
	s.vmu.Unlock()
}

func (s *state) isVerified(key string, fp uint64) bool {
	s.vmu.Lock()
	defer s.vmu.Unlock()
	return s.verified[key] == fp && fp != 0
}

// close flushes what is queued and stops the flusher.
func (s *state) close() {
	s.logMu.Lock()
	if s.closed {
		s.logMu.Unlock()
		return
	}
	s.closed = true
	s.logMu.Unlock()
	close(s.quit)
	<-s.flushed
	s.umu.Lock()
	s.usersLog.Close()
	s.umu.Unlock()
}

// flushLoop is the hint log's only writer: it writes and fsyncs what
// writers queued (every record queued while one fsync runs goes in the
// next), and compacts the log in steps between flushes once it holds much
// more than the live hints.
func (s *state) flushLoop() {
	defer close(s.flushed)
	defer func() {
		if s.cmp != nil {
			s.cmp.abort()
		}
		s.logF.Close()
	}()
	for {
		if s.cmp == nil && s.needCompact() {
			s.startCompact()
		}
		if s.cmp != nil {
			select {
			case <-s.quit:
				s.flushOnce()
				return
			default:
			}
			s.flushOnce()
			s.compactStep()
			continue
		}
		select {
		case <-s.kick:
			s.flushOnce()
		case <-s.quit:
			s.flushOnce()
			return
		}
	}
}

func (s *state) flushOnce() {
	s.logMu.Lock()
	buf, n, f := s.logBuf, s.logLines, s.logCur
	if n == 0 {
		s.logMu.Unlock()
		return
	}
	s.logBuf, s.logLines, s.logCur = nil, 0, newFlush()
	s.logMu.Unlock()
	if s.logTorn {
		// End the line a failed write may have left half written, or
		// the next record would be lost with it.
		buf = append([]byte{'\n'}, buf...)
	}
	_, err := s.logF.Write(buf)
	if err == nil {
		err = s.logF.Sync()
	}
	s.logTorn = err != nil
	s.flushes.Add(1)
	s.logWritten += n
	if s.cmp != nil {
		s.cmp.tail = append(s.cmp.tail, buf...)
		s.cmp.tailLines += n
	}
	f.err = err
	close(f.done)
}

func (s *state) needCompact() bool {
	s.mu.RLock()
	live := s.total
	s.mu.RUnlock()
	return s.logWritten > 2*live+s.cmpSlack
}

// compaction rewrites the hint log while it keeps taking records: the
// index is written batch by batch (each under a read lock, so a batch may
// already show later changes), then every record flushed since the start
// (the tail). Records are idempotent (add, done, drop a node), so replaying
// the tail over a snapshot that saw some of it gives the index again.
type compaction struct {
	f         *os.File
	w         *bufio.Writer
	todo      []*batch
	nodes     map[*batch]*nodeHints
	lines     int
	tail      []byte
	tailLines int
}

func (s *state) startCompact() {
	f, err := os.OpenFile(s.hintPath+".tmp", os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		s.cmpSlack *= 2 // try again once the log is twice as long
		return
	}
	c := &compaction{f: f, w: bufio.NewWriterSize(f, 256<<10), nodes: map[*batch]*nodeHints{}}
	s.mu.RLock()
	for name, nh := range s.nodes {
		if !nh.full.IsZero() {
			b, _ := json.Marshal(hintRecord{hint: hint{Node: name}, Mark: markFull, At: nh.full})
			c.w.Write(append(b, '\n'))
			c.lines++
		}
		for _, b := range nh.batches {
			c.todo = append(c.todo, b)
			c.nodes[b] = nh
		}
	}
	s.mu.RUnlock()
	s.cmp = c
}

// compactStep writes some batches of the snapshot; when all are written it
// adds the tail and puts the new log in place.
func (s *state) compactStep() {
	c := s.cmp
	var lines [][]byte
	s.mu.RLock()
	for len(c.todo) > 0 && len(lines) < 20_000 {
		b := c.todo[0]
		c.todo = c.todo[1:]
		if nh := c.nodes[b]; s.nodes[b.node] == nh && nh.batches[b.batchKey] == b {
			lines = b.appendLines(lines)
		}
		delete(c.nodes, b)
	}
	s.mu.RUnlock()
	for _, l := range lines {
		c.w.Write(l)
		c.w.WriteByte('\n')
	}
	c.lines += len(lines)
	if len(c.todo) > 0 {
		return
	}
	s.cmp = nil
	c.w.Write(c.tail)
	err := c.w.Flush()
	if err == nil {
		err = c.f.Sync()
	}
	if err == nil {
		err = os.Rename(s.hintPath+".tmp", s.hintPath)
	}
	if err != nil {
		c.abort()
		s.cmpSlack *= 2
		return
	}
	syncDir(s.dir)
	// The new file stays open at its end: the flusher is its only writer.
	s.logF.Close()
	s.logF, s.logWritten = c.f, c.lines+c.tailLines
}

func (c *compaction) abort() {
	c.f.Close()
	_ = os.Remove(c.f.Name())
}

// ReadUsers lists the users recorded under a healer's state dir, without
// opening it for writing (a proxy may be running on it).
func ReadUsers(dir string) ([]string, error) {
	seen := map[string]bool{}
	if err := readLines(filepath.Join(dir, "users"), func(b []byte) { seen[string(b)] = true }); err != nil {
		return nil, fmt.Errorf("read users: %w", err)
	}
	out := make([]string, 0, len(seen))
	for u := range seen {
		out = append(out, u)
	}
	sort.Strings(out)
	return out, nil
}
