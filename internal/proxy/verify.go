package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/cring-dev/cring/internal/charmapi"
	"github.com/cring-dev/cring/internal/stall"
	"github.com/cring-dev/cring/internal/stamp"
	"github.com/cring-dev/cring/internal/tombstone"
)

// A stock node rewrites a file in place, so a read that meets a write of
// the same key (another proxy's, or a late one) can get a torn or partial
// copy. Copies from nodes that keep no stamps are therefore checked against
// the key's version records (docs/design.md, "Version records"): a copy is
// served only when its SHA-256 is one a write recorded. Small files are
// read whole and checked before a byte is sent, so a bad copy fails over to
// the next replica; larger ones stream with their last chunk held back,
// and the response is cut if the copy turns out not to be a recorded one.

// verifyWhole is the largest copy read whole before it is served: the
// memory a verified read may hold, whatever the file's size.
const verifyWhole = 256 << 10

var errUnrecorded = errors.New("the copy is no recorded version (torn by a write in progress, or stale)")

// mustVerify reports whether a node's answer for ref is checked: the node
// kept no stamp and no checksum. A cring node sends its copy's stamp, or
// for a file written without one (before cring, or to the node directly)
// its recorded checksum: either way it writes atomically and checks its
// own copies, so a read of it needs no version-record lookup on every node.
func (p *Proxy) mustVerify(resp *http.Response, ref fileRef) bool {
	return p.records && resp.Header.Get(stamp.Header) == "" && resp.Header.Get(stamp.SHA256Header) == "" &&
		!tombstone.Reserved(ref.path)
}

// serveVerified serves a stock node's copy if it is a recorded version.
// served is false when nothing was sent (the caller fails over); an error
// after the response started means it was cut.
func (p *Proxy) serveVerified(w http.ResponseWriter, r *http.Request, ref fileRef, resp *http.Response, cancel context.CancelCauseFunc) (served bool, err error) {
	sr := stall.NewReader(resp.Body, p.stall, cancel, errStalled)
	defer sr.Stop()
	head, err := io.ReadAll(io.LimitReader(sr, verifyWhole+1))
	if err != nil {
		return false, err
	}
	if len(head) <= verifyWhole {
		sum := sha256.Sum256(head)
		if !p.recorded(r, ref, int64(len(head)), hex.EncodeToString(sum[:])) {
			return false, errUnrecorded
		}
		copyHeader(w.Header(), resp.Header)
		w.Header().Set("Content-Length", strconv.Itoa(len(head)))
		w.WriteHeader(resp.StatusCode)
		_, _ = w.Write(head)
		return true, nil
	}
	// Larger: stream it, holding back the last chunk until the whole is
	// known to be a recorded version.
	copyHeader(w.Header(), resp.Header)
	w.WriteHeader(resp.StatusCode)
	h := sha256.New()
	held, size, err := p.copyHoldingLast(w, io.TeeReader(io.MultiReader(bytes.NewReader(head), sr), h))
	if err != nil {
		return true, err
	}
	if !p.recorded(r, ref, size, hex.EncodeToString(h.Sum(nil))) {
		return true, errUnrecorded
	}
	if _, err := w.Write(held); err != nil {
		return true, errClientGone
	}
	return true, nil
}

// copyHoldingLast copies src to w but for the last chunk read, which it
// returns; size counts every byte. Two buffers: one holds the chunk not
// yet written while the other is read into.
func (p *Proxy) copyHoldingLast(w io.Writer, src io.Reader) (held []byte, size int64, err error) {
	a, b := p.bufs.Get().(*[]byte), p.bufs.Get().(*[]byte)
	defer p.bufs.Put(a)
	defer p.bufs.Put(b)
	cur, other := *a, *b
	var prev []byte
	for {
		n, rerr := src.Read(cur)
		size += int64(n)
		if n > 0 {
			if len(prev) > 0 {
				if _, werr := w.Write(prev); werr != nil {
					return nil, size, errClientGone
				}
			}
			prev = cur[:n]
			cur, other = other, cur
		}
		if rerr == io.EOF {
			return bytes.Clone(prev), size, nil // prev is in a pooled buffer
		}
		if rerr != nil {
			return nil, size, rerr
		}
	}
}

// recorded reports whether (size, sum) is a version recorded for ref, or
// whether ref has no records at all (written before records existed: there
// is nothing to check against). Records are immutable, so they are cached;
// an unknown sum makes the proxy read the key's records again.
func (p *Proxy) recorded(r *http.Request, ref fileRef, size int64, sum string) bool {
	key := ref.key()
	if p.recs.has(key, size, sum) || p.recs.knownNone(key) {
		return true
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), p.stall)
	defer cancel()
	p.refreshRecords(ctx, r, ref)
	if p.recs.has(key, size, sum) {
		return true
	}
	if p.recs.none(key) {
		p.recs.markNone(key) // data from before records: don't ask on every read
		return true
	}
	return false
}

// refreshRecords reads the key's version records from every healthy node.
func (p *Proxy) refreshRecords(ctx context.Context, r *http.Request, ref fileRef) {
	dir := tombstone.VersionDir(ref.path)
	req := r.Clone(ctx)
	req.URL = &url.URL{Path: charmapi.FSPath(dir)}
	for _, o := range p.sendAll(ctx, p.healthyNodes(), req, http.MethodGet, nil) {
		if !o.ok() || !isJSON(o.header) {
			continue
		}
		d, _, err := charmapi.DecodeListing(bytes.NewReader(o.body)) // records are named by stamps
		if err != nil {
			continue
		}
		for _, f := range d.Files {
			if tombstone.IsPending(f.Name) || p.recs.hasStamp(ref.key(), f.Name) {
				continue // an intent has no checksum to verify against
			}
			rq := r.Clone(ctx)
			rq.URL = &url.URL{Path: charmapi.FSPath(dir + "/" + f.Name)}
			b := p.send(ctx, o.node, rq, http.MethodGet, nil)
			if !b.ok() {
				continue
			}
			if v, s, err := tombstone.ParseVersion(b.body); err == nil {
				p.recs.add(ref.key(), s.String(), v.Size, v.SHA256)
			}
		}
	}
}

// recordCache remembers version records by key: stamp → size and sum.
// Bounded: it starts over past maxRecords keys.
type recordCache struct {
	mu      sync.Mutex
	m       map[string]map[string]recordSum
	noneAt  map[string]time.Time // keys found without records, and when
	nowFunc func() time.Time     // tests: an injected clock
}

// noneTTL is how long a key found without version records is served
// unchecked (written before records existed, or only to cring nodes).
const noneTTL = 10 * time.Second

func (c *recordCache) now() time.Time {
	if c.nowFunc != nil {
		return c.nowFunc()
	}
	return time.Now()
}

func (c *recordCache) markNone(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.noneAt == nil || len(c.noneAt) >= maxRecords {
		c.noneAt = map[string]time.Time{}
	}
	c.noneAt[key] = c.now()
}

func (c *recordCache) knownNone(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	at, ok := c.noneAt[key]
	return ok && c.now().Sub(at) < noneTTL
}

type recordSum struct {
	size int64
	sum  string
}

const maxRecords = 100_000

func (c *recordCache) add(key, st string, size int64, sum string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxRecords {
		c.m = map[string]map[string]recordSum{}
	}
	if c.m[key] == nil {
		c.m[key] = map[string]recordSum{}
	}
	c.m[key][st] = recordSum{size, sum}
	delete(c.noneAt, key)
}

func (c *recordCache) has(key string, size int64, sum string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, v := range c.m[key] {
		if v.size == size && v.sum == sum {
			return true
		}
	}
	return false
}

func (c *recordCache) hasStamp(key, st string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.m[key][st]
	return ok
}

func (c *recordCache) none(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m[key]) == 0
}
