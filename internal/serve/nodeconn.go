package serve

import (
	"context"
	"io"
	"net"
	"sync"
)

// Node connections' buffers (docs/performance.md, "Memory per upload"):
// an upload in flight holds one connection to every replica, so what a
// connection costs is paid three times per upload.
const (
	// nodeBufSize is the transport's read and write buffer per node
	// connection: a 4 KiB file's request (or answer) and its headers fit
	// in one write (or read); bodies larger than it bypass it.
	nodeBufSize = 8 << 10
	// copyBufSize is what a request body is copied to a node through: a
	// smaller one costs large uploads a write call per copy (16 KiB took
	// 25% more of the proxy's CPU per 64 MiB upload).
	copyBufSize = 32 << 10
)

// dialNode dials a node with d and wraps the connection in a nodeConn.
func dialNode(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return nodeConn{c}, nil
	}
}

// nodeConn is a connection to a node whose ReadFrom copies through a pooled
// buffer. The transport streams every request body through its
// connection's ReadFrom; a TCP connection's own, given a pipe (no splice
// or sendfile applies), allocates a new 32 KiB buffer for every request:
// garbage for every upload, and for every small write's body.
type nodeConn struct{ net.Conn }

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

func (c nodeConn) ReadFrom(r io.Reader) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	return io.CopyBuffer(writerOnly{c.Conn}, r, *bp)
}

// writerOnly hides the connection's own ReadFrom from io.CopyBuffer.
type writerOnly struct{ io.Writer }
