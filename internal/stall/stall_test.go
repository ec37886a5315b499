package stall

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"
)

// fakeTimer is a timer on a clock that moves only when advance says so.
type fakeTimer struct {
	now, deadline time.Duration
	armed         bool
	fire          func()
}

func (f *fakeTimer) Reset(d time.Duration) bool {
	was := f.armed
	f.deadline, f.armed = f.now+d, true
	return was
}

func (f *fakeTimer) Stop() bool {
	was := f.armed
	f.armed = false
	return was
}

func (f *fakeTimer) advance(d time.Duration) {
	f.now += d
	if f.armed && f.now >= f.deadline {
		f.armed = false
		f.fire()
	}
}

// slowSource answers every Read after a pause of the fake clock.
type slowSource struct {
	clock *fakeTimer
	pause time.Duration
	reads int
}

func (s *slowSource) Read(b []byte) (int, error) {
	if s.reads == 0 {
		return 0, io.EOF
	}
	s.clock.advance(s.pause)
	s.reads--
	b[0] = 'x'
	return 1, nil
}

func TestReader(t *testing.T) {
	errQuiet := errors.New("quiet")
	const limit = 200 * time.Millisecond
	for _, tt := range []struct {
		name      string
		pause     time.Duration
		reads     int
		cancelled bool
	}{
		// 40 reads of 10 ms: 400 ms in all, twice the limit, but never
		// silent for 200 ms.
		{"slow but steady", 10 * time.Millisecond, 40, false},
		{"silent just short of the limit", limit - time.Nanosecond, 3, false},
		{"silent for the limit", limit, 1, true},
		{"silent too long", 500 * time.Millisecond, 1, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			clock := &fakeTimer{fire: func() { cancel(errQuiet) }}
			clock.Reset(limit) // as NewReader starts it
			r := &Reader{r: &slowSource{clock: clock, pause: tt.pause, reads: tt.reads}, d: limit, t: clock}
			defer r.Stop()
			if _, err := io.ReadAll(r); err != nil {
				t.Fatal(err)
			}
			if got := errors.Is(context.Cause(ctx), errQuiet); got != tt.cancelled {
				t.Fatalf("cancelled: %v, want %v", got, tt.cancelled)
			}
		})
	}
}

// blockedSource answers nothing until its context is done.
type blockedSource struct{ ctx context.Context }

func (s blockedSource) Read([]byte) (int, error) {
	select {
	case <-s.ctx.Done():
		return 0, context.Cause(s.ctx)
	case <-time.After(10 * time.Second):
		return 0, errors.New("still not cancelled after 10s")
	}
}

// TestNewReaderCancelsOnSilence: the real timer NewReader starts cancels a
// transfer that goes silent; the source waits for that, not for a duration.
func TestNewReaderCancelsOnSilence(t *testing.T) {
	errQuiet := errors.New("quiet")
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	r := NewReader(blockedSource{ctx}, 50*time.Millisecond, cancel, errQuiet)
	defer r.Stop()
	if _, err := io.ReadAll(r); !errors.Is(err, errQuiet) {
		t.Fatalf("read from a silent source: %v, want %v", err, errQuiet)
	}
}
