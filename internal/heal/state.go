package heal

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"
)

// state is the healer's durable memory under the data dir: the users it has
// seen (so the scan knows whose files to walk) and the hints it owes (so a
// restart doesn't forget a missed replica). Both are append-only JSON-lines
// logs, compacted when opened.
type state struct {
	dir string

	mu       sync.Mutex
	users    map[string]bool
	usersLog *os.File
	hints    map[hint]hintState
	hintsLog *os.File
	perUser  map[string]int    // user+"\x00"+node → pending hints
	verified map[string]uint64 // key → fingerprint of replicas last confirmed identical
}

// hint: node (by name: indexes change with membership) is owed path of user.
type hint struct {
	User string `json:"user"`
	Path string `json:"path"`
	Node string `json:"node"`
}

type hintState struct {
	since   time.Time
	next    time.Time // next attempt
	backoff time.Duration
}

type hintRecord struct {
	hint
	Done bool      `json:"done,omitempty"`
	At   time.Time `json:"at"`
}

func openState(dir string) (*state, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("heal state dir: %w", err)
	}
	s := &state{dir: dir, users: map[string]bool{}, hints: map[hint]hintState{}, perUser: map[string]int{}, verified: map[string]uint64{}}
	if err := s.loadUsers(); err != nil {
		return nil, err
	}
	if err := s.loadHints(); err != nil {
		return nil, err
	}
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
	p := filepath.Join(s.dir, "hints")
	err := readLines(p, func(b []byte) {
		var r hintRecord
		if json.Unmarshal(b, &r) != nil {
			return // a torn last line after a crash
		}
		if r.Done {
			delete(s.hints, r.hint)
		} else if _, ok := s.hints[r.hint]; !ok {
			s.hints[r.hint] = hintState{since: r.At}
		}
	})
	if err != nil {
		return fmt.Errorf("read hints: %w", err)
	}
	var lines [][]byte
	for h, st := range s.hints {
		s.perUser[h.User+"\x00"+h.Node]++
		b, _ := json.Marshal(hintRecord{hint: h, At: st.since})
		lines = append(lines, b)
	}
	f, err := rewrite(p, lines)
	if err != nil {
		return fmt.Errorf("compact hints: %w", err)
	}
	s.hintsLog = f
	return nil
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
	return os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0o600)
}

// addUser records a user; true when new.
func (s *state) addUser(u string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
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
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.users))
	for u := range s.users {
		out = append(out, u)
	}
	sort.Strings(out)
	return out
}

// addHint records durably (fsync) that node is owed path.
func (s *state) addHint(h hint) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.hints[h]; ok {
		return nil
	}
	now := time.Now()
	s.hints[h] = hintState{since: now}
	s.perUser[h.User+"\x00"+h.Node]++
	b, _ := json.Marshal(hintRecord{hint: h, At: now})
	if _, err := s.hintsLog.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("record hint: %w", err)
	}
	if err := s.hintsLog.Sync(); err != nil {
		return fmt.Errorf("record hint: %w", err)
	}
	return nil
}

func (s *state) owesUser(user, node string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.perUser[user+"\x00"+node] > 0
}

func (s *state) hasHint(h hint) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.hints[h]
	return ok
}

func (s *state) doneHint(h hint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.hints[h]; !ok {
		return
	}
	delete(s.hints, h)
	if k := h.User + "\x00" + h.Node; s.perUser[k] <= 1 {
		delete(s.perUser, k)
	} else {
		s.perUser[k]--
	}
	b, _ := json.Marshal(hintRecord{hint: h, Done: true, At: time.Now()})
	_, _ = s.hintsLog.Write(append(b, '\n')) // losing it only replays a hint
}

// retryHint pushes a hint's next attempt back (exponential, capped).
func (s *state) retryHint(h hint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.hints[h]
	if !ok {
		return
	}
	st.backoff = min(max(2*st.backoff, time.Second), time.Minute)
	st.next = time.Now().Add(st.backoff)
	s.hints[h] = st
}

// retryAllNow makes every hint due at once (its backoff is kept).
func (s *state) retryAllNow() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for h, st := range s.hints {
		st.next = time.Time{}
		s.hints[h] = st
	}
}

// dueHints returns hints whose node is up and whose retry time has come.
func (s *state) dueHints(up func(node string) bool) []hint {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	var out []hint
	for h, st := range s.hints {
		if now.After(st.next) && up(h.Node) {
			out = append(out, h)
		}
	}
	sort.Slice(out, func(a, b int) bool { return s.hints[out[a]].since.Before(s.hints[out[b]].since) })
	return out
}

func (s *state) hintCounts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for h := range s.hints {
		out[h.Node]++
	}
	return out
}

// maxVerified bounds the memory of confirmed keys; past it the set starts
// over (those keys are just compared again by the next scan).
const maxVerified = 1 << 20

func (s *state) setVerified(key string, fp uint64) {
	s.mu.Lock()
	if len(s.verified) >= maxVerified {
		clear(s.verified)
	}
	s.verified[key] = fp
	s.mu.Unlock()
}

func (s *state) isVerified(key string, fp uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.verified[key] == fp && fp != 0
}

func (s *state) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.usersLog.Close()
	s.hintsLog.Close()
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
