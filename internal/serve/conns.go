package serve

import (
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/cring-dev/cring/internal/sshproxy"
)

// connLimit bounds the HTTP connections in total and per source address
// (--max-conns, --max-conns-per-address): an idle connection costs a file
// descriptor and memory until the server's timeouts end it, so one address
// opening thousands must not take them from everyone.
type connLimit struct {
	net.Listener
	slots *sshproxy.Slots
	// refuse, when set, may answer a refused connection before it is
	// closed (plain HTTP: a 429 or 503 the client can read).
	refuse   func(c net.Conn, reason string)
	rejected func(reason string)
}

func (l *connLimit) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		release, reason := l.slots.Take(c.RemoteAddr())
		if reason == "" {
			return &slotConn{Conn: c, release: release}, nil
		}
		if l.rejected != nil {
			l.rejected(reason)
		}
		if l.refuse != nil {
			l.refuse(c, reason)
		}
		_ = c.Close()
	}
}

// slotConn gives its slot back when closed.
type slotConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// refuseHTTP answers a refused plain-HTTP connection in one short write (a
// fresh socket's buffer takes it at once; the deadline is only a guard).
func refuseHTTP(c net.Conn, reason string) {
	status, body := "429 Too Many Requests", `{"message":"too many connections from your address (--max-conns-per-address)"}`
	if reason == sshproxy.RejectMaxConns {
		status, body = "503 Service Unavailable", `{"message":"the proxy is serving its limit of connections (--max-conns); retry shortly"}`
	}
	_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = c.Write([]byte("HTTP/1.1 " + status + "\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body))
}
