package chaos

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// OpKind is what a client operation did.
type OpKind string

// Client operations.
const (
	OpWrite     OpKind = "write"      // POST a file (a new one or an overwrite)
	OpDelete    OpKind = "delete"     // DELETE a file
	OpDeleteDir OpKind = "delete-dir" // DELETE a directory: every key under it
	OpRead      OpKind = "read"       // GET a file
	OpList      OpKind = "list"       // GET a directory listing
)

// mutates reports whether ops of this kind change what is stored.
func (k OpKind) mutates() bool { return k == OpWrite || k == OpDelete || k == OpDeleteDir }

// Outcome is what the client learned about an operation.
type Outcome string

// Outcomes.
const (
	// OK: 2xx (for a read, 404 too: the answer "absent" is definite).
	OK Outcome = "ok"
	// Failed: definitely not applied (a 4xx, or the connection was refused).
	Failed Outcome = "failed"
	// Unknown: may or may not have been applied (503 and other 5xx, a
	// reset, a timeout): a write told 503 may still survive.
	Unknown Outcome = "unknown"
)

// Op is one client operation as the client saw it.
type Op struct {
	ID      int       `json:"id"`
	Kind    OpKind    `json:"kind"`
	Path    string    `json:"path"` // a key, or a directory for delete-dir and list
	Proxy   int       `json:"proxy"`
	Via     string    `json:"via,omitempty"` // "balancer" when not proxy Proxy directly
	Start   time.Time `json:"start"`
	End     time.Time `json:"end"`
	Outcome Outcome   `json:"outcome"`
	Status  int       `json:"status,omitempty"` // HTTP status, 0 without an answer
	Err     string    `json:"err,omitempty"`
	// Data is what a write sent, or what a read got (nil: absent).
	Data []byte `json:"data,omitempty"`
	// Found: a read or listing found something (a file, a directory).
	Found bool `json:"found,omitempty"`
	// Names is a listing's file names (directories end in "/").
	Names []string `json:"names,omitempty"`
}

// covers reports whether mutation o affects key.
func (o *Op) covers(key string) bool {
	switch o.Kind {
	case OpWrite, OpDelete:
		return o.Path == key
	case OpDeleteDir:
		return strings.HasPrefix(key, o.Path+"/")
	}
	return false
}

// before reports whether o ended before p started: o happened first in
// real time, so p's version is newer (docs/design.md: versions are stamped when the
// proxy accepts them, between start and end).
func (o *Op) before(p *Op) bool { return o.End.Before(p.Start) }

func (o *Op) String() string {
	via := fmt.Sprintf("proxy%d", o.Proxy+1)
	if o.Via != "" {
		via = o.Via
	}
	s := fmt.Sprintf("#%d %s %s via %s %s", o.ID, o.Kind, o.Path, via, o.Outcome)
	if o.Status != 0 {
		s += fmt.Sprintf(" (%d)", o.Status)
	}
	if o.Err != "" {
		s += " (" + o.Err + ")"
	}
	return s
}

// content is the unique body of write op id on key: its first line names
// both, so a copy found anywhere tells which write it is.
func content(seed uint64, id int, key string, pad int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "chaos seed=%d op=%d key=%s\n", seed, id, key)
	for i := range pad {
		b.WriteByte("abcdefghijklmnopqrstuvwxyz0123456789"[(id*31+i*7)%36])
	}
	return b.Bytes()
}

// contentOp is the op id written in data's first line, or -1.
func contentOp(data []byte) int {
	line, _, _ := bytes.Cut(data, []byte("\n"))
	for _, f := range strings.Fields(string(line)) {
		if v, ok := strings.CutPrefix(f, "op="); ok {
			if id, err := strconv.Atoi(v); err == nil {
				return id
			}
		}
	}
	return -1
}

// history records every operation, safe for concurrent use.
type history struct {
	mu  sync.Mutex
	ops []*Op
}

func (h *history) add(o *Op) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, o)
}

// snapshot is every op recorded so far, by id.
func (h *history) snapshot() []*Op {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*Op, len(h.ops))
	copy(out, h.ops)
	return out
}

// counts is how many ops there are, acknowledged, failed and unknown.
func counts(ops []*Op) (total, ok, failed, unknown int) {
	for _, o := range ops {
		total++
		switch o.Outcome {
		case OK:
			ok++
		case Failed:
			failed++
		case Unknown:
			unknown++
		}
	}
	return
}
