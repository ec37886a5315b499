// Package sshproxy is the SSH front door of the replicating Charm proxy.
//
// It does not terminate SSH: each client TCP connection is spliced byte for
// byte to one backend. The backend is always the first reachable candidate in
// the order given by the caller (a sticky primary, never round-robin), because
// pairing two sessions with `charm link` only works when both land on the same
// backend.
//
// Connections are bounded in total and per source address, and one whose
// client has not finished its SSH key exchange within the handshake timeout
// is closed: idle TCP connections from one address can't take every slot.
package sshproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

const (
	defaultDialTimeout      = 5 * time.Second
	defaultIdleTimeout      = 10 * time.Minute
	defaultMaxConns         = 1024
	defaultMaxConnsPerAddr  = 64
	defaultHandshakeTimeout = 30 * time.Second
)

// Proxy forwards TCP connections to the first reachable backend.
type Proxy struct {
	// Backends returns candidate backend addresses ("host:port") in the order to try: the caller
	// puts healthy nodes first in configured order. Called once per accepted connection.
	Backends    func() []string
	DialTimeout time.Duration // per backend dial; default 5s when zero
	IdleTimeout time.Duration // close both sides when no bytes flow either way for this long; default 10m when zero
	MaxConns    int           // concurrent client connections; default 1024 when zero; extra connections are closed at once (logged)
	// MaxConnsPerAddr bounds the concurrent connections from one source
	// address (an IPv6 /64 counts as one); default 64 when zero.
	MaxConnsPerAddr int
	// HandshakeTimeout closes a connection whose client has not finished
	// its SSH key exchange this long after its backend answered; default
	// 30s when zero.
	HandshakeTimeout time.Duration
	Logger           *slog.Logger // log/slog; nil means slog.Default()
	// OnDialError, if set, is called when a backend cannot be dialed (so the caller can mark it down).
	OnDialError func(addr string, err error)
	// OnConnect, if set, is called with the backend chosen for a connection and whether it was a failover (not the first candidate).
	OnConnect func(addr string, failover bool)
	// OnReject, if set, is called when a client connection is closed
	// unproxied, with one of the Reject* reasons.
	OnReject func(reason string)

	active atomic.Int64
}

// Active returns the number of client connections currently proxied.
func (p *Proxy) Active() int { return int(p.active.Load()) }

func (p *Proxy) logger() *slog.Logger {
	if p.Logger != nil {
		return p.Logger
	}
	return slog.Default()
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// Serve accepts on ln until ctx is cancelled or ln fails; on return all proxied connections are closed
// and their goroutines have exited. Returns nil when stopped by ctx.
func (p *Proxy) Serve(ctx context.Context, ln net.Listener) error {
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	srv := &server{
		p:        p,
		ctx:      ctx,
		log:      p.logger(),
		dialTO:   orDefault(p.DialTimeout, defaultDialTimeout),
		idleTO:   orDefault(p.IdleTimeout, defaultIdleTimeout),
		kexTO:    orDefault(p.HandshakeTimeout, defaultHandshakeTimeout),
		sessions: make(map[*session]struct{}),
	}
	slots := &Slots{Max: p.MaxConns, PerAddr: p.MaxConnsPerAddr}
	if slots.Max <= 0 {
		slots.Max = defaultMaxConns
	}
	if slots.PerAddr <= 0 {
		slots.PerAddr = defaultMaxConnsPerAddr
	}

	var wg sync.WaitGroup
	// Closing the listener is the only way to unblock Accept on cancel.
	wg.Go(func() {
		<-ctx.Done()
		_ = ln.Close()
	})
	defer func() {
		cancel() // aborts in-flight dials and stops the listener watcher
		srv.closeAll()
		wg.Wait()
	}()

	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if parent.Err() != nil {
				return nil
			}
			if isTemporary(err) {
				// E.g. EMFILE: back off instead of spinning or giving up (as net/http does).
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				srv.log.Warn("sshproxy: accept failed; retrying", "err", err, "delay", backoff)
				select {
				case <-time.After(backoff):
					continue
				case <-ctx.Done():
					return nil
				}
			}
			return fmt.Errorf("sshproxy: accept: %w", err)
		}
		backoff = 0

		release, reason := slots.Take(c.RemoteAddr())
		if reason != "" {
			_ = c.Close()
			srv.reject(reason, "client", c.RemoteAddr().String(), "max_conns", slots.Max, "max_conns_per_address", slots.PerAddr)
			continue
		}
		p.active.Add(1)
		s := &session{client: c}
		if !srv.add(s) {
			// Unreachable while we are still accepting, but keep the count honest.
			p.active.Add(-1)
			release()
			continue
		}
		wg.Go(func() {
			defer release()
			defer p.active.Add(-1)
			defer srv.remove(s)
			defer s.close()
			srv.handle(s)
		})
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary() && !errors.Is(err, net.ErrClosed)
}

// server is the per-Serve state; it lets Serve close every live session on return.
type server struct {
	p      *Proxy
	ctx    context.Context
	log    *slog.Logger
	dialTO time.Duration
	idleTO time.Duration
	kexTO  time.Duration

	lastRejectLog atomic.Int64 // unix nanoseconds: a flood logs once a second, counts every one

	mu       sync.Mutex
	sessions map[*session]struct{}
	closing  bool
}

// reject reports a connection closed unproxied.
func (srv *server) reject(reason string, attrs ...any) {
	if srv.p.OnReject != nil {
		srv.p.OnReject(reason)
	}
	now := time.Now().UnixNano()
	if last := srv.lastRejectLog.Load(); now-last >= int64(time.Second) && srv.lastRejectLog.CompareAndSwap(last, now) {
		srv.log.Warn("sshproxy: closing client connection", append([]any{"reason", reason}, attrs...)...)
	}
}

func (srv *server) add(s *session) bool {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.closing {
		s.close()
		return false
	}
	srv.sessions[s] = struct{}{}
	return true
}

func (srv *server) remove(s *session) {
	srv.mu.Lock()
	delete(srv.sessions, s)
	srv.mu.Unlock()
}

func (srv *server) closeAll() {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	srv.closing = true
	for s := range srv.sessions {
		s.close()
	}
}

// session is one client connection and, once dialed, its backend connection.
type session struct {
	mu      sync.Mutex
	client  net.Conn
	backend net.Conn
	closed  bool
}

// setBackend records the backend; if the session was closed meanwhile (shutdown) it closes c.
func (s *session) setBackend(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		_ = c.Close()
		return false
	}
	s.backend = c
	return true
}

// close closes both sides; safe to call from any goroutine, any number of times.
func (s *session) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	_ = s.client.Close()
	if s.backend != nil {
		_ = s.backend.Close()
	}
}

func (srv *server) handle(s *session) {
	// A panicking caller callback must not take down the whole front door.
	defer func() {
		if r := recover(); r != nil {
			srv.log.Error("sshproxy: panic while proxying", "client", s.client.RemoteAddr().String(), "panic", r)
		}
	}()
	clientAddr := s.client.RemoteAddr().String()

	backend, addr, failover, err := srv.dial()
	if err != nil {
		if srv.ctx.Err() == nil {
			srv.log.Warn("sshproxy: no backend reachable; closing client", "client", clientAddr, "err", err)
			if srv.p.OnReject != nil {
				srv.p.OnReject(RejectNoBackend)
			}
		}
		return
	}
	if !s.setBackend(backend) {
		return
	}
	if srv.p.OnConnect != nil {
		srv.p.OnConnect(addr, failover)
	}
	srv.log.Debug("sshproxy: proxying", "client", clientAddr, "backend", addr, "failover", failover)

	start := time.Now()
	up, down, reason := srv.pipe(s, backend)
	if reason == reasonHandshake {
		srv.reject(RejectHandshake, "client", clientAddr, "handshake_timeout", srv.kexTO)
	}
	srv.log.Debug("sshproxy: connection closed", "client", clientAddr, "backend", addr,
		"bytes_up", up, "bytes_down", down, "duration", time.Since(start), "reason", reason)
}

// dial tries each candidate in order and returns the first that connects.
func (srv *server) dial() (net.Conn, string, bool, error) {
	var candidates []string
	if srv.p.Backends != nil {
		candidates = srv.p.Backends()
	}
	if len(candidates) == 0 {
		return nil, "", false, errors.New("no backends configured")
	}
	d := net.Dialer{Timeout: srv.dialTO}
	var errs []error
	for i, addr := range candidates {
		c, err := d.DialContext(srv.ctx, "tcp", addr)
		if err == nil {
			return c, addr, i > 0, nil
		}
		if srv.ctx.Err() != nil {
			// Shutting down: not the backend's fault, so don't report it as down.
			return nil, "", false, srv.ctx.Err()
		}
		if srv.p.OnDialError != nil {
			srv.p.OnDialError(addr, err)
		}
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
	}
	return nil, "", false, errors.Join(errs...)
}

type closeWriter interface{ CloseWrite() error }

const reasonHandshake = "handshake timeout"

// pipe copies both directions until both end, closing the session when idle
// for idleTO, or when the client has not finished its key exchange within
// kexTO. It returns the bytes copied each way and why it ended.
func (srv *server) pipe(s *session, backend net.Conn) (up, down int64, reason string) {
	// Activity is a shared timestamp so traffic in either direction keeps the
	// connection alive. A watchdog timer (rather than per-conn read deadlines)
	// also catches writes blocked on a peer that stopped reading, and costs one
	// atomic store per Read instead of a SetDeadline syscall.
	start := time.Now()
	var last atomic.Int64 // time.Since(start) of the latest read, monotonic
	type result struct {
		up  bool
		n   int64
		err error
	}
	done := make(chan result, 2)
	var kex kexWatch
	var kexDone atomic.Bool
	half := func(dst, src net.Conn, up bool) {
		ar := &activityReader{r: src, start: start, last: &last}
		if up {
			ar.kex, ar.kexDone = &kex, &kexDone
		}
		n, err := io.Copy(dst, ar)
		if err == nil {
			// Clean EOF: forward the half-close so SSH can finish its
			// shutdown exchange in the other direction.
			if cw, ok := dst.(closeWriter); !ok || cw.CloseWrite() != nil {
				s.close()
			}
		} else {
			s.close()
		}
		done <- result{up, n, err}
	}
	go half(backend, s.client, true)
	go half(s.client, backend, false)

	timer := time.NewTimer(srv.idleTO)
	defer timer.Stop()
	kexTimer := time.NewTimer(srv.kexTO)
	defer kexTimer.Stop()
	ctxDone := srv.ctx.Done()
	for pending := 2; pending > 0; {
		select {
		case r := <-done:
			pending--
			if r.up {
				up = r.n
			} else {
				down = r.n
			}
			if reason == "" && r.err != nil {
				reason = r.err.Error()
			}
		case <-timer.C:
			idle := time.Since(start) - time.Duration(last.Load())
			if idle >= srv.idleTO {
				if reason == "" {
					reason = "idle timeout"
				}
				s.close() // unblocks both copies; the timer is not re-armed
			} else {
				timer.Reset(srv.idleTO - idle)
			}
		case <-kexTimer.C:
			if !kexDone.Load() {
				if reason == "" {
					reason = reasonHandshake
				}
				s.close()
			}
		case <-ctxDone:
			// closeAll closes the session too; doing it here just labels the log line.
			ctxDone = nil
			if reason == "" {
				reason = "shutdown"
			}
			s.close()
		}
	}
	if reason == "" {
		reason = "eof"
	}
	return up, down, reason
}

// activityReader records the time of every successful Read and, on the
// client's side, follows its key exchange until it is done.
type activityReader struct {
	r       io.Reader
	start   time.Time
	last    *atomic.Int64
	kex     *kexWatch // nil: not watched
	kexDone *atomic.Bool
}

func (a *activityReader) Read(b []byte) (int, error) {
	n, err := a.r.Read(b)
	if n > 0 {
		a.last.Store(int64(time.Since(a.start)))
		if a.kex != nil && !a.kex.done() {
			a.kex.feed(b[:n])
			if a.kex.done() {
				a.kexDone.Store(true)
			}
		}
	}
	return n, err
}
