// Package stall cancels a transfer when the other side goes silent: a
// timeout on silence, not on the whole transfer, so a large answer that
// keeps arriving on a busy machine is never cut.
package stall

import (
	"context"
	"io"
	"time"
)

// Reader reads from r and calls cancel with cause when no Read has returned
// for d. Stop it once done reading (a decoder may stop before EOF).
type Reader struct {
	r io.Reader
	d time.Duration
	t timer
}

// timer is what a Reader needs of a *time.Timer: tests drive a fake one,
// since silence is decided by time.
type timer interface {
	Reset(time.Duration) bool
	Stop() bool
}

// NewReader starts the clock.
func NewReader(r io.Reader, d time.Duration, cancel context.CancelCauseFunc, cause error) *Reader {
	return &Reader{r: r, d: d, t: time.AfterFunc(d, func() { cancel(cause) })}
}

func (s *Reader) Read(b []byte) (int, error) {
	n, err := s.r.Read(b)
	if err != nil {
		s.t.Stop()
	} else {
		s.t.Reset(s.d)
	}
	return n, err
}

// Stop stops the clock.
func (s *Reader) Stop() { s.t.Stop() }
