package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/testwait"
)

// countingObserver counts hedged reads.
type countingObserver struct {
	nopObserver
	hedged atomic.Int64
}

func (o *countingObserver) Hedged() { o.hedged.Add(1) }

// TestHedgedRead: once the first replica has a history of fast answers, a
// read it is slow to answer (200 ms here) is also asked of the next replica,
// whose answer wins; the slow request is cancelled.
func TestHedgedRead(t *testing.T) {
	c := newCluster(t, 2, nil, nil, nil)
	obs := &countingObserver{}
	c.p.obs = obs
	const p = "hedge/f"
	pref := c.pref(p)
	modtime := time.Now().UTC().Truncate(time.Second)
	for k, i := range pref {
		c.fakes[i].put(p, entry{data: []byte(fmt.Sprintf("copy %d", k)), mode: "420", modtime: modtime})
	}
	// A history of fast answers from every node. A loaded machine may
	// hedge a few warm-up reads too, and then the second copy may win:
	// count hedges from the end of the warm-up.
	for range 3 * minHedgeSamples {
		if r := c.call(http.MethodGet, "/v1/fs/"+p, nil, ""); r.status != 200 || (string(r.body) != "copy 0" && string(r.body) != "copy 1") {
			t.Fatalf("warm-up read: %d %q", r.status, r.body)
		}
	}
	before := obs.hedged.Load()
	// Those hedges came out of the budget: refill it, so the five below
	// are not refused for want of one.
	c.p.lat.mu.Lock()
	c.p.lat.tokens = hedgeBurst
	c.p.lat.mu.Unlock()
	// The first replica turns slow.
	var cancelled atomic.Int64
	c.fakes[pref[0]].setHook(func(f *fake, w http.ResponseWriter, r *http.Request) bool {
		select {
		case <-time.After(200 * time.Millisecond):
			return false // then answer normally
		case <-r.Context().Done():
			cancelled.Add(1)
			return true
		}
	})
	for range 5 {
		r := c.call(http.MethodGet, "/v1/fs/"+p, nil, "")
		if r.status != 200 || string(r.body) != "copy 1" {
			t.Fatalf("hedged read: %d %q, want the second replica's copy", r.status, r.body)
		}
	}
	if got := obs.hedged.Load() - before; got != 5 {
		t.Fatalf("%d hedged reads, want 5", got)
	}
	testwait.For(t, 2*time.Second, "slow requests cancelled", func() bool { return cancelled.Load() == 5 })
}

// TestSlowReplicaAskedLast: a replica slow on every read is soon asked last
// instead of first (hedging alone would still send it every read first),
// probed now and then, and asked first again once it recovers.
func TestSlowReplicaAskedLast(t *testing.T) {
	c := newCluster(t, 2, nil, nil, nil)
	const p = "slowpoke/f"
	pref := c.pref(p)
	for k, i := range pref {
		c.fakes[i].put(p, entry{data: []byte(fmt.Sprintf("copy %d", k)), mode: "420", modtime: time.Now().UTC().Truncate(time.Second)})
	}
	read := func() string {
		t.Helper()
		r := c.call(http.MethodGet, "/v1/fs/"+p, nil, "")
		if r.status != 200 {
			t.Fatalf("read: %d %q", r.status, r.body)
		}
		return string(r.body)
	}
	for range 3 * minHedgeSamples {
		read()
	}
	slow := c.fakes[pref[0]]
	// Slow enough that no loaded machine lets it beat the hedge (at 100 ms
	// it could, under -race at load 20); its reads are cancelled long
	// before.
	slow.setHook(func(f *fake, w http.ResponseWriter, r *http.Request) bool {
		select {
		case <-time.After(2 * time.Second):
			return false
		case <-r.Context().Done():
			return true
		}
	})
	before := slow.reqs.Load()
	const reads = 100
	for range reads {
		if got := read(); got == "copy 0" {
			t.Fatal("the slow replica's answer won a hedged read")
		}
	}
	if asked := slow.reqs.Load() - before; asked > reads/2 {
		t.Errorf("the slow replica was asked %d times in %d reads, want it asked last after a few", asked, reads)
	}
	slow.setHook(nil)
	testwait.For(t, 10*time.Second, "the recovered replica asked first again", func() bool { return read() == "copy 0" })
}

// TestOrder: a much slower replica goes last; when a probe is due (and the
// budget has a hedge for it) it goes first, wherever it was.
func TestOrder(t *testing.T) {
	for _, tt := range []struct {
		name        string
		slow        int // node with a slow median
		probeDue    bool
		tokens      float64
		want        []int
		wantPrepaid bool
	}{
		{"slow first, no probe", 0, false, hedgeBurst, []int{1, 2, 0}, false},
		{"slow last, probe due", 2, true, hedgeBurst, []int{2, 0, 1}, true},
		{"slow in the middle, probe due", 1, true, hedgeBurst, []int{1, 0, 2}, true},
		{"probe due, no budget", 1, true, 0, []int{0, 2, 1}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := newLatencies(3)
			for i := range 3 {
				d := time.Millisecond
				if i == tt.slow {
					d = 50 * time.Millisecond
				}
				for range minOrderSamples {
					l.record(i, d)
				}
			}
			if !tt.probeDue {
				l.nodes[tt.slow].lastProbe = time.Now()
			}
			l.tokens = tt.tokens
			got, prepaid := l.order([]int{0, 1, 2})
			if fmt.Sprint(got) != fmt.Sprint(tt.want) || prepaid != tt.wantPrepaid {
				t.Errorf("order = %v prepaid %v, want %v %v", got, prepaid, tt.want, tt.wantPrepaid)
			}
		})
	}
}

// TestReadSkipsReplicaStillWriting: a write is answered at quorum while the
// last replica is still writing the file in place; a read right after must
// not be served that replica's partial copy.
func TestReadSkipsReplicaStillWriting(t *testing.T) {
	const p = "slow/w"
	c := newCluster(t, 2, nil, nil, nil)
	slow := c.fakes[c.pref(p)[0]] // the replica a read asks first
	read := make(chan struct{})   // closed once the read below is answered
	slow.setHook(func(f *fake, w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/fs/"+p { // not the version record
			return false
		}
		b, _ := io.ReadAll(r.Body)
		f.put(p, entry{data: nil, mode: "420", modtime: time.Now()}) // created, not yet written
		// Still writing for as long as the read takes, however slow the machine.
		select {
		case <-read:
		case <-f.quit:
		}
		f.put(p, entry{data: b, mode: "420", modtime: time.Now()})
		return true
	})
	body, ctype := multipartBody(t, 32<<10, 3)
	if r := c.upload(p, body, ctype); r.status != 200 {
		t.Fatalf("upload: %d %s", r.status, r.body)
	}
	r := c.call(http.MethodGet, "/v1/fs/"+p, nil, "")
	close(read)
	if r.status != 200 || !bytes.Equal(r.body, body) {
		t.Fatalf("read right after the ack: %d, %d bytes, want the %d written", r.status, len(r.body), len(body))
	}
}
