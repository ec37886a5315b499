package sshproxy

import (
	"bytes"
	"encoding/binary"
	"strings"
)

// kexWatch follows what a client sends in clear at the start of an SSH
// connection (RFC 4253: its identification line, then unencrypted binary
// packets) until its SSH_MSG_NEWKEYS, which ends the first key exchange:
// past it everything is encrypted and the handshake is the backend's to
// finish. A connection that never gets there (idle, slow, not SSH) is closed
// by the handshake timeout. It only reads the bytes; they are forwarded
// unchanged.
type kexWatch struct {
	state  int // one of the kex* states
	line   strings.Builder
	hdr    [6]byte // packet length, padding length, message number
	nhdr   int
	skip   uint32 // bytes of the current packet still to pass
	seenID int    // bytes of identification lines seen
}

const (
	kexIdent  = iota // reading identification lines
	kexHeader        // reading a packet's first 6 bytes
	kexBody          // skipping the rest of a packet
	kexDone          // NEWKEYS sent
	kexFailed        // not SSH as this knows it: only the timeout ends it
)

const (
	msgNewKeys = 21
	// Generous bounds: real identification lines are under 255 bytes and
	// key exchange packets a few KiB (post-quantum ones included).
	maxIdentBytes = 8 << 10
	maxKexPacket  = 256 << 10
)

// done reports whether the client finished its key exchange.
func (k *kexWatch) done() bool { return k.state == kexDone }

// feed takes the next bytes the client sent.
func (k *kexWatch) feed(b []byte) {
	for len(b) > 0 {
		switch k.state {
		case kexDone, kexFailed:
			return
		case kexIdent:
			i := bytes.IndexByte(b, '\n')
			n := len(b)
			if i >= 0 {
				n = i + 1
			}
			k.seenID += n
			if k.seenID > maxIdentBytes {
				k.state = kexFailed
				return
			}
			if k.line.Len() < 8 {
				k.line.Write(b[:min(n, 8-k.line.Len())])
			}
			b = b[n:]
			if i >= 0 {
				// Only the client's own "SSH-" line leads to packets (the
				// RFC allows other lines before it from servers only;
				// tolerate them anyway).
				if strings.HasPrefix(k.line.String(), "SSH-") {
					k.state = kexHeader
				}
				k.line.Reset()
			}
		case kexHeader:
			n := copy(k.hdr[k.nhdr:], b)
			k.nhdr += n
			b = b[n:]
			if k.nhdr < len(k.hdr) {
				return
			}
			length := binary.BigEndian.Uint32(k.hdr[:4])
			if length < 2 || length > maxKexPacket {
				k.state = kexFailed
				return
			}
			if k.hdr[5] == msgNewKeys {
				k.state = kexDone
				return
			}
			k.nhdr = 0
			k.skip = length - 2 // the padding length and message bytes are read
			k.state = kexBody
			if k.skip == 0 {
				k.state = kexHeader
			}
		case kexBody:
			n := uint32(len(b))
			if n > k.skip {
				n = k.skip
			}
			k.skip -= n
			b = b[n:]
			if k.skip == 0 {
				k.state = kexHeader
			}
		}
	}
}
