package stamp

import (
	"sort"
	"testing"
	"time"
)

func TestClockMonotonicWhenWallStepsBack(t *testing.T) {
	wall := time.Unix(1_800_000_000, 0)
	c := NewClockID("p1", func() time.Time { return wall })
	var got []Stamp
	for _, step := range []time.Duration{0, 0, time.Second, -10 * time.Second, 0, time.Millisecond} {
		wall = wall.Add(step)
		got = append(got, c.Now())
	}
	for i := 1; i < len(got); i++ {
		if !got[i].After(got[i-1]) {
			t.Fatalf("stamp %d %s not after %s", i, got[i], got[i-1])
		}
		if got[i].String() <= got[i-1].String() {
			t.Fatalf("text %q does not sort after %q", got[i], got[i-1])
		}
	}
}

func TestObserve(t *testing.T) {
	wall := time.Unix(1_800_000_000, 0)
	a := NewClockID("a", func() time.Time { return wall })
	b := NewClockID("b", func() time.Time { return wall.Add(-time.Hour) }) // clock an hour behind
	sa := a.Now()
	b.Observe(sa)
	if sb := b.Now(); !sb.After(sa) {
		t.Fatalf("after observing %s, b issued %s", sa, sb)
	}
}

func TestTwoClocksNeverCollide(t *testing.T) {
	wall := time.Unix(1_800_000_000, 0)
	now := func() time.Time { return wall }
	a, b := NewClock(now), NewClock(now)
	seen := map[Stamp]bool{}
	for range 1000 {
		for _, s := range []Stamp{a.Now(), b.Now()} {
			if seen[s] {
				t.Fatalf("stamp %s issued twice", s)
			}
			seen[s] = true
		}
	}
}

func TestParseRoundTripAndOrder(t *testing.T) {
	tests := []struct {
		name string
		s    Stamp
	}{
		{"zero", Stamp{}},
		{"plain", Stamp{Wall: 1_800_000_000_123456789, Counter: 7, Proxy: "abc"}},
		{"counter max", Stamp{Wall: 1, Counter: maxCounter, Proxy: "x-y"}},
		{"legacy", Legacy(time.Unix(1_700_000_000, 5))},
	}
	var texts []string
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.s.String())
			if err != nil || got != tt.s {
				t.Fatalf("Parse(%q) = %v, %v; want %v", tt.s.String(), got, err, tt.s)
			}
		})
		texts = append(texts, tt.s.String())
	}
	sorted := append([]string(nil), texts...)
	sort.Strings(sorted)
	for i := 1; i < len(sorted); i++ {
		a, _ := Parse(sorted[i-1])
		b, _ := Parse(sorted[i])
		if a.After(b) {
			t.Errorf("text order %q < %q disagrees with stamp order", sorted[i-1], sorted[i])
		}
	}
}

func TestParseRejects(t *testing.T) {
	for _, bad := range []string{"x", "1.2.3", "0000000000000000001.000001.", "0000000000000000001.000001.a/b",
		"0000000000000000001.1.abc", "000000000000000000a.000001.abc", "0000000000000000000.000000.abc"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}
