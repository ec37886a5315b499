package serve

import (
	"context"
	"errors"
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

// nodeConn is a connection to a node that writes request bodies without a
// buffer of its own where it can. The transport streams every request body
// through its connection's ReadFrom, as the body under an io.LimitedReader
// of its Content-Length. A body that writes itself (the proxy's streamed
// upload to each replica, a small body's bytes.Reader) is written straight
// to the socket: no copy, no buffer held while a slow client's upload is in
// flight. Any other body is copied through a pooled buffer (a TCP
// connection's own ReadFrom, with no splice or sendfile to use, allocates
// a new 32 KiB buffer for every request).
type nodeConn struct{ net.Conn }

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

func (c nodeConn) ReadFrom(r io.Reader) (int64, error) {
	if lr, ok := r.(*io.LimitedReader); ok {
		if wt, ok := lr.R.(io.WriterTo); ok {
			n, err := wt.WriteTo(&limitedWriter{w: c.Conn, n: lr.N})
			lr.N -= n
			return n, err
		}
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	return io.CopyBuffer(writerOnly{c.Conn}, r, *bp)
}

// errBodyTooLong: a body went on past its Content-Length (the transport,
// copying through its limit, fails such a request too).
var errBodyTooLong = errors.New("request body longer than its Content-Length")

// limitedWriter passes on at most n bytes.
type limitedWriter struct {
	w io.Writer
	n int64
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if int64(len(p)) <= l.n {
		n, err := l.w.Write(p)
		l.n -= int64(n)
		return n, err
	}
	n, err := l.w.Write(p[:l.n])
	l.n -= int64(n)
	if err == nil {
		err = errBodyTooLong
	}
	return n, err
}

// writerOnly hides the connection's own ReadFrom from io.CopyBuffer.
type writerOnly struct{ io.Writer }
