package bench

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// slowFront is a fault-injecting node: a TCP forwarder in front of a real
// Charm node that, while slowed, holds everything sent to the node (each
// request) for a delay before passing it on, and while down closes every
// connection at once. Answers pass untouched.
type slowFront struct {
	ln     net.Listener
	target string
	delay  atomic.Int64 // time.Duration
	down   atomic.Bool

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// newSlowFront forwards a loopback port to target (host:port).
func newSlowFront(target string) (*slowFront, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("slow node front: %w", err)
	}
	f := &slowFront{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.serve()
	return f, nil
}

func (f *slowFront) url() string { return "http://" + f.ln.Addr().String() }

func (f *slowFront) setDelay(d time.Duration) { f.delay.Store(int64(d)) }

// setDown takes the node down (its connections closed, new ones refused)
// or brings it back.
func (f *slowFront) setDown(down bool) {
	if f.down.Swap(down) == down || !down {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		c.Close()
	}
}

func (f *slowFront) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.wg.Add(1)
		go f.forward(c)
	}
}

// track registers a forwarded connection pair so close can end it; false
// once the front is closed.
func (f *slowFront) track(c, up net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns == nil {
		return false
	}
	f.conns[c], f.conns[up] = struct{}{}, struct{}{}
	return true
}

func (f *slowFront) untrack(c, up net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.conns, c)
	delete(f.conns, up)
}

func (f *slowFront) forward(c net.Conn) {
	defer f.wg.Done()
	defer c.Close()
	if f.down.Load() {
		return
	}
	up, err := net.DialTimeout("tcp", f.target, 5*time.Second)
	if err != nil {
		return
	}
	defer up.Close()
	if !f.track(c, up) {
		return
	}
	defer f.untrack(c, up)
	go func() {
		_, _ = io.Copy(c, up) // answers as they come
		c.Close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if d := time.Duration(f.delay.Load()); d > 0 {
				time.Sleep(d)
			}
			if _, werr := up.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// close stops accepting and ends every forwarded connection.
func (f *slowFront) close() error {
	err := f.ln.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.conns = nil
	f.mu.Unlock()
	f.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
