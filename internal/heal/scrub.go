package heal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// The scrub finds silent corruption without an operator (docs/design.md,
// "Integrity"): a slow, endless deep pass over every known user's files
// that hashes every copy — on a cring node the node hashes its own copy
// (its metadata endpoint, nothing crosses the network); a stock node's copy
// is read and hashed here — compares it with the checksum recorded when the
// version was written (a version record, or the replicas' majority), and
// repairs a copy that no longer matches from a good one, with the version's
// stamp. It reads at most ScrubRate bytes per second from each node, so it
// never starves clients, and it resumes where it was after a restart.

// ScrubStatus is the scrub's progress and findings.
type ScrubStatus struct {
	PassStarted  time.Time `json:"pass_started,omitempty"`
	LastFullPass time.Time `json:"last_full_pass,omitempty"` // when the last complete pass ended
	User         string    `json:"user,omitempty"`           // where the running pass is
	Bytes        uint64    `json:"bytes"`                    // hashed since start
	Corrupt      uint64    `json:"corrupt"`                  // copies found not matching their version
	Repaired     uint64    `json:"repaired"`
}

// scrubCursor is where a pass is, saved so a restart resumes it.
type scrubCursor struct {
	PassStarted  time.Time `json:"pass_started"`
	LastFullPass time.Time `json:"last_full_pass"`
	User         string    `json:"user"` // the pass has finished every user before this one
}

type scrubber struct {
	h        *Healer
	interval time.Duration
	rate     float64 // bytes per second per node
	file     string

	first time.Time // a fresh proxy's first pass: not at once, as scans do

	mu       sync.Mutex
	cur      scrubCursor
	limiters map[string]*rate.Limiter // by node name
	st       ScrubStatus
}

func newScrubber(h *Healer, dir string, interval time.Duration, bytesPerSec float64) *scrubber {
	s := &scrubber{h: h, interval: interval, rate: bytesPerSec, file: filepath.Join(dir, "scrub"), limiters: map[string]*rate.Limiter{},
		first: time.Now().Add(min(interval, 10*time.Minute))}
	if b, err := os.ReadFile(s.file); err == nil {
		_ = json.Unmarshal(b, &s.cur) // a bad cursor starts a new pass
	}
	s.st.LastFullPass = s.cur.LastFullPass
	return s
}

// run scrubs until ctx ends: a pass every interval (from one start to the
// next), resuming a pass a restart interrupted.
func (s *scrubber) run(ctx context.Context) {
	for {
		if !s.running() {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(s.nextStart())):
			}
			s.begin()
		}
		if err := s.pass(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.h.log.Warn("scrub pass failed; retrying in a minute", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Minute):
			}
		}
	}
}

// running reports whether a pass was started and not finished.
func (s *scrubber) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.cur.PassStarted.IsZero() && s.cur.PassStarted.After(s.cur.LastFullPass)
}

// nextStart is when the next pass is due: interval after the last began.
func (s *scrubber) nextStart() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur.PassStarted.IsZero() {
		return s.first
	}
	return s.cur.PassStarted.Add(s.interval)
}

// ScrubPass runs one whole scrub pass now, as the background loop would
// (tests measure it); it errs when the healer has no scrub configured.
func (h *Healer) ScrubPass(ctx context.Context) error {
	if h.scrub == nil {
		return errors.New("no scrub: --scrub-interval is 0")
	}
	h.scrub.begin()
	return h.scrub.pass(ctx)
}

func (s *scrubber) begin() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cur.PassStarted = time.Now()
	s.cur.User = ""
	s.st.PassStarted = s.cur.PassStarted
	s.saveLocked()
}

// pass scrubs every known user from the cursor on.
func (s *scrubber) pass(ctx context.Context) error {
	users := s.h.state.userList()
	sort.Strings(users)
	s.mu.Lock()
	from := s.cur.User
	s.mu.Unlock()
	for _, u := range users {
		if u < from {
			continue
		}
		s.mu.Lock()
		s.cur.User, s.st.User = u, u
		s.saveLocked()
		s.mu.Unlock()
		if err := s.user(ctx, u); err != nil {
			return fmt.Errorf("scrub %s: %w", u, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cur.LastFullPass, s.cur.User = time.Now(), ""
	s.st.LastFullPass, s.st.User = s.cur.LastFullPass, ""
	s.saveLocked()
	s.h.log.Info("scrub pass done", "started", s.cur.PassStarted, "bytes", s.st.Bytes, "corrupt", s.st.Corrupt, "repaired", s.st.Repaired)
	return nil
}

// user checks every key of one user, hashing every copy, a directory at a
// time (scandir.go): never more of the tree than one directory. A node
// that can't be listed stops the pass, as its copies can't be checked.
func (s *scrubber) user(ctx context.Context, user string) error {
	m := s.h.mem.Load()
	var failed error
	healthy := func() []int {
		var out []int
		for i := range m.Nodes {
			if m.Health.Healthy(i) {
				out = append(out, i)
			}
		}
		return out
	}
	err := s.h.walkTree(ctx, m, user, "", healthy, func(i int, err error) {
		if failed == nil {
			failed = fmt.Errorf("list on %s: %w", m.Nodes[i].Name, err)
		}
	}, func(ctx context.Context, d *treeDir) error {
		if failed != nil {
			return failed
		}
		for _, name := range d.names {
			file := false
			for _, files := range d.on {
				if f, ok := files[name]; ok && !f.IsDir {
					file = true
				}
			}
			if !file {
				continue // a directory everywhere
			}
			p := name
			if d.dir != "" {
				p = d.dir + "/" + name
			}
			if err := s.key(ctx, user, p); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = failed
	}
	return err
}

// key hashes every copy of one key (paced per node) and repairs the ones
// that don't match their version.
func (s *scrubber) key(ctx context.Context, user, p string) error {
	v := s.h.gather(ctx, user, p)
	for i, c := range v.copies {
		if err := s.pace(ctx, v.m.Nodes[i].Name, c.size); err != nil {
			return err
		}
		s.mu.Lock()
		s.st.Bytes += uint64(c.size)
		s.mu.Unlock()
	}
	res := s.h.repair(ctx, v, false, true)
	if v.corrupt > 0 {
		s.h.log.Warn("scrub found corrupt copies", "user", user, "path", p, "copies", v.corrupt, "repaired", res.Copied, "err", res.Err)
		s.mu.Lock()
		s.st.Corrupt += uint64(v.corrupt)
		if res.Err == "" {
			s.st.Repaired += uint64(len(res.Copied))
		}
		s.mu.Unlock()
	}
	return ctx.Err()
}

// pace waits until node may be read n more bytes.
func (s *scrubber) pace(ctx context.Context, node string, n int64) error {
	if s.rate <= 0 {
		return nil
	}
	s.mu.Lock()
	l := s.limiters[node]
	if l == nil {
		l = rate.NewLimiter(rate.Limit(s.rate), max(int(s.rate), 64<<10))
		s.limiters[node] = l
	}
	s.mu.Unlock()
	for n > 0 {
		step := min(n, int64(l.Burst()))
		if err := l.WaitN(ctx, int(step)); err != nil {
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return err
			}
			return fmt.Errorf("scrub pace: %w", err)
		}
		n -= step
	}
	return nil
}

// saveLocked writes the cursor (best effort: a lost cursor only restarts
// the pass).
func (s *scrubber) saveLocked() {
	b, _ := json.Marshal(s.cur)
	tmp := s.file + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err == nil {
		_ = os.Rename(tmp, s.file)
	}
}

func (s *scrubber) status() ScrubStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st
}
