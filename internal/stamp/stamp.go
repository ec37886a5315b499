// Package stamp is the version of every write and delete: a hybrid logical
// clock reading (Kulkarni et al., "Logical Physical Clocks", 2014) taken by
// the proxy when it accepts the request, plus the proxy's id. Stamps are
// totally ordered, and their text form sorts the same way as the stamps, so
// "which copy wins" is a string comparison anywhere (see docs/design.md,
// "Versions"). A node's modification time never decides a winner.
package stamp

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Header carries a version's stamp between proxies, nodes and the healer.
const Header = "X-Cring-Stamp"

// SHA256Header carries a file's recorded SHA-256 (hex) on a cring node's
// answers. Only cring nodes send it, and they never serve a torn copy.
const SHA256Header = "X-Cring-Sha256"

// Stamp is one version. The zero Stamp is "unstamped": a copy written before
// stamps existed, or by a client talking to a node directly; it loses to
// every stamped version.
type Stamp struct {
	Wall    int64  // unix nanoseconds: the physical part, never behind any stamp seen
	Counter uint32 // orders stamps within one Wall
	Proxy   string // the issuer, so two proxies never issue the same stamp
}

// maxCounter keeps the counter within its fixed-width text field.
const maxCounter = 999999

// String is the sortable text form: 19 digits of wall time, 6 of counter,
// the proxy id. "" for the zero Stamp.
func (s Stamp) String() string {
	if s.IsZero() {
		return ""
	}
	return fmt.Sprintf("%019d.%06d.%s", s.Wall, s.Counter, s.Proxy)
}

// IsZero reports whether s is unstamped.
func (s Stamp) IsZero() bool { return s.Wall == 0 && s.Counter == 0 && s.Proxy == "" }

// Time is the stamp's wall time.
func (s Stamp) Time() time.Time { return time.Unix(0, s.Wall) }

// Compare orders stamps: -1 if s is older than o, 0 if equal, +1 if newer.
func (s Stamp) Compare(o Stamp) int {
	switch {
	case s.Wall != o.Wall:
		return cmp(s.Wall < o.Wall)
	case s.Counter != o.Counter:
		return cmp(s.Counter < o.Counter)
	case s.Proxy != o.Proxy:
		return cmp(s.Proxy < o.Proxy)
	}
	return 0
}

func cmp(less bool) int {
	if less {
		return -1
	}
	return 1
}

// After reports whether s is newer than o.
func (s Stamp) After(o Stamp) bool { return s.Compare(o) > 0 }

// Max is the newer of a and b.
func Max(a, b Stamp) Stamp {
	if a.After(b) {
		return a
	}
	return b
}

// Parse reads a stamp's text form; "" is the zero Stamp.
func Parse(text string) (Stamp, error) {
	if text == "" {
		return Stamp{}, nil
	}
	wall, rest, ok1 := strings.Cut(text, ".")
	counter, proxy, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || len(wall) != 19 || len(counter) != 6 || !validProxy(proxy) {
		return Stamp{}, fmt.Errorf("stamp %q: want 19 digits, '.', 6 digits, '.', a proxy id", text)
	}
	w, err := strconv.ParseInt(wall, 10, 64)
	if err != nil || w <= 0 {
		return Stamp{}, fmt.Errorf("stamp %q: bad wall time", text)
	}
	c, err := strconv.ParseUint(counter, 10, 32)
	if err != nil {
		return Stamp{}, fmt.Errorf("stamp %q: bad counter", text)
	}
	return Stamp{Wall: w, Counter: uint32(c), Proxy: proxy}, nil
}

// validProxy accepts short ids of letters, digits and '-' (a stamp travels
// in headers, file names and JSON).
func validProxy(id string) bool {
	if id == "" || len(id) > 32 {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// Legacy is the stamp given to a record written before stamps existed (an
// old tombstone's deletion time): older than any stamp issued at or after t.
func Legacy(t time.Time) Stamp {
	return Stamp{Wall: t.UnixNano(), Proxy: "legacy"}
}

// Clock issues stamps. It never issues the same stamp twice and never goes
// backwards, even when the wall clock does, and it moves past any stamp it
// observes, so a version written after another was seen is stamped newer.
type Clock struct {
	id  string
	now func() time.Time

	mu   sync.Mutex
	last Stamp
}

// NewClock returns a clock with a fresh random id. now is the wall clock
// (time.Now when nil; tests inject theirs).
func NewClock(now func() time.Time) *Clock {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return NewClockID(hex.EncodeToString(b[:]), now)
}

// NewClockID returns a clock that signs its stamps with id.
func NewClockID(id string, now func() time.Time) *Clock {
	if now == nil {
		now = time.Now
	}
	if !validProxy(id) {
		panic(fmt.Sprintf("stamp: invalid clock id %q", id))
	}
	return &Clock{id: id, now: now}
}

// ID is the clock's proxy id.
func (c *Clock) ID() string { return c.id }

// Now issues a new stamp, newer than every stamp issued or observed before.
func (c *Clock) Now() Stamp {
	pt := c.now().UnixNano()
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Stamp{Wall: pt, Proxy: c.id}
	if pt <= c.last.Wall {
		s.Wall, s.Counter = c.last.Wall, c.last.Counter+1
		if s.Counter > maxCounter {
			s.Wall, s.Counter = s.Wall+1, 0
		}
	}
	c.last = s
	return s
}

// Observe moves the clock past a stamp seen elsewhere (another proxy's,
// read back from a node).
func (c *Clock) Observe(s Stamp) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.Wall > c.last.Wall || s.Wall == c.last.Wall && s.Counter > c.last.Counter {
		c.last = Stamp{Wall: s.Wall, Counter: s.Counter, Proxy: c.id}
	}
}
