package sshproxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/testwait"
)

const ioTimeout = 5 * time.Second

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// refusedAddr returns a loopback address nothing listens on.
func refusedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// backend is a loopback TCP server running handler for each connection.
type backend struct {
	addr     string
	accepted atomic.Int64
}

func startBackend(t *testing.T, handler func(*net.TCPConn)) *backend {
	t.Helper()
	ln := listen(t)
	b := &backend{addr: ln.Addr().String()}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.accepted.Add(1)
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				handler(c.(*net.TCPConn))
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return b
}

func echo(c *net.TCPConn) {
	if _, err := io.Copy(c, c); err == nil {
		c.CloseWrite()
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// startProxy runs p.Serve on a loopback listener; stop cancels it and returns Serve's result.
func startProxy(t *testing.T, p *Proxy) (addr string, stop func() error) {
	t.Helper()
	if p.Logger == nil {
		p.Logger = testLogger(t)
	}
	ln := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- p.Serve(ctx, ln) }()
	var (
		once sync.Once
		err  error
	)
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-errc:
			case <-time.After(ioTimeout):
				err = errors.New("Serve did not return after cancel")
			}
		})
		return err
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	})
	return ln.Addr().String(), stop
}

func static(addrs ...string) func() []string {
	return func() []string { return addrs }
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(ioTimeout))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(got) != msg {
		t.Fatalf("got %q, want %q", got, msg)
	}
}

// expectClosed asserts the peer closes c within limit.
func expectClosed(t *testing.T, c net.Conn, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, c)
	elapsed := time.Since(start)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %v", limit)
	}
	return elapsed
}

func TestRoundTrip(t *testing.T) {
	b := startBackend(t, echo)
	addr, _ := startProxy(t, &Proxy{Backends: static(b.addr)})

	c := dial(t, addr)
	roundTrip(t, c, "SSH-2.0-test\r\n")

	// 10 MiB through the proxy, concurrently written and read back, then half-closed.
	data := make([]byte, 10<<20)
	rng := rand.NewChaCha8([32]byte{1})
	rng.Read(data)
	want := sha256.Sum256(data)

	c.SetDeadline(time.Now().Add(ioTimeout))
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if n != int64(len(data)) {
		t.Fatalf("read %d bytes, want %d", n, len(data))
	}
	if got := h.Sum(nil); !bytes.Equal(got, want[:]) {
		t.Fatalf("sha256 mismatch")
	}
}

func TestSticky(t *testing.T) {
	b1 := startBackend(t, echo)
	b2 := startBackend(t, echo)
	var failovers atomic.Int64
	addr, _ := startProxy(t, &Proxy{
		Backends: static(b1.addr, b2.addr),
		OnConnect: func(_ string, failover bool) {
			if failover {
				failovers.Add(1)
			}
		},
	})
	for i := range 20 {
		c := dial(t, addr)
		roundTrip(t, c, fmt.Sprintf("hello %d", i))
		c.Close()
	}
	if got := b1.accepted.Load(); got != 20 {
		t.Errorf("first backend got %d connections, want 20", got)
	}
	if got := b2.accepted.Load(); got != 0 {
		t.Errorf("second backend got %d connections, want 0", got)
	}
	if got := failovers.Load(); got != 0 {
		t.Errorf("%d failovers, want 0", got)
	}
}

func TestFailover(t *testing.T) {
	dead := refusedAddr(t)
	b2 := startBackend(t, echo)

	var (
		mu        sync.Mutex
		dialErrs  []string
		connected []string
		failovers []bool
	)
	addr, _ := startProxy(t, &Proxy{
		Backends: static(dead, b2.addr),
		OnDialError: func(a string, err error) {
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				t.Error("OnDialError with nil error")
			}
			dialErrs = append(dialErrs, a)
		},
		OnConnect: func(a string, failover bool) {
			mu.Lock()
			defer mu.Unlock()
			connected = append(connected, a)
			failovers = append(failovers, failover)
		},
	})

	c := dial(t, addr)
	roundTrip(t, c, "over to you")
	if got := b2.accepted.Load(); got != 1 {
		t.Fatalf("second backend got %d connections, want 1", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(dialErrs) != 1 || dialErrs[0] != dead {
		t.Errorf("OnDialError addrs = %v, want [%s]", dialErrs, dead)
	}
	if len(connected) != 1 || connected[0] != b2.addr || !failovers[0] {
		t.Errorf("OnConnect = %v %v, want [%s] [true]", connected, failovers, b2.addr)
	}
}

func TestNoBackendReachable(t *testing.T) {
	for name, backends := range map[string]func() []string{
		"refused": static(refusedAddr(t), refusedAddr(t)),
		"empty":   static(),
		"nil":     nil,
	} {
		t.Run(name, func(t *testing.T) {
			var p Proxy
			p.Backends = backends
			addr, _ := startProxy(t, &p)
			c := dial(t, addr)
			if elapsed := expectClosed(t, c, 2*time.Second); elapsed > 2*time.Second {
				t.Errorf("closed after %v", elapsed)
			}
			testwait.For(t, ioTimeout, "Active()==0", func() bool { return p.Active() == 0 })
		})
	}
}

func TestMaxConns(t *testing.T) {
	b := startBackend(t, echo)
	p := &Proxy{Backends: static(b.addr), MaxConns: 2}
	addr, _ := startProxy(t, p)

	c1 := dial(t, addr)
	roundTrip(t, c1, "one")
	c2 := dial(t, addr)
	roundTrip(t, c2, "two")
	if got := p.Active(); got != 2 {
		t.Fatalf("Active() = %d, want 2", got)
	}

	c3 := dial(t, addr)
	expectClosed(t, c3, 2*time.Second)

	roundTrip(t, c1, "still one")
	roundTrip(t, c2, "still two")
	if got := b.accepted.Load(); got != 2 {
		t.Errorf("backend got %d connections, want 2", got)
	}

	// A slot frees up once a client leaves.
	c1.Close()
	testwait.For(t, ioTimeout, "Active()==1", func() bool { return p.Active() == 1 })
	c4 := dial(t, addr)
	roundTrip(t, c4, "four")
}

func TestIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	// The surviving connections send every 50 ms against a second's
	// timeout: only a stall of 950 ms on a loaded machine could close them.
	// (The idle timeout is a real timer on real sockets; no clock to fake.)
	const (
		longIdle = time.Second
		gap      = 50 * time.Millisecond
	)

	t.Run("idle closed", func(t *testing.T) {
		b := startBackend(t, echo)
		addr, _ := startProxy(t, &Proxy{Backends: static(b.addr), IdleTimeout: idle})
		c := dial(t, addr)
		roundTrip(t, c, "x")
		elapsed := expectClosed(t, c, 3*time.Second)
		if elapsed < idle-50*time.Millisecond {
			t.Errorf("closed after %v, before the idle timeout %v", elapsed, idle)
		}
	})

	t.Run("echo traffic survives", func(t *testing.T) {
		b := startBackend(t, echo)
		addr, _ := startProxy(t, &Proxy{Backends: static(b.addr), IdleTimeout: longIdle})
		c := dial(t, addr)
		for end := time.Now().Add(3 * longIdle); time.Now().Before(end); {
			roundTrip(t, c, "tick")
			time.Sleep(gap) // the traffic's pace, below the timeout: not a wait
		}
	})

	t.Run("one-way traffic survives", func(t *testing.T) {
		// The backend only reads until 'q'; the backend->client direction is
		// idle throughout, but traffic the other way must keep it alive.
		b := startBackend(t, func(c *net.TCPConn) {
			buf := make([]byte, 1)
			for {
				if _, err := c.Read(buf); err != nil {
					return
				}
				if buf[0] == 'q' {
					io.WriteString(c, "ok")
					return
				}
			}
		})
		addr, _ := startProxy(t, &Proxy{Backends: static(b.addr), IdleTimeout: longIdle})
		c := dial(t, addr)
		for end := time.Now().Add(3 * longIdle); time.Now().Before(end); {
			if _, err := io.WriteString(c, "a"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(gap) // the traffic's pace, below the timeout: not a wait
		}
		roundTripReply(t, c, "q", "ok")
	})
}

func roundTripReply(t *testing.T, c net.Conn, msg, want string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestHalfClose(t *testing.T) {
	// The backend replies only after it sees EOF from the client.
	b := startBackend(t, func(c *net.TCPConn) {
		data, err := io.ReadAll(c)
		if err != nil {
			return
		}
		fmt.Fprintf(c, "got %d bytes: %s", len(data), data)
	})
	addr, _ := startProxy(t, &Proxy{Backends: static(b.addr)})

	c := dial(t, addr)
	c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(c, "hello"); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	reply, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	if want := "got 5 bytes: hello"; string(reply) != want {
		t.Fatalf("reply %q, want %q", reply, want)
	}
}

func TestListenerFailure(t *testing.T) {
	b := startBackend(t, echo)
	ln := listen(t)
	p := &Proxy{Backends: static(b.addr), Logger: testLogger(t)}
	errc := make(chan error, 1)
	go func() { errc <- p.Serve(context.Background(), ln) }()

	c := dial(t, ln.Addr().String())
	roundTrip(t, c, "hi")
	ln.Close()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("Serve returned nil after listener failure")
		}
	case <-time.After(ioTimeout):
		t.Fatal("Serve did not return after listener failure")
	}
	if got := p.Active(); got != 0 {
		t.Errorf("Active() = %d, want 0", got)
	}
	expectClosed(t, c, 2*time.Second)
}

func TestCancelClosesConnections(t *testing.T) {
	b := startBackend(t, echo)
	before := runtime.NumGoroutine()

	p := &Proxy{Backends: static(b.addr)}
	addr, stop := startProxy(t, p)
	var clients []net.Conn
	for i := range 3 {
		c := dial(t, addr)
		roundTrip(t, c, fmt.Sprint("conn ", i))
		clients = append(clients, c)
	}
	if got := p.Active(); got != 3 {
		t.Fatalf("Active() = %d, want 3", got)
	}

	start := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if elapsed := time.Since(start); elapsed > time.Second {
		t.Errorf("Serve took %v to return after cancel", elapsed)
	}
	if got := p.Active(); got != 0 {
		t.Errorf("Active() = %d after Serve returned, want 0", got)
	}
	for _, c := range clients {
		expectClosed(t, c, 2*time.Second)
		c.Close()
	}

	// Proxy goroutines are gone once Serve returns; the backend's
	// per-connection goroutines notice the closes soon after.
	settled := false
	defer func() {
		if !settled { // testwait failed the test: show who is left
			buf := make([]byte, 1<<20)
			t.Logf("goroutines:\n%s", buf[:runtime.Stack(buf, true)])
		}
	}()
	testwait.For(t, 5*time.Second, fmt.Sprintf("goroutines back to the %d before the proxy started", before), func() bool {
		return runtime.NumGoroutine() <= before
	})
	settled = true
}

func TestCancelDuringDial(t *testing.T) {
	// A backend that never answers the handshake is hard to make on loopback,
	// so block in Backends instead: cancel must still not hang or leak.
	release := make(chan struct{})
	b := startBackend(t, echo)
	p := &Proxy{
		Backends:    func() []string { <-release; return []string{b.addr} },
		OnDialError: func(a string, err error) { t.Errorf("OnDialError(%s, %v) during shutdown", a, err) },
		Logger:      testLogger(t),
	}
	// Serve closes its listener when cancelled: only then may the dial go
	// on, so it always meets a cancelled context.
	ln := &closeSignal{Listener: listen(t), closed: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- p.Serve(ctx, ln) }()
	c := dial(t, ln.Addr().String())
	testwait.For(t, ioTimeout, "Active()==1", func() bool { return p.Active() == 1 })
	go func() { <-ln.closed; close(release) }()
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(ioTimeout):
		t.Fatal("Serve did not return after cancel")
	}
	if got := p.Active(); got != 0 {
		t.Errorf("Active() = %d, want 0", got)
	}
	expectClosed(t, c, 2*time.Second)
}

// closeSignal is a listener that says when it is closed.
type closeSignal struct {
	net.Listener
	once   sync.Once
	closed chan struct{}
}

func (l *closeSignal) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}
