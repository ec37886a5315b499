package proxy

import (
	"testing"
	"time"
)

func TestRecordCache(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	c := recordCache{nowFunc: func() time.Time { return now }}
	const key = "u/k"
	if c.knownNone(key) || !c.none(key) {
		t.Fatal("a new cache knows nothing of the key")
	}
	c.markNone(key)
	if !c.knownNone(key) {
		t.Fatal("a key just found without records is known to have none")
	}
	now = now.Add(noneTTL)
	if c.knownNone(key) {
		t.Fatal("a key found without records is asked again after noneTTL")
	}
	c.markNone(key)
	c.add(key, "s1", 10, "aa")
	if c.knownNone(key) || c.none(key) {
		t.Fatal("a record added forgets that the key had none")
	}
	for _, tt := range []struct {
		size int64
		sum  string
		want bool
	}{{10, "aa", true}, {11, "aa", false}, {10, "bb", false}} {
		if got := c.has(key, tt.size, tt.sum); got != tt.want {
			t.Errorf("has(%d, %q) = %v, want %v", tt.size, tt.sum, got, tt.want)
		}
	}
	if !c.hasStamp(key, "s1") || c.hasStamp(key, "s2") {
		t.Error("hasStamp")
	}
}
