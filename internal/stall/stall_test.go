package stall

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"
)

// slowSource answers every Read after a pause.
type slowSource struct {
	pause time.Duration
	reads int
}

func (s *slowSource) Read(b []byte) (int, error) {
	if s.reads == 0 {
		return 0, io.EOF
	}
	time.Sleep(s.pause)
	s.reads--
	b[0] = 'x'
	return 1, nil
}

func TestReader(t *testing.T) {
	errQuiet := errors.New("quiet")
	for _, tt := range []struct {
		name      string
		pause     time.Duration
		reads     int
		cancelled bool
	}{
		// 40 reads of 10 ms: 400 ms in all, twice the limit, but never
		// silent for 200 ms.
		{"slow but steady", 10 * time.Millisecond, 40, false},
		{"silent too long", 500 * time.Millisecond, 1, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			r := NewReader(&slowSource{pause: tt.pause, reads: tt.reads}, 200*time.Millisecond, cancel, errQuiet)
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
