package heal

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/stamp"
	"github.com/cring-dev/cring/internal/tombstone"
)

// stampAt is a stamp issued at t (a proxy's clock then).
func stampAt(t time.Time) stamp.Stamp { return stamp.NewClock(func() time.Time { return t }).Now() }

// record stores the version record of data as p's version st, as an
// upload through the proxy does on stock nodes.
func (hc *healCluster) record(p string, data []byte, st stamp.Stamp, nodes ...int) {
	hc.t.Helper()
	sum := sha256.Sum256(data)
	body := tombstone.VersionBody(tombstone.Version{Path: p, Stamp: st.String(), Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])})
	hc.put(tombstone.VersionPath(p, st), body, st, nodes...)
}

// intent stores a streamed upload's intent record.
func (hc *healCluster) intent(p string, st stamp.Stamp, nodes ...int) {
	hc.t.Helper()
	hc.put(tombstone.PendingPath(p, st), tombstone.VersionBody(tombstone.Version{Path: p, Stamp: st.String()}), st, nodes...)
}

// upload is a stock upload of data as p's version st: its record, then
// its data, on the given nodes.
func (hc *healCluster) upload(p string, data []byte, st stamp.Stamp, nodes ...int) {
	hc.t.Helper()
	hc.record(p, data, st, nodes...)
	hc.put(p, data, st, nodes...)
}

// recordsOn is the names of p's version and intent records on node i.
func (hc *healCluster) recordsOn(i int, p string) []string {
	return slices.Sorted(maps.Keys(hc.listed(i, tombstone.VersionDir(p))))
}

// TestScanCollectsRecords: a scan removes the version and intent records
// a key's settled version (on every replica) or its tombstone made
// useless, on every node, and keeps the version's own record, anything
// newer, and anything younger than the in-flight window. Before, records
// were never removed: every upload and repair copy listed them all.
func TestScanCollectsRecords(t *testing.T) {
	hc := newHealCluster(t, healOpts{})
	now := time.Now()
	hc.h.now = func() time.Time { return now } // records age by this clock
	at := func(d time.Duration) stamp.Stamp { return stampAt(now.Add(d)) }
	all := []int{0, 1, 2}
	tests := []struct {
		name  string
		write func(p string) (keep []string) // the records that must stay
	}{
		{"overwritten many times", func(p string) []string {
			for k := range 20 {
				st := at(-time.Hour + time.Duration(k)*time.Minute)
				if k%4 == 0 {
					hc.intent(p, st, all...) // a streamed one
				}
				hc.upload(p, fmt.Appendf(nil, "version %d", k), st, all...)
			}
			win := at(-time.Minute)
			hc.intent(p, win, all...) // the winner's own intent is done with
			hc.upload(p, []byte("newest"), win, all...)
			return []string{win.String()}
		}},
		{"writes in flight", func(p string) []string {
			for k := range 5 {
				hc.upload(p, fmt.Appendf(nil, "version %d", k), at(-time.Hour+time.Duration(k)*time.Minute), all...)
			}
			older := at(-20 * time.Second) // older than the winner, its data still on its way
			hc.record(p, []byte("slow"), older, all...)
			win := at(-10 * time.Second)
			hc.upload(p, []byte("newest"), win, all...)
			newer := at(-5 * time.Second) // recorded, no data yet
			hc.record(p, []byte("newer"), newer, all...)
			streaming := at(-2 * time.Second)
			hc.intent(p, streaming, all...)
			return []string{older.String(), win.String(), newer.String(), streaming.String() + ".pending"}
		}},
		{"deleted", func(p string) []string {
			for k := range 5 {
				hc.upload(p, fmt.Appendf(nil, "version %d", k), at(-time.Hour+time.Duration(k)*time.Minute), all...)
			}
			del := at(-30 * time.Minute)
			hc.put(tombstone.Path(p), tombstone.Body(p, del), del, all...)
			hc.remove(p, all...)
			failed := at(-10 * time.Minute) // a later write that stored nothing
			hc.record(p, []byte("failed"), failed, all...)
			return []string{failed.String()}
		}},
		{"directory deleted", func(p string) []string {
			for k := range 5 {
				hc.upload(p, fmt.Appendf(nil, "version %d", k), at(-time.Hour+time.Duration(k)*time.Minute), all...)
			}
			del := at(-30 * time.Minute)
			dir := p[:len(p)-2]
			hc.put(tombstone.Path(dir), tombstone.Body(dir, del), del, all...)
			hc.remove(dir, all...)
			return nil
		}},
		{"owed a hint", func(p string) []string {
			var keep []string
			for k := range 5 {
				st := at(-time.Hour + time.Duration(k)*time.Minute)
				hc.upload(p, fmt.Appendf(nil, "version %d", k), st, all...)
				keep = append(keep, st.String())
			}
			hc.h.Missed(hc.user, p, "node3") // its replay judges it first
			return keep
		}},
	}
	keep := map[string][]string{}
	for k, tt := range tests {
		p := fmt.Sprintf("d%d/k", k)
		keep[p] = tt.write(p)
		slices.Sort(keep[p])
	}
	if _, err := hc.h.Scan(context.Background(), ScanOptions{Users: []string{hc.user}}); err != nil {
		t.Fatal(err)
	}
	for k, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := fmt.Sprintf("d%d/k", k)
			for i := range 3 {
				if got := hc.recordsOn(i, p); !slices.Equal(got, keep[p]) {
					t.Errorf("node%d: records %v, want %v", i+1, got, keep[p])
				}
			}
		})
	}

	// An old copy that turns up after its record was collected (a node
	// back with its old disk, a late write landing) matches no record: it
	// loses to the version every replica holds, as it did with its record.
	const p = "d0/k"
	hc.put(p, []byte("version 3"), stamp.Stamp{}, 2)
	if _, err := hc.h.Scan(context.Background(), ScanOptions{Users: []string{hc.user}}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		b, err := hc.h.api.small(context.Background(), hc.h.mem.Load().Nodes[i].API(), hc.user, p)
		if err != nil || string(b) != "newest" {
			t.Errorf("node%d holds %q (%v), want the newest version", i+1, b, err)
		}
		if got := hc.recordsOn(i, p); !slices.Equal(got, keep[p]) {
			t.Errorf("node%d: records %v after the repair, want %v", i+1, got, keep[p])
		}
	}
}

// remove deletes p on the given nodes, unconditionally.
func (hc *healCluster) remove(p string, nodes ...int) {
	hc.t.Helper()
	m := hc.h.mem.Load()
	for _, i := range nodes {
		if err := hc.h.api.remove(context.Background(), m.Nodes[i].API(), hc.user, p, stamp.Stamp{}); err != nil {
			hc.t.Fatal(err)
		}
	}
}

// TestCollectRecheck: a key that changed between the scan's judgement and
// its collection (a newer upload landed on a replica) keeps its records:
// the scan re-reads the directory right before removing, and leaves the
// key to the next scan, which collects what the newer version made old.
func TestCollectRecheck(t *testing.T) {
	hc := newHealCluster(t, healOpts{})
	now := time.Now()
	hc.h.now = func() time.Time { return now }
	at := func(d time.Duration) stamp.Stamp { return stampAt(now.Add(d)) }
	const p = "d/k"
	var all []string
	for k := range 5 {
		st := at(-time.Hour + time.Duration(k)*time.Minute)
		hc.upload(p, fmt.Appendf(nil, "version %d", k), st, 0, 1, 2)
		all = append(all, st.String())
	}
	newer := at(-40 * time.Second)
	all = append(all, newer.String())
	slices.Sort(all)
	var once sync.Once
	hc.fronts[0].mu.Lock()
	hc.fronts[0].before = func(r *http.Request, n int) {
		// The walk lists d first; the second listing is the re-read
		// before the collection: the newer upload lands just before it.
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/v1/fs/d") && n == 2 {
			once.Do(func() { hc.upload(p, []byte("newer"), newer, 0) })
		}
	}
	hc.fronts[0].mu.Unlock()
	rep, err := hc.h.Scan(context.Background(), ScanOptions{Users: []string{hc.user}})
	if err != nil {
		t.Fatal(err)
	}
	if got := hc.recordsOn(0, p); rep.RecordsGC != 0 || !slices.Equal(got, all) {
		t.Fatalf("collected %d records of a key that changed since it was judged; node1 keeps %v, want %v", rep.RecordsGC, got, all)
	}
	// The next scans spread the newer version, then collect.
	for range 2 {
		if _, err := hc.h.Scan(context.Background(), ScanOptions{Users: []string{hc.user}}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		if got := hc.recordsOn(i, p); !slices.Equal(got, []string{newer.String()}) {
			t.Errorf("node%d: records %v, want the newer version's only", i+1, got)
		}
	}
}
