package proxy

import (
	"context"
	"io"
	"iter"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/cring-dev/cring/internal/charmapi"
	"github.com/cring-dev/cring/internal/stamp"
	"github.com/cring-dev/cring/internal/tombstone"
)

// delete records a tombstone with the delete's stamp (acked at W like any
// write), then deletes the path everywhere with that stamp, so no stale
// replica can bring it, or anything under it, back. A write stamped later
// wins over the tombstone by its stamp: nothing needs clearing.
func (p *Proxy) delete(w http.ResponseWriter, r *http.Request, ref fileRef) {
	p.noTombs.forget(ref.user)
	st := p.clock.Now()
	if err := p.writeOwn(r, http.MethodPost, fileRef{ref.user, tombstone.Path(ref.path)}, tombstone.Body(ref.path, st), st); err != nil {
		p.obs.QuorumFailure("tombstone")
		writeError(w, http.StatusServiceUnavailable, "could not record the delete: "+err.Error())
		return
	}
	p.noTombs.forget(ref.user) // again: a listing may have cached "none" meanwhile
	p.write(w, r, ref, st)
}

// tombCopy is one node's copy of a tombstone file, as listed.
type tombCopy struct {
	node  int
	size  int64
	mtime time.Time
}

// tombstoneTimes lists a user's tombstones on the given nodes: name → the
// nodes' copies, and how many nodes' were read (a node without any counts
// as read). A tombstone's time is in its body (tombstoneStamps reads it).
func (p *Proxy) tombstoneTimes(ctx context.Context, r *http.Request, user string, nodes []int) (map[string][]tombCopy, int) {
	out := map[string][]tombCopy{}
	if p.noTombs.fresh(user) {
		return out, len(p.m.Nodes)
	}
	req := r.Clone(ctx)
	req.URL = &url.URL{Path: charmapi.FSPath(tombstone.Dir)}
	var mu sync.Mutex
	var wg sync.WaitGroup
	read, none := 0, true
	for _, i := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Copies go to out as they stream in: those of a listing that
			// breaks off are real tombstones all the same.
			listed, o := p.listStream(ctx, i, req, func(rd io.Reader) error {
				_, err := decodeListing(rd, func(b []wireEntry) error {
					mu.Lock()
					defer mu.Unlock()
					for _, f := range b {
						name := string(f.Name.b)
						out[name] = append(out[name], tombCopy{node: i, size: f.Size, mtime: f.ModTime})
					}
					return nil
				})
				return err
			})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case listed:
				read++
				none = false
			case o.status == http.StatusNotFound:
				read++
			default:
				none = false
				p.log.Warn("tombstones unreadable", "node", p.m.Nodes[i].Name, "user", user, "err", o.String())
			}
		}()
	}
	wg.Wait()
	if none && len(nodes) == len(p.m.Nodes) {
		p.noTombs.set(user) // every node says: no tombstones at all
	}
	return out, read
}

// tombstoneStamps reads the tombstones that cover a listing's entries
// (named by names) and the listed directory, and returns name → the newest
// delete's time, from the stamps in their bodies. Bodies are cached by each
// copy's size and modification time, so a listing reads each tombstone
// once. ok is false when no copy of some tombstone could be read: the
// listing can't tell what it deleted, and hiding entries on a guess would
// shorten it. Only the tombstones that exist are kept, so a big listing
// with few deletes costs little.
func (p *Proxy) tombstoneStamps(ctx context.Context, r *http.Request, ref fileRef, names iter.Seq[string], tombs map[string][]tombCopy) (map[string]time.Time, bool) {
	out := map[string]time.Time{}
	if len(tombs) == 0 {
		return out, true
	}
	want := map[string]bool{}
	for _, c := range tombstone.Covering(ref.path) {
		want[tombstone.Name(c)] = true
	}
	for n := range names {
		if name := tombstone.Name(ref.path + "/" + n); len(tombs[name]) > 0 {
			want[name] = true
		}
	}
	for name := range want {
		copies := tombs[name]
		read := 0
		for _, c := range copies {
			s, ok := p.tombBodies.stamp(ctx, p, r, ref.user, name, c)
			if !ok {
				continue // gone since it was listed, or unreadable: the others may say
			}
			read++
			if t := s.Time(); t.After(out[name]) {
				out[name] = t
			}
		}
		if len(copies) > 0 && read == 0 {
			return nil, false
		}
	}
	return out, true
}

// tombCache remembers tombstone stamps by copy (node, user, name, size,
// mtime): a tombstone file is rewritten only by a newer delete, which
// changes its mtime. Bounded: it starts over past 100,000 entries.
type tombCache struct {
	mu sync.Mutex
	m  map[tombKey]stamp.Stamp
}

type tombKey struct {
	node       int
	user, name string
	size       int64
	mtime      int64
}

func (c *tombCache) stamp(ctx context.Context, p *Proxy, r *http.Request, user, name string, tc tombCopy) (stamp.Stamp, bool) {
	k := tombKey{tc.node, user, name, tc.size, tc.mtime.UnixNano()}
	c.mu.Lock()
	s, ok := c.m[k]
	c.mu.Unlock()
	if ok {
		return s, true
	}
	req := r.Clone(ctx)
	req.URL = &url.URL{Path: charmapi.FSPath(tombstone.Dir + "/" + name)}
	o := p.send(ctx, tc.node, req, http.MethodGet, nil)
	if !o.ok() {
		return stamp.Stamp{}, false
	}
	_, s, err := tombstone.ParseBody(o.body)
	if err != nil {
		return stamp.Stamp{}, false
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) > 100_000 {
		c.m = map[tombKey]stamp.Stamp{}
	}
	c.m[k] = s
	c.mu.Unlock()
	return s, true
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

// deletion is what the tombstones say of a copy.
type deletion int

const (
	live    deletion = iota
	deleted          // a tombstone at least as new as the copy
	unsure           // too few nodes answered to rule a delete out
)

// deletedSince asks every healthy node for the tombstones covering path
// (the path's own and its directories': one small file each) and compares
// the newest with the copy a node answered with: by stamps when the copy
// has one (a cring node sends it), else by the copy's modification time
// against the delete's stamp (a stock node keeps no stamps: documented).
func (p *Proxy) deletedSince(r *http.Request, ref fileRef, copyHeader http.Header) deletion {
	ctx, cancel := context.WithTimeout(r.Context(), p.stall)
	defer cancel()
	cover := tombstone.Covering(ref.path)
	nodes := p.healthyNodes()
	answered := make([]int, len(nodes))
	var newest stamp.Stamp
	for _, c := range cover {
		req := r.Clone(ctx)
		req.URL = &url.URL{Path: charmapi.FSPath(tombstone.Path(c))}
		for k, o := range p.sendAll(ctx, nodes, req, http.MethodGet, nil) {
			switch {
			case o.status == http.StatusNotFound:
				answered[k]++
			case o.ok():
				_, s, err := tombstone.ParseBody(o.body)
				if err != nil {
					return deleted // a tombstone that can't be read counts as newer
				}
				newest = stamp.Max(newest, s)
				answered[k]++
			}
		}
	}
	if !newest.IsZero() {
		if cs, err := stamp.Parse(copyHeader.Get(stamp.Header)); err == nil && !cs.IsZero() {
			if !cs.After(newest) {
				return deleted
			}
		} else if lm, err := http.ParseTime(copyHeader.Get("Last-Modified")); err != nil || !lm.After(newest.Time()) {
			return deleted
		}
	}
	full := 0 // nodes that answered for every covering tombstone
	for _, n := range answered {
		if n == len(cover) {
			full++
		}
	}
	// A tombstone acknowledged at W is on W nodes.
	if full < len(p.m.Nodes)-p.m.W+1 {
		return unsure
	}
	return live
}
