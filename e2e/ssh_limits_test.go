package e2e

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/cluster"
	"github.com/cring-dev/cring/internal/config"
	gossh "golang.org/x/crypto/ssh"
)

// TestSSHSlotsPerAddress: one address opening many idle TCP connections to
// the proxy's SSH port (no SSH at all) holds only its own share of the
// slots, so another client's charm session (jwt, as `charm jwt` asks) goes
// through; the idle ones are closed by the handshake timeout.
func TestSSHSlotsPerAddress(t *testing.T) {
	dc, httpAddr, sshAddr, admin := localNodes(t, 2)
	cfg := &config.Config{
		PublicURL:             dc.PublicURL,
		Address:               httpAddr,
		SSHProxyAddress:       sshAddr,
		AdminAddress:          admin,
		HealthInterval:        200 * time.Millisecond,
		DataDir:               t.TempDir(),
		SSHMaxConns:           16,
		SSHMaxConnsPerAddress: 4,
		SSHHandshakeTimeout:   2 * time.Second,
	}
	for _, n := range dc.Nodes {
		cfg.Nodes = append(cfg.Nodes, cluster.Node{Name: n.Name, URL: n.HTTPURL(), SSH: n.SSHAddr(), Health: n.HealthURL()})
	}
	p := serveInProcess(t, cfg)

	// More idle connections from 127.0.0.2 than there are slots at all.
	var idle []net.Conn
	for range 40 {
		c, err := dialSSHFrom("127.0.0.2", p.sshAddr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		idle = append(idle, c)
	}
	start := time.Now()
	jwt, err := charmJWTFrom("127.0.0.3", p.sshAddr)
	if err != nil {
		t.Fatalf("a charm session from another address while one address floods: %v", err)
	}
	if strings.Count(jwt, ".") != 2 {
		t.Fatalf("jwt answered %q", jwt)
	}
	// Every idle connection is closed: 36 at once, the 4 let in when the
	// handshake timeout ends them.
	for i, c := range idle {
		if err := closedWithin(c, 30*time.Second); err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
	}
	t.Logf("the flood's connections all closed %s after the session", time.Since(start).Round(time.Millisecond))
	// And the address gets its slots back.
	if _, err := charmJWTFrom("127.0.0.2", p.sshAddr); err != nil {
		t.Fatalf("a session from the flooding address after its connections closed: %v", err)
	}
}

func dialSSHFrom(src, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	return d.Dial("tcp", addr)
}

// charmJWTFrom asks for a JWT over SSH from the loopback address src with a
// fresh key, as charm's client does (the node creates the account).
func charmJWTFrom(src, addr string) (string, error) {
	c, err := dialSSHFrom(src, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", err
	}
	signer, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		return "", err
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	sc, chans, reqs, err := gossh.NewClientConn(c, addr, &gossh.ClientConfig{
		User: "charm", Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: gossh.InsecureIgnoreHostKey(), //nolint:gosec // test nodes' key
	})
	if err != nil {
		return "", fmt.Errorf("ssh handshake: %w", err)
	}
	cl := gossh.NewClient(sc, chans, reqs)
	defer cl.Close()
	s, err := cl.NewSession()
	if err != nil {
		return "", err
	}
	defer s.Close()
	out, err := s.Output("jwt")
	return string(out), err
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
