package heal

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/testwait"
)

func openTestState(t *testing.T, dir string, limit, slack int) *state {
	t.Helper()
	s, err := openState(dir, limit, slack)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.close)
	return s
}

func logLines(t *testing.T, dir string) int {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "hints"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n++
	}
	return n
}

func hintAt(i int, node string) hint {
	return hint{User: "u1", Path: fmt.Sprintf("d%d/f%d", i%3, i), Node: node}
}

// TestHintStoreReopens: what was recorded and settled survives a restart,
// and the hints are found by node, user and directory.
func TestHintStoreReopens(t *testing.T) {
	dir := t.TempDir()
	s := openTestState(t, dir, 0, 0)
	for i := range 30 {
		if err := s.addHint(hintAt(i, "n3")); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.addHint(hint{User: "u2", Path: "top", Node: "n2"}); err != nil {
		t.Fatal(err)
	}
	seq := s.seqNow()
	for i := range 20 {
		if !s.settle("n3", "u1", hintAt(i, "n3").Path, seq) {
			t.Fatalf("hint %d not settled", i)
		}
	}
	s.close()

	s = openTestState(t, dir, 0, 0)
	for i := range 30 {
		if got, want := s.owed(hintAt(i, "n3")), i >= 20; got != want {
			t.Errorf("hint %d owed = %v after reopening, want %v", i, got, want)
		}
	}
	if !s.owed(hint{User: "u2", Path: "top", Node: "n2"}) || s.owed(hint{User: "u2", Path: "top", Node: "n3"}) {
		t.Error("root-level hint lost or misfiled")
	}
	if !s.owesUser("u1", "n3") || s.owesUser("u1", "n2") {
		t.Error("per-user counts wrong after reopening")
	}
	if got := s.hintCounts(); got["n3"] != 10 || got["n2"] != 1 {
		t.Errorf("hint counts %v, want n3:10 n2:1", got)
	}
	due := s.takeDue(func(string) bool { return true }, time.Now(), batchKeys)
	names := 0
	for _, d := range due {
		names += len(d.names)
	}
	if len(due) != 4 || names != 11 {
		t.Errorf("due: %d batches, %d names; want 4 batches (3 directories of u1 on n3, one of u2), 11 names", len(due), names)
	}
}

// TestHintRecordedDuringReplayStays: a write missed again while its key's
// replay runs is not settled by that replay, which read the nodes before it
// (it would be forgotten until the next scan, reads trusting a stale copy).
func TestHintRecordedDuringReplayStays(t *testing.T) {
	s := openTestState(t, t.TempDir(), 0, 0)
	h := hint{User: "u", Path: "kv/7", Node: "n3"}
	if err := s.addHint(h); err != nil {
		t.Fatal(err)
	}
	due := s.takeDue(func(string) bool { return true }, time.Now(), batchKeys)
	seq := s.seqNow()                    // the replay reads the nodes after this
	if err := s.addHint(h); err != nil { // missed again meanwhile
		t.Fatal(err)
	}
	if s.settle("n3", "u", "kv/7", seq) {
		t.Fatal("a hint recorded after the replay's read was settled by it")
	}
	s.release(due[0], false)
	if !s.owed(h) {
		t.Fatal("hint lost")
	}
	if due = s.takeDue(func(string) bool { return true }, time.Now(), batchKeys); len(due) != 1 {
		t.Fatalf("batch with a hint recorded during its replay is not due again at once: %d due", len(due))
	}
}

// TestTakeDueBounded: a replay round takes at most so many names of a
// batch; the rest are due again at once, not after a backoff.
func TestTakeDueBounded(t *testing.T) {
	s := openTestState(t, t.TempDir(), 0, 0)
	for i := range 25 {
		if err := s.addHint(hint{User: "u", Path: fmt.Sprintf("kv/%d", i), Node: "n3"}); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	for round := 0; len(seen) < 25; round++ {
		if round == 3 {
			t.Fatalf("3 rounds of 10 took %d of 25 names", len(seen))
		}
		due := s.takeDue(func(string) bool { return true }, time.Now(), 10)
		if len(due) != 1 || len(due[0].names) > 10 {
			t.Fatalf("round %d: %d batches, %d names; want 1 batch of at most 10", round, len(due), len(due[0].names))
		}
		seq := s.seqNow()
		for _, n := range due[0].names {
			seen[n] = true
			s.settle("n3", "u", "kv/"+n, seq)
		}
		s.release(due[0], false)
	}
}

// TestHintLogCompactedOnline: the log is compacted while the proxy runs
// (it grew with every hint ever recorded until a restart), records keep
// arriving during compaction, and the compacted log reopens to the same
// hints.
func TestHintLogCompactedOnline(t *testing.T) {
	dir := t.TempDir()
	s := openTestState(t, dir, 0, 100)
	const n = 5_000
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				if err := s.addHint(hintAt(i, "n3")); err != nil {
					t.Error(err)
					return
				}
				if i%10 != 0 {
					s.settle("n3", "u1", hintAt(i, "n3").Path, s.seqNow())
				}
			}
		}()
	}
	wg.Wait()
	live := n / 10
	if got := s.hintCounts()["n3"]; got != live {
		t.Fatalf("%d hints pending, want %d", got, live)
	}
	// 2n+ records were written; compaction keeps the log near the live set.
	testwait.For(t, 20*time.Second, "log compacted", func() bool { return logLines(t, dir) <= 2*live+100+8 })
	s.close()
	s = openTestState(t, dir, 0, 100)
	for i := range n {
		if got, want := s.owed(hintAt(i, "n3")), i%10 == 0; got != want {
			t.Fatalf("hint %d owed = %v after compaction and reopening, want %v", i, got, want)
		}
	}
}

// TestHintsGroupCommitted: concurrent writers share fsyncs (each hint was
// fsynced on its own, under the lock every read takes).
func TestHintsGroupCommitted(t *testing.T) {
	s := openTestState(t, t.TempDir(), 0, 0)
	const writers, each = 32, 50
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := s.addHint(hint{User: "u", Path: fmt.Sprintf("w%d/%d", w, i), Node: "n1"}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if f := s.flushes.Load(); f >= writers*each {
		t.Fatalf("%d fsyncs for %d hints: not grouped", f, writers*each)
	} else {
		t.Logf("%d hints, %d fsyncs", writers*each, f)
	}
}

// TestHintLimitMarksFullScan: past the limit a node's hints are dropped
// and it is owed everything (reads skip it) until a scan that started
// after the mark read it; the mark survives a restart.
func TestHintLimitMarksFullScan(t *testing.T) {
	dir := t.TempDir()
	s := openTestState(t, dir, 100, 0)
	for i := range 150 {
		if err := s.addHint(hintAt(i, "n3")); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.addHint(hintAt(0, "n2")); err != nil {
		t.Fatal(err)
	}
	marked := s.fullScanOwed()
	if _, ok := marked["n3"]; !ok || len(marked) != 1 {
		t.Fatalf("marked for a full scan: %v, want n3", marked)
	}
	if got := s.hintCounts()["n3"]; got > 100 {
		t.Fatalf("%d hints kept for n3 past a limit of 100", got)
	}
	never := hint{User: "someone", Path: "never/hinted", Node: "n3"}
	if !s.owed(never) || !s.owesUser("someone", "n3") || s.owed(hint{User: "someone", Path: "never/hinted", Node: "n2"}) {
		t.Fatal("a node marked for a full scan must be owed everything, and only it")
	}
	s.scanned("n3", marked["n3"].Add(-time.Second)) // a scan that started before the mark
	if _, ok := s.fullScanOwed()["n3"]; !ok {
		t.Fatal("a scan older than the mark cleared it")
	}
	s.close()

	s = openTestState(t, dir, 100, 0)
	if _, ok := s.fullScanOwed()["n3"]; !ok || !s.owed(never) {
		t.Fatal("full-scan mark lost on reopening")
	}
	if !s.owed(hintAt(149, "n3")) || !s.owed(hintAt(0, "n2")) {
		t.Fatal("hints recorded after the mark lost")
	}
	s.scanned("n3", time.Now())
	if s.owed(never) || !s.owed(hintAt(149, "n3")) {
		t.Fatal("after a full scan the node is owed exactly its hints since the mark")
	}
	s.close()
	s = openTestState(t, dir, 100, 0)
	if len(s.fullScanOwed()) != 0 {
		t.Fatal("full-scan mark back after reopening")
	}
}
