package node

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/charmbracelet/charm/server"
	"github.com/cring-dev/cring/internal/devcluster"
	gossh "golang.org/x/crypto/ssh"
)

// runNode runs a cring node in-process on charm's sqlite, bound to bind
// ("" is charm's default: every interface), until the test ends. It returns
// the node's config and its metadata endpoint's port.
func runNode(t *testing.T, bind string, o Options) (*server.Config, int) {
	t.Helper()
	ports, err := devcluster.FreePorts("127.0.0.1", 5)
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.DefaultConfig()
	cfg.BindAddr, cfg.Host = bind, "127.0.0.1"
	cfg.HTTPPort, cfg.SSHPort, cfg.HealthPort, cfg.StatsPort = ports[0], ports[1], ports[2], ports[3]
	cfg.DataDir = t.TempDir()
	cfg.PublicURL = ""
	o.Config, o.ShutdownTimeout = cfg, time.Second
	o.MetaPort = ports[4]
	o.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	o.Ready = func() { close(ready) }
	go func() { done <- Run(ctx, o) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("node: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("node did not start: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("node not ready in 60s")
	}
	return cfg, o.MetaPort
}

func dialFrom(src, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	return d.Dial("tcp", addr)
}

// sshFrom logs in from src with a fresh key, as a charm client does.
func sshFrom(t *testing.T, src, addr string) (*gossh.Client, error) {
	t.Helper()
	c, err := dialFrom(src, addr)
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
	c.SetDeadline(time.Now().Add(30 * time.Second))
	sc, chans, reqs, err := gossh.NewClientConn(c, addr, &gossh.ClientConfig{
		User: "charm", Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: gossh.InsecureIgnoreHostKey(), //nolint:gosec // a test node's key
	})
	if err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	cl := gossh.NewClient(sc, chans, reqs)
	t.Cleanup(func() { cl.Close() })
	return cl, nil
}

func output(cl *gossh.Client, cmd string) (string, error) {
	s, err := cl.NewSession()
	if err != nil {
		return "", err
	}
	defer s.Close()
	b, err := s.Output(cmd)
	return string(b), err
}

// closedWithin reads c until the peer closes it, or fails after d.
func closedWithin(c net.Conn, d time.Duration) error {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("still open after %s", d)
	}
	return nil
}

// TestNodeSSHBounds: charm's SSH server inside cring node holds at most
// its per-address share for one address's idle TCP connections, serves a
// client from another address meanwhile, and closes connections that never
// authenticate once the handshake timeout passes, while a session that
// authenticated before stays.
func TestNodeSSHBounds(t *testing.T) {
	cfg, _ := runNode(t, "127.0.0.1", Options{SSHMaxConns: 16, SSHMaxConnsPerAddr: 4, SSHHandshakeTimeout: 2 * time.Second})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.SSHPort))

	early, err := sshFrom(t, "127.0.0.4", addr)
	if err != nil {
		t.Fatal(err)
	}
	var idle []net.Conn
	for range 40 {
		c, err := dialFrom("127.0.0.2", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		idle = append(idle, c)
	}
	cl, err := sshFrom(t, "127.0.0.3", addr)
	if err != nil {
		t.Fatalf("a client from another address while one address floods: %v", err)
	}
	if jwt, err := output(cl, "jwt"); err != nil || strings.Count(jwt, ".") != 2 {
		t.Fatalf("jwt = %q, %v", jwt, err)
	}
	for i, c := range idle {
		if err := closedWithin(c, 30*time.Second); err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
	}
	// Its handshake timer started before the flood's and would have fired
	// first: the authenticated session is still open.
	if id, err := output(early, "id"); err != nil || id == "" {
		t.Fatalf("an authenticated session after the handshake timeout: %q, %v", id, err)
	}
}

// TestMetaBindsLoopback: the metadata endpoint listens on loopback by
// default even when charm binds every interface, and where --meta-bind says.
func TestMetaBindsLoopback(t *testing.T) {
	for _, tt := range []struct {
		name, metaBind string
		elsewhere      bool // reachable on 127.0.0.2, another address of the host
	}{
		{name: "default", metaBind: "", elsewhere: false},
		{name: "every interface", metaBind: "0.0.0.0", elsewhere: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, port := runNode(t, "", Options{MetaBind: tt.metaBind})
			for host, want := range map[string]bool{"127.0.0.1": true, "127.0.0.2": tt.elsewhere} {
				c, err := net.DialTimeout("tcp", net.JoinHostPort(host, strconv.Itoa(port)), 5*time.Second)
				if err == nil {
					c.Close()
				}
				if got := err == nil; got != want {
					t.Errorf("metadata endpoint on %s reachable: %v (%v), want %v", host, got, err, want)
				}
			}
		})
	}
}
