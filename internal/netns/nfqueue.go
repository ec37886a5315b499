package netns

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// This kernel has no netem qdisc (CONFIG_NET_SCH_NETEM is off on the
// project's machines), so latency is made with NFQUEUE: a firewall rule
// hands each matching packet to a netlink queue, and this process gives
// the verdict "accept" only once the packet has waited its delay. The
// packet stays in the kernel meanwhile; only its id comes here.

// nfnetlink_queue's message types, attributes and values
// (linux/netfilter/nfnetlink_queue.h), which x/sys does not define.
const (
	nfqnlMsgPacket       = 0
	nfqnlMsgConfig       = 2
	nfqnlMsgVerdictBatch = 3

	nfqaPacketHdr  = 1
	nfqaVerdictHdr = 2

	nfqaCfgCmd      = 1
	nfqaCfgParams   = 2
	nfqaCfgQueueMax = 3
	nfqaCfgMask     = 4
	nfqaCfgFlags    = 5

	nfqnlCfgCmdBind  = 1
	nfqnlCopyMeta    = 1
	nfqaCfgFFailOpen = 1

	nfAccept = 1

	nlmsgHdrLen = 16
	nfgenHdrLen = 4
)

// delayQueue holds every packet of one queue for a fixed delay.
type delayQueue struct {
	num   uint16
	delay time.Duration
	file  *os.File // the netlink socket, non-blocking, in the host's namespace
	raw   syscall.RawConn

	mu      sync.Mutex
	pending []held // in arrival order: ids grow, due times too
	last    uint32 // the newest id seen
	wake    chan struct{}
	closed  chan struct{}
	done    sync.WaitGroup
	seq     uint32
}

type held struct {
	id  uint32
	due time.Time
}

// openDelayQueue binds queue num in the namespace at nsfd and starts
// releasing its packets d after they arrive.
func openDelayQueue(nsfd int, num uint16, d time.Duration) (*delayQueue, error) {
	var fd int
	err := inNS(nsfd, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_NETFILTER)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("nfqueue %d: netlink socket: %w", num, err)
	}
	// A full socket buffer would strand packets in the kernel without a
	// verdict: make it large, and never fail reads with ENOBUFS.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_NO_ENOBUFS, 1)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("nfqueue %d: bind netlink socket: %w", num, err)
	}
	q := &delayQueue{num: num, delay: d, file: os.NewFile(uintptr(fd), fmt.Sprintf("nfqueue-%d", num)),
		wake: make(chan struct{}, 1), closed: make(chan struct{})}
	if q.raw, err = q.file.SyscallConn(); err != nil {
		q.file.Close()
		return nil, fmt.Errorf("nfqueue %d: %w", num, err)
	}
	if err := q.configure(); err != nil {
		q.file.Close()
		return nil, err
	}
	q.done.Add(2)
	go q.receive()
	go q.release()
	return q, nil
}

// configure binds the queue to this socket: metadata only (the verdict
// needs the packet id, not its bytes), room for 64k packets, and packets
// accepted rather than dropped should the queue ever be full.
func (q *delayQueue) configure() error {
	be32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	msgs := [][]byte{
		q.message(nfqnlMsgConfig, unix.NLM_F_REQUEST|unix.NLM_F_ACK,
			attr(nfqaCfgCmd, []byte{nfqnlCfgCmdBind, 0, 0, unix.AF_INET})),
		q.message(nfqnlMsgConfig, unix.NLM_F_REQUEST|unix.NLM_F_ACK,
			attr(nfqaCfgParams, append(be32(0), nfqnlCopyMeta)),
			attr(nfqaCfgQueueMax, be32(1<<16)),
			attr(nfqaCfgMask, be32(nfqaCfgFFailOpen)),
			attr(nfqaCfgFlags, be32(nfqaCfgFFailOpen))),
	}
	for _, m := range msgs {
		if err := q.send(m); err != nil {
			return fmt.Errorf("nfqueue %d: configure: %w", q.num, err)
		}
		if err := q.readAck(); err != nil {
			return fmt.Errorf("nfqueue %d: configure: %w", q.num, err)
		}
	}
	return nil
}

// message builds one nfnetlink message of type typ for this queue.
func (q *delayQueue) message(typ uint16, flags uint16, attrs ...[]byte) []byte {
	q.seq++
	b := make([]byte, nlmsgHdrLen, 64)
	b = append(b, unix.AF_UNSPEC, unix.NFNETLINK_V0)
	b = binary.BigEndian.AppendUint16(b, q.num)
	for _, a := range attrs {
		b = append(b, a...)
	}
	binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:], unix.NFNL_SUBSYS_QUEUE<<8|typ)
	binary.NativeEndian.PutUint16(b[6:], flags)
	binary.NativeEndian.PutUint32(b[8:], q.seq)
	return b
}

// attr is one netlink attribute, padded to four bytes.
func attr(typ uint16, payload []byte) []byte {
	b := binary.NativeEndian.AppendUint16(nil, uint16(4+len(payload)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func (q *delayQueue) send(msg []byte) error {
	var serr error
	err := q.raw.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN
	})
	if err != nil {
		return err
	}
	return serr
}

// readAck waits for the kernel's answer to a configuration message.
func (q *delayQueue) readAck() error {
	buf := make([]byte, 8192)
	q.file.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer q.file.SetReadDeadline(time.Time{})
	for {
		n, err := q.recv(buf)
		if err != nil {
			return fmt.Errorf("read ack: %w", err)
		}
		for m := range messages(buf[:n]) {
			if binary.NativeEndian.Uint16(m[4:]) != unix.NLMSG_ERROR || len(m) < nlmsgHdrLen+4 {
				continue
			}
			if errno := int32(binary.NativeEndian.Uint32(m[nlmsgHdrLen:])); errno != 0 {
				return syscall.Errno(-errno)
			}
			return nil
		}
	}
}

func (q *delayQueue) recv(buf []byte) (int, error) {
	var n int
	var rerr error
	err := q.raw.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), buf, 0)
		return rerr != unix.EAGAIN
	})
	if err != nil {
		return 0, err
	}
	return n, rerr
}

// messages yields each netlink message in b.
func messages(b []byte) func(func([]byte) bool) {
	return func(yield func([]byte) bool) {
		for len(b) >= nlmsgHdrLen {
			l := int(binary.NativeEndian.Uint32(b))
			if l < nlmsgHdrLen || l > len(b) {
				return
			}
			if !yield(b[:l]) {
				return
			}
			b = b[min(len(b), (l+3)&^3):]
		}
	}
}

// receive records every queued packet's id with the time it is due.
func (q *delayQueue) receive() {
	defer q.done.Done()
	buf := make([]byte, 1<<16)
	for {
		n, err := q.recv(buf)
		select {
		case <-q.closed:
			return
		default:
		}
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			continue // a transient error; the queue fails open if it fills
		}
		now := time.Now()
		q.mu.Lock()
		for m := range messages(buf[:n]) {
			if binary.NativeEndian.Uint16(m[4:])&0xff != nfqnlMsgPacket || len(m) < nlmsgHdrLen+nfgenHdrLen {
				continue
			}
			if id, ok := packetID(m[nlmsgHdrLen+nfgenHdrLen:]); ok {
				q.pending = append(q.pending, held{id: id, due: now.Add(q.delay)})
				q.last = id
			}
		}
		q.mu.Unlock()
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
}

// packetID finds the packet header attribute's id.
func packetID(attrs []byte) (uint32, bool) {
	for len(attrs) >= 4 {
		l := int(binary.NativeEndian.Uint16(attrs))
		typ := binary.NativeEndian.Uint16(attrs[2:]) & 0x3fff
		if l < 4 || l > len(attrs) {
			return 0, false
		}
		if typ == nfqaPacketHdr && l >= 8 {
			return binary.BigEndian.Uint32(attrs[4:]), true
		}
		attrs = attrs[min(len(attrs), (l+3)&^3):]
	}
	return 0, false
}

// release accepts packets once they are due: one batch verdict accepts
// every packet up to an id, and the delay is the same for all, so the due
// ones are always a prefix.
func (q *delayQueue) release() {
	defer q.done.Done()
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		q.mu.Lock()
		now := time.Now()
		k := 0
		for k < len(q.pending) && !q.pending[k].due.After(now) {
			k++
		}
		var last uint32
		if k > 0 {
			last = q.pending[k-1].id
			q.pending = q.pending[k:]
		}
		next := time.Hour
		if len(q.pending) > 0 {
			next = time.Until(q.pending[0].due)
		}
		q.mu.Unlock()
		if k > 0 {
			q.accept(last)
		}
		t.Reset(next)
		select {
		case <-q.closed:
			return
		case <-q.wake:
		case <-t.C:
		}
	}
}

// accept lets every packet up to id go on.
func (q *delayQueue) accept(id uint32) {
	hdr := binary.BigEndian.AppendUint32(nil, nfAccept)
	hdr = binary.BigEndian.AppendUint32(hdr, id)
	// Sent by one goroutine at a time (release, then close after it):
	// the sequence number is not shared.
	_ = q.send(q.message(nfqnlMsgVerdictBatch, unix.NLM_F_REQUEST, attr(nfqaVerdictHdr, hdr)))
}

// close accepts whatever is still held (its rule must be gone already, so
// nothing new arrives) and unbinds the queue: closing the socket alone
// would drop the held packets.
func (q *delayQueue) close() {
	close(q.closed)
	q.file.SetReadDeadline(time.Now()) // ends receive
	q.done.Wait()
	q.mu.Lock()
	last := q.last
	q.pending = nil
	q.mu.Unlock()
	// A batch verdict covers every id up to its own in the kernel's
	// wrapping order: this one also covers packets queued but not read.
	q.accept(last + 1<<30)
	q.file.Close()
}
