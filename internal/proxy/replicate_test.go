package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// A replica's body as the transport would use it: each consumer plays one
// node's request. They run against the pump alone (no HTTP), so what is
// checked is the broadcast itself: every live replica gets every byte from
// the one shared buffer, and one that fails, stalls or ends never holds up
// the others nor sees its chunk overwritten.
type consumer func(t *testing.T, rp *replica, src []byte, release chan struct{}) (got []byte, err error)

// reads takes the body as net/http's copy buffer does, in small reads.
func reads(_ *testing.T, rp *replica, _ []byte, _ chan struct{}) ([]byte, error) {
	var out bytes.Buffer
	buf := make([]byte, 1000)
	for {
		n, err := rp.Read(buf)
		out.Write(buf[:n])
		if err == io.EOF {
			return out.Bytes(), nil
		}
		if err != nil {
			return out.Bytes(), err
		}
	}
}

// writesItself takes the body as a node connection does (WriteTo).
func writesItself(_ *testing.T, rp *replica, _ []byte, _ chan struct{}) ([]byte, error) {
	var out bytes.Buffer
	_, err := rp.WriteTo(&out)
	return out.Bytes(), err
}

// stallsHolding blocks in its second write until release is closed, then
// checks that the chunk it was handed is still the source's bytes: the pump
// must not reuse a buffer a dropped replica may still be writing from.
func stallsHolding(t *testing.T, rp *replica, src []byte, release chan struct{}) ([]byte, error) {
	w := &stallingWriter{release: release}
	_, err := rp.WriteTo(w)
	if !bytes.Equal(w.held, src[w.off:w.off+len(w.held)]) {
		t.Errorf("the chunk a stalled replica was writing changed under it")
	}
	return w.out.Bytes(), err
}

type stallingWriter struct {
	release chan struct{}
	out     bytes.Buffer
	writes  int
	held    []byte
	off     int
}

func (w *stallingWriter) Write(p []byte) (int, error) {
	w.writes++
	if w.writes == 2 {
		w.off = w.out.Len()
		w.held = p
		<-w.release
		return 0, errors.New("connection closed")
	}
	return w.out.Write(p)
}

// endsEarly takes one chunk, then its request ends (the node answered
// before the whole body) while the transport keeps reading.
func endsEarly(_ *testing.T, rp *replica, _ []byte, _ chan struct{}) ([]byte, error) {
	var out bytes.Buffer
	buf := make([]byte, bufSize)
	n, err := rp.Read(buf)
	out.Write(buf[:n])
	if err != nil {
		return out.Bytes(), err
	}
	rp.requestEnded()
	n, err = rp.Read(buf)
	out.Write(buf[:n])
	return out.Bytes(), err
}

// endsMidChunk reads part of a chunk, as net/http does filling its
// connection's buffer (a TLS connection's body goes through it all the
// way), then its request ends and the transport never reads again.
func endsMidChunk(_ *testing.T, rp *replica, _ []byte, _ chan struct{}) ([]byte, error) {
	buf := make([]byte, 1000)
	n, err := rp.Read(buf)
	rp.requestEnded()
	return buf[:n], err
}

func TestPumpBroadcast(t *testing.T) {
	src := make([]byte, 1<<20+123)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range src {
		src[i] = byte(rng.Uint32())
	}
	tests := []struct {
		name    string
		bodies  []consumer // nil: a request that never reads its body
		sentAll []bool
		stalled []bool // dropped after the stall timeout, not at once
	}{
		{"all read", []consumer{reads, writesItself, reads}, []bool{true, true, true}, []bool{false, false, false}},
		{"one never reads", []consumer{writesItself, nil, reads}, []bool{true, false, true}, []bool{false, true, false}},
		{"one stalls holding a chunk", []consumer{reads, stallsHolding, writesItself}, []bool{true, false, true}, []bool{false, true, false}},
		{"one ends early", []consumer{endsEarly, writesItself, reads}, []bool{false, true, true}, []bool{false, false, false}},
		{"one ends mid-chunk", []consumer{reads, endsMidChunk, writesItself}, []bool{true, false, true}, []bool{false, false, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			release := make(chan struct{})
			var once sync.Once
			free := func() { once.Do(func() { close(release) }) }
			t.Cleanup(free)
			p := &Proxy{stall: time.Second}
			p.bufs.New = func() any { b := make([]byte, bufSize); return &b }
			var reps []*replica
			var wg sync.WaitGroup
			got := make([][]byte, len(tt.bodies))
			for k, body := range tt.bodies {
				_, cancel := context.WithCancelCause(context.Background())
				t.Cleanup(func() { cancel(nil) })
				rp := newReplica(k, cancel)
				reps = append(reps, rp)
				if body == nil {
					continue
				}
				wg.Go(func() {
					got[k], _ = body(t, rp, src, release)
				})
			}
			start := time.Now()
			if err := p.pump(context.Background(), bytes.NewReader(src), reps); err != nil {
				t.Fatalf("pump: %v", err)
			}
			// A replica that holds up the pump is dropped after one stall
			// timeout, once: never once per chunk.
			if d := time.Since(start); d > 10*p.stall {
				t.Errorf("the pump took %v (stall timeout %v)", d, p.stall)
			}
			free()
			wg.Wait()
			for k, rp := range reps {
				// A request that ended answers its chunk: its replica
				// never costs the others a stall timeout.
				if stalled := rp.endErr == errStalled; stalled != tt.stalled[k] {
					t.Errorf("replica %d: dropped as stalled %v, want %v", k, stalled, tt.stalled[k])
				}
				if rp.sentAll != tt.sentAll[k] {
					t.Errorf("replica %d: sentAll %v, want %v", k, rp.sentAll, tt.sentAll[k])
				}
				if tt.sentAll[k] && !bytes.Equal(got[k], src) {
					t.Errorf("replica %d got %d bytes that differ from the %d sent", k, len(got[k]), len(src))
				}
			}
		})
	}
}
