package node

import (
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/charmbracelet/charm/server"
	"github.com/charmbracelet/ssh"
	"github.com/cring-dev/cring/internal/sshproxy"
	gossh "golang.org/x/crypto/ssh"
)

// Defaults of the node's SSH bounds. A proxy's connections all come from
// its address, so one address may hold a whole proxy's worth (its default
// total); the total leaves room for several proxies.
const (
	DefaultSSHMaxConns         = 4096
	DefaultSSHMaxConnsPerAddr  = 1024
	DefaultSSHHandshakeTimeout = 30 * time.Second
)

// guardSSH bounds charm's SSH server, which has no bound of its own: its
// connections in total and per source address, and the time a client has
// to authenticate (an idle TCP connection was held until the client left).
func guardSSH(srv *server.Server, slots *sshproxy.Slots, timeout time.Duration, log *slog.Logger) error {
	ss, err := charmSSHServer(srv)
	if err != nil {
		return fmt.Errorf("ssh bounds: %w", err)
	}
	type guardKey struct{}
	prevConn := ss.ConnCallback
	ss.ConnCallback = func(ctx ssh.Context, c net.Conn) net.Conn {
		if prevConn != nil {
			if c = prevConn(ctx, c); c == nil {
				return nil
			}
		}
		release, reason := slots.Take(c.RemoteAddr())
		if reason != "" {
			log.Debug("ssh: closing client connection", "reason", reason, "client", c.RemoteAddr().String())
			return nil // charm's server closes it
		}
		g := &guardedConn{Conn: c, release: release}
		g.timer = time.AfterFunc(timeout, func() {
			if !g.authed.Load() {
				log.Debug("ssh: closing client connection", "reason", sshproxy.RejectHandshake, "client", c.RemoteAddr().String())
				_ = c.Close() // fails the handshake; charm's server then closes g
			}
		})
		ctx.SetValue(guardKey{}, g)
		return g
	}
	prevCfg := ss.ServerConfigCallback
	ss.ServerConfigCallback = func(ctx ssh.Context) *gossh.ServerConfig {
		cfg := &gossh.ServerConfig{}
		if prevCfg != nil {
			cfg = prevCfg(ctx)
		}
		prevLog := cfg.AuthLogCallback
		// Called after every authentication attempt; nil error: the
		// handshake is done.
		cfg.AuthLogCallback = func(md gossh.ConnMetadata, method string, err error) {
			if g, ok := ctx.Value(guardKey{}).(*guardedConn); ok && err == nil {
				g.authed.Store(true)
				g.timer.Stop()
			}
			if prevLog != nil {
				prevLog(md, method, err)
			}
		}
		return cfg
	}
	return nil
}

// guardedConn gives its slot back when closed.
type guardedConn struct {
	net.Conn
	release func()
	timer   *time.Timer
	authed  atomic.Bool
	once    sync.Once
}

func (g *guardedConn) Close() error {
	err := g.Conn.Close()
	g.once.Do(func() {
		g.timer.Stop()
		g.release()
	})
	return err
}
