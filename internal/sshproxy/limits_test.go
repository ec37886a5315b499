package sshproxy

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/cring-dev/cring/internal/testwait"
)

// sshBackend is a real SSH server (x/crypto/ssh) on loopback that, like
// charm's, takes any public key and answers each exec request with one line.
func sshBackend(t *testing.T) string {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &gossh.ServerConfig{
		PublicKeyCallback: func(gossh.ConnMetadata, gossh.PublicKey) (*gossh.Permissions, error) { return nil, nil },
	}
	cfg.AddHostKey(signer)
	b := startBackend(t, func(c *net.TCPConn) {
		sc, chans, reqs, err := gossh.NewServerConn(c, cfg)
		if err != nil {
			return
		}
		defer sc.Close()
		go gossh.DiscardRequests(reqs)
		for nc := range chans {
			ch, creqs, err := nc.Accept()
			if err != nil {
				return
			}
			go func() {
				defer ch.Close()
				for r := range creqs {
					if r.Type != "exec" {
						r.Reply(false, nil)
						continue
					}
					r.Reply(true, nil)
					var cmd struct{ Command string }
					_ = gossh.Unmarshal(r.Payload, &cmd)
					fmt.Fprintf(ch, "ran %s\n", cmd.Command)
					ch.SendRequest("exit-status", false, gossh.Marshal(struct{ Status uint32 }{0}))
					return
				}
			}()
		}
	})
	return b.addr
}

// dialFrom opens a TCP connection to addr from the loopback address src
// (127.0.0.0/8 is all local on Linux), so tests can be several clients.
func dialFrom(t *testing.T, src, addr string) (*net.TCPConn, error) {
	t.Helper()
	d := net.Dialer{Timeout: ioTimeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn), nil
}

// sshFrom is an SSH client from src through addr, with a fresh key as a
// charm client has; rec, when set, gets every byte the client sends.
func sshFrom(t *testing.T, src, addr string, rec *recorder) (*gossh.Client, error) {
	t.Helper()
	c, err := dialFrom(t, src, addr)
	if err != nil {
		return nil, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	var conn net.Conn = c
	if rec != nil {
		conn = &recordingConn{Conn: c, rec: rec}
	}
	conn.SetDeadline(time.Now().Add(ioTimeout))
	sc, chans, reqs, err := gossh.NewClientConn(conn, addr, &gossh.ClientConfig{
		User: "charm", Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: gossh.InsecureIgnoreHostKey(), //nolint:gosec // a test server's throwaway key
	})
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	cl := gossh.NewClient(sc, chans, reqs)
	t.Cleanup(func() { cl.Close() })
	return cl, nil
}

func run(cl *gossh.Client, cmd string) (string, error) {
	s, err := cl.NewSession()
	if err != nil {
		return "", err
	}
	defer s.Close()
	out, err := s.Output(cmd)
	return string(out), err
}

type rejects struct {
	mu sync.Mutex
	n  map[string]int
}

func (r *rejects) add(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == nil {
		r.n = map[string]int{}
	}
	r.n[reason]++
}

func (r *rejects) get(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[reason]
}

// TestSlotsPerAddress: one address opening many idle TCP connections holds
// at most its share of the slots; a client from another address still gets
// its SSH session.
func TestSlotsPerAddress(t *testing.T) {
	var rej rejects
	p := &Proxy{Backends: static(sshBackend(t)), MaxConns: 8, MaxConnsPerAddr: 3,
		HandshakeTimeout: time.Hour, OnReject: rej.add}
	addr, _ := startProxy(t, p)

	const flood = 20
	var held []*net.TCPConn
	for range flood {
		c, err := dialFrom(t, "127.0.0.2", addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	testwait.For(t, ioTimeout, "the flood's extra connections refused", func() bool {
		return rej.get(RejectMaxConnsPerAddr) == flood-3
	})
	if got := p.Active(); got != 3 {
		t.Fatalf("Active() = %d with one address flooding, want its 3", got)
	}
	cl, err := sshFrom(t, "127.0.0.3", addr, nil)
	if err != nil {
		t.Fatalf("another address's SSH session during the flood: %v", err)
	}
	if out, err := run(cl, "jwt"); err != nil || out != "ran jwt\n" {
		t.Fatalf("jwt = %q, %v", out, err)
	}
	if n := rej.get(RejectMaxConns); n != 0 {
		t.Errorf("%d connections refused for the total bound", n)
	}
	// The flood's three are still open (the handshake timeout is long
	// here): they read the backend's version line, or wait.
	open := 0
	for _, c := range held {
		c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		_, err := c.Read(make([]byte, 64))
		if ne, ok := err.(net.Error); err == nil || ok && ne.Timeout() {
			open++
		}
	}
	if open != 3 {
		t.Errorf("%d of the flood's connections open, want 3", open)
	}
}

// TestHandshakeTimeout: connections whose client never finishes its key
// exchange (idle, stalled after its version line or mid key exchange, not
// SSH at all) are closed after the handshake timeout; a session that
// finished its handshake before the timeout stays open past it.
func TestHandshakeTimeout(t *testing.T) {
	var rej rejects
	const timeout = 300 * time.Millisecond
	p := &Proxy{Backends: static(sshBackend(t)), HandshakeTimeout: timeout, OnReject: rej.add}
	addr, _ := startProxy(t, p)

	cl, err := sshFrom(t, "127.0.0.3", addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, tt := range []struct {
		name string
		send string
	}{
		{"idle", ""},
		{"version line only", "SSH-2.0-stall\r\n"},
		{"mid key exchange", "SSH-2.0-stall\r\n\x00\x00\x01\x00\x04\x14partial"},
		{"not ssh", "GET / HTTP/1.1\r\n\r\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := dialFrom(t, "127.0.0.2", addr)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write([]byte(tt.send)); err != nil {
				t.Fatal(err)
			}
			expectClosed(t, c, 30*time.Second)
			testwait.For(t, ioTimeout, "the rejection counted", func() bool { return rej.get(RejectHandshake) == i+1 })
		})
	}
	// The session's own handshake timer fired before the first of those
	// (it started earlier): it is still usable.
	if out, err := run(cl, "id"); err != nil || out != "ran id\n" {
		t.Fatalf("session after the handshake timeout: %q, %v", out, err)
	}
}

// recorder keeps the bytes a client wrote.
type recorder struct {
	mu  sync.Mutex
	buf []byte
}

type recordingConn struct {
	net.Conn
	rec *recorder
}

func (c *recordingConn) Write(b []byte) (int, error) {
	c.rec.mu.Lock()
	c.rec.buf = append(c.rec.buf, b...)
	c.rec.mu.Unlock()
	return c.Conn.Write(b)
}

// TestKexWatch: a real client's bytes, fed in any chunking, end the key
// exchange exactly once its NEWKEYS is in; none of its prefixes do.
func TestKexWatch(t *testing.T) {
	rec := &recorder{}
	b := sshBackend(t)
	cl, err := sshFrom(t, "127.0.0.1", b, rec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := run(cl, "id"); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	stream := append([]byte(nil), rec.buf...)
	rec.mu.Unlock()
	// Where NEWKEYS ends: the shortest prefix that completes.
	end := -1
	for n := range len(stream) + 1 {
		var k kexWatch
		k.feed(stream[:n])
		if k.done() {
			end = n
			break
		}
	}
	if end < 0 {
		t.Fatalf("a real client's %d bytes never finished the key exchange", len(stream))
	}
	for _, chunk := range []int{1, 2, 5, 7, 64, 4096} {
		var k kexWatch
		for off := 0; off < len(stream); off += chunk {
			k.feed(stream[off:min(off+chunk, len(stream))])
			if got, want := k.done(), min(off+chunk, len(stream)) >= end; got != want {
				t.Fatalf("chunks of %d: done=%v after %d bytes, NEWKEYS ends at %d", chunk, got, off+chunk, end)
			}
		}
	}
}
