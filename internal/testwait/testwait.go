// Package testwait is how tests wait for something to become true: poll it
// until it holds or a deadline passes. Never a sleep that hopes.
package testwait

import (
	"testing"
	"time"
)

// For polls cond until it holds, and fails t, naming what, if it still
// doesn't after d. The poll starts at a millisecond and backs off to 25 ms,
// so short waits stay short and long ones cost little.
func For(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	poll(t, d, what, cond, time.Millisecond, 25*time.Millisecond)
}

// ForEvery polls cond every interval: to catch a state that lasts only a
// little longer than that.
func ForEvery(t testing.TB, d, every time.Duration, what string, cond func() bool) {
	t.Helper()
	poll(t, d, what, cond, every, every)
}

func poll(t testing.TB, d time.Duration, what string, cond func() bool, first, most time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	pause := first
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(pause)
		pause = min(2*pause, most)
	}
}
