package testwait

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestForPollsUntilTrue(t *testing.T) {
	var n atomic.Int32
	For(t, 5*time.Second, "the third poll", func() bool { return n.Add(1) >= 3 })
	if n.Load() != 3 {
		t.Fatalf("polled %d times, want 3", n.Load())
	}
}

// fataler records a failure instead of ending the test.
type fataler struct {
	testing.TB
	failed string
}

func (f *fataler) Helper() {}
func (f *fataler) Fatalf(format string, args ...any) {
	f.failed = format
	panic(f)
}

func TestForFailsAfterDeadline(t *testing.T) {
	f := &fataler{TB: t}
	start := time.Now()
	func() {
		defer func() { _ = recover() }()
		For(f, 50*time.Millisecond, "never", func() bool { return false })
	}()
	if f.failed == "" {
		t.Fatal("For returned although the condition never held")
	}
	if waited := time.Since(start); waited < 50*time.Millisecond {
		t.Fatalf("gave up after %s, before the deadline", waited)
	}
}
