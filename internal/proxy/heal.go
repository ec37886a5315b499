package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	charm "github.com/charmbracelet/charm/proto"

	"github.com/cring-dev/cring/internal/tombstone"
)

// Healer learns what the proxy saw go wrong, so it can be repaired later
// (hinted handoff and read repair).
type Healer interface {
	RecordUser(user string)
	// Missed: node (by name) did not get the latest write or delete of path.
	Missed(user, path, node string)
	// Suspect: replicas of path disagree; check it soon.
	Suspect(user, path string)
	// Owed: node has not yet been given the latest write or delete of path
	// (its copy may be stale): reads skip it.
	Owed(user, path, node string) bool
	// Complete: node is owed nothing of user's (no pending hints), and the
	// healer is on to know it.
	Complete(user, node string) bool
}

type nopHealer struct{}

func (nopHealer) RecordUser(string)                {}
func (nopHealer) Missed(string, string, string)    {}
func (nopHealer) Suspect(string, string)           {}
func (nopHealer) Owed(string, string, string) bool { return false }
func (nopHealer) Complete(string, string) bool     { return false }

// delete records a tombstone (acked at W like any write) and then deletes
// the file everywhere, so no stale replica can bring it back.
func (p *Proxy) delete(w http.ResponseWriter, r *http.Request, ref fileRef) {
	p.noTombs.forget(ref.user)
	now := time.Now()
	status, msg := p.internalWrite(r, http.MethodPost, fileRef{ref.user, tombstone.Path(ref.path)}, tombstone.Body(ref.path, now))
	if status < 200 || status > 299 {
		p.obs.QuorumFailure("tombstone")
		writeError(w, http.StatusServiceUnavailable, "could not record the delete: "+msg)
		return
	}
	p.tombs.add(ref.key())
	p.noTombs.forget(ref.user) // again: a listing may have cached "none" meanwhile
	p.write(w, r, ref)
}

// clearTombstone removes the tombstone of a path this proxy deleted a
// moment ago, before it is written again: the new file must not look older
// than its own delete to anyone. (Older tombstones lose to the newer file by
// modification time.)
func (p *Proxy) clearTombstone(r *http.Request, ref fileRef) {
	if !p.tombs.take(ref.key()) {
		return
	}
	if status, msg := p.internalWrite(r, http.MethodDelete, fileRef{ref.user, tombstone.Path(ref.path)}, nil); status != http.StatusOK {
		p.log.Warn("could not clear tombstone before rewrite", "path", ref.path, "err", msg)
		p.healer.Suspect(ref.user, ref.path)
	}
}

// internalWrite runs the write path for a request of cring's own, with the
// client's token, and returns the status and message it would have sent.
func (p *Proxy) internalWrite(r *http.Request, method string, ref fileRef, data []byte) (int, string) {
	req := r.Clone(r.Context())
	req.URL = &url.URL{Path: "/v1/fs/" + ref.path}
	req.Header.Del("Content-Length")
	req.Header.Del("Content-Type")
	req.Body = http.NoBody
	req.ContentLength = 0
	if method == http.MethodPost {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		part, _ := mw.CreateFormFile("data", "tombstone")
		_, _ = part.Write(data)
		_ = mw.Close()
		req.URL.RawQuery = "mode=" + strconv.Itoa(tombstone.Mode)
		req.Body = readCloser{bytes.NewReader(buf.Bytes())}
		req.ContentLength = int64(buf.Len())
		req.Header.Set("Content-Type", mw.FormDataContentType())
	}
	req.Method = method
	rec := &captured{header: http.Header{}}
	p.write(rec, req, ref)
	var m struct {
		Message string `json:"message"`
	}
	_ = json.Unmarshal(rec.body.Bytes(), &m)
	return rec.status, m.Message
}

type readCloser struct{ *bytes.Reader }

func (readCloser) Close() error { return nil }

// captured is a ResponseWriter that keeps what an internal request answered.
type captured struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (c *captured) Header() http.Header { return c.header }
func (c *captured) WriteHeader(s int) {
	if c.status == 0 {
		c.status = s
	}
}
func (c *captured) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	return c.body.Write(b)
}

// tombstoneTimes lists a user's tombstones on the given nodes: name → the
// newest modification time any node has for it, and how many nodes' were
// read (a node without any counts as read).
func (p *Proxy) tombstoneTimes(ctx context.Context, r *http.Request, user string, nodes []int) (map[string]time.Time, int) {
	out := map[string]time.Time{}
	if p.noTombs.fresh(user) {
		return out, len(p.nodes)
	}
	req := r.Clone(ctx)
	req.URL = &url.URL{Path: "/v1/fs/" + tombstone.Dir}
	var mu sync.Mutex
	var wg sync.WaitGroup
	read, none := 0, true
	for _, i := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, o := p.list(ctx, i, req)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case d != nil:
				read++
				none = false
				for _, f := range d.Files {
					if f.ModTime.After(out[f.Name]) {
						out[f.Name] = f.ModTime
					}
				}
			case o.status == http.StatusNotFound:
				read++
			default:
				none = false
				p.log.Warn("tombstones unreadable", "node", p.nodes[i].Name, "user", user, "err", o.String())
			}
		}()
	}
	wg.Wait()
	if none && len(nodes) == len(p.nodes) {
		p.noTombs.set(user) // every node says: no tombstones at all
	}
	return out, read
}

// userSet remembers, briefly, users known to have no tombstones, so their
// listings skip asking. A delete through this proxy forgets the user at
// once; one through another proxy is seen within noTombsTTL, and matters
// only if a replica also missed that delete.
type userSet struct {
	mu sync.Mutex
	m  map[string]time.Time
}

const noTombsTTL = 5 * time.Second

func (u *userSet) fresh(user string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	t, ok := u.m[user]
	return ok && time.Since(t) < noTombsTTL
}

func (u *userSet) set(user string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.m == nil || len(u.m) > 10000 {
		u.m = map[string]time.Time{}
	}
	u.m[user] = time.Now()
}

func (u *userSet) forget(user string) {
	u.mu.Lock()
	delete(u.m, user)
	u.mu.Unlock()
}

// dropDeleted removes listing entries that a tombstone at least as new
// covers, and cring's own directory from the user's root.
func dropDeleted(dir *charm.FileInfo, dirPath string, tombs map[string]time.Time) {
	kept := dir.Files[:0]
	for _, f := range dir.Files {
		p := tombstone.Clean(dirPath + "/" + f.Name)
		if tombstone.Reserved(p) {
			continue
		}
		if len(tombs) == 0 || f.IsDir {
			kept = append(kept, f)
			continue
		}
		if t, ok := tombs[tombstone.Name(p)]; ok && !f.ModTime.After(t) {
			continue
		}
		kept = append(kept, f)
	}
	dir.Files = kept
}

// deletion is what the tombstones say of a copy.
type deletion int

const (
	live    deletion = iota
	deleted          // a tombstone at least as new as the copy
	unsure           // too few nodes answered to rule a delete out
)

// deletedSince asks every healthy node for path's tombstone (one small file
// each, however many the user has) and compares it with a copy's
// modification time. Last-Modified has whole seconds, as the copy's has.
func (p *Proxy) deletedSince(r *http.Request, ref fileRef, modTime time.Time) deletion {
	ctx, cancel := context.WithTimeout(r.Context(), p.stall)
	defer cancel()
	req := r.Clone(ctx)
	req.URL = &url.URL{Path: "/v1/fs/" + tombstone.Path(ref.path)}
	answered := 0
	for _, o := range p.sendAll(ctx, p.healthyNodes(), req, http.MethodGet, nil) {
		switch {
		case o.status == http.StatusNotFound:
			answered++
		case o.ok():
			t, err := http.ParseTime(o.header.Get("Last-Modified"))
			if err != nil || !modTime.After(t) {
				return deleted // a tombstone of unknown age counts as newer
			}
			answered++
		}
	}
	// A tombstone acknowledged at W is on W nodes.
	if answered < len(p.nodes)-p.w+1 {
		return unsure
	}
	return live
}

// recentTombstones remembers the keys this proxy deleted lately, so a quick
// rewrite clears its tombstone first. Bounded: old entries fall out.
type recentTombstones struct {
	mu   sync.Mutex
	keys map[string]time.Time
}

const recentTombstoneTTL = 10 * time.Minute

func (t *recentTombstones) add(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.keys == nil {
		t.keys = map[string]time.Time{}
	}
	now := time.Now()
	if len(t.keys) > 10000 {
		for k, at := range t.keys {
			if now.Sub(at) > recentTombstoneTTL {
				delete(t.keys, k)
			}
		}
	}
	t.keys[key] = now
}

func (t *recentTombstones) take(key string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	at, ok := t.keys[key]
	delete(t.keys, key)
	return ok && time.Since(at) < recentTombstoneTTL
}
