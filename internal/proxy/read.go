package proxy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"

	"github.com/cring-dev/cring/internal/stall"
	"github.com/cring-dev/cring/internal/tombstone"
)

// read serves GET /v1/fs/*: replicas in preference order (known-down nodes
// skipped), failing over on errors and 404 until one has it. A directory
// answer switches to merging every healthy node's listing.
//
// A 404 is only answered when fewer than W nodes could not be asked: any
// acknowledged file is on at least W nodes, so at least one of them answered
// (docs/design.md, invariant 6). Otherwise the answer is 503, never a false 404.
func (p *Proxy) read(w http.ResponseWriter, r *http.Request, ref fileRef) {
	ctx := r.Context()
	key := ref.key()
	pref := p.m.Ring.Preference(key)
	asked := make([]bool, len(p.m.Nodes))
	unreachable := 0
	var answered []int
	var notFound *outcome
	unverified := 0 // copies that were no recorded version (stock nodes)
	if p.dirs.has(key) && p.listAll(w, r, ref) {
		return
	}
	if p.inflight.writingOn(key) >= p.m.W {
		// This proxy is writing the key and hasn't answered yet: a stock
		// node rewrites in place, so no replica holds a whole copy of
		// either version until the write ends. Read what it leaves.
		if err := p.inflight.waitCtx(ctx, key); err != nil {
			return
		}
	}
	var cands []int
	for _, i := range pref {
		if !p.m.Health.Healthy(i) || p.healer.Owed(ref.user, ref.path, p.m.Nodes[i].Name) || p.inflight.writing(key, i) {
			asked[i] = true // counted unreachable: merging skips it
			unreachable++
			continue
		}
		cands = append(cands, i)
	}
	att := p.newAttempts(ctx, r, cands)
	defer att.close()
	for {
		a, more := att.answer()
		if !more {
			break
		}
		i, resp, cancel := a.node, a.resp, a.cancel
		asked[i] = true
		if a.err != nil {
			cancel(nil)
			p.nodeFailed(ctx, i, a.err)
			p.log.Warn("read failed over", "node", p.m.Nodes[i].Name, "key", key, "err", a.err)
			unreachable++
			continue
		}
		if resp.StatusCode >= 200 && resp.StatusCode <= 299 {
			verify := !isJSON(resp.Header) && p.mustVerify(resp, ref)
			if !verify {
				att.close() // a hedged twin still running loses
			}
			if isJSON(resp.Header) {
				p.mergeListing(w, r, ref, i, resp, cancel, asked, unreachable)
				cancel(nil)
				return
			}
			if notFound != nil {
				// An earlier replica lacks it: repair, and never serve a
				// stale copy of a file that was deleted.
				p.healer.Suspect(ref.user, ref.path)
				switch p.deletedSince(r, ref, resp.Header) {
				case deleted:
					resp.Body.Close()
					cancel(nil)
					relay(w, *notFound)
					return
				case unsure:
					resp.Body.Close()
					cancel(nil)
					if p.complete(ref.user, []int{notFound.node}) {
						relay(w, *notFound) // it has every write and delete
						return
					}
					p.obs.QuorumFailure("read")
					writeError(w, http.StatusServiceUnavailable, "a replica lacks this file and too few nodes answered to tell whether it was deleted")
					return
				}
			}
			if verify {
				// A hedged twin keeps running until this copy proves to be
				// a recorded version: if it isn't, the twin may be.
				served, err := p.serveVerified(w, r, ref, resp, cancel)
				resp.Body.Close()
				cancel(nil)
				if !served {
					p.healer.Suspect(ref.user, ref.path)
					p.log.Warn("read failed over: copy not verified", "node", p.m.Nodes[i].Name, "key", key, "err", err)
					unverified++
					continue
				}
				att.close()
				if err != nil && err != errClientGone {
					p.healer.Suspect(ref.user, ref.path)
					p.log.Warn("read cut: copy not verified", "node", p.m.Nodes[i].Name, "key", key, "err", err)
					panic(http.ErrAbortHandler)
				}
				return
			}
			err := p.stream(w, resp, cancel)
			resp.Body.Close()
			cancel(nil)
			if err != nil && err != errClientGone {
				// Headers are gone: the only honest signal left is to
				// abort the connection so the client sees a short read.
				p.nodeFailed(ctx, i, err)
				p.log.Warn("read aborted mid-body", "node", p.m.Nodes[i].Name, "key", key, "err", err)
				panic(http.ErrAbortHandler)
			}
			return
		}
		o := p.keep(ctx, i, resp, cancel)
		cancel(nil)
		if o.status == http.StatusNotFound {
			if notFound == nil {
				notFound = &o
			}
			answered = append(answered, i)
			continue
		}
		p.log.Warn("read failed over", "node", p.m.Nodes[i].Name, "key", key, "status", o.status)
		if o.status >= 500 {
			// A cring node refuses a copy that no longer matches its
			// checksum: have it repaired, not only avoided.
			p.healer.Suspect(ref.user, ref.path)
		}
		unreachable++
	}
	// A copy that was no recorded version means a write is landing: it
	// counts like a node that couldn't answer.
	if notFound != nil && (unreachable+unverified < p.m.W || p.complete(ref.user, answered)) {
		relay(w, *notFound)
		return
	}
	if notFound == nil && len(answered) == 0 && p.backup != nil {
		p.fromBackup(w, r, ref) // read-only fallback: no node could answer
		return
	}
	p.obs.QuorumFailure("read")
	if notFound != nil {
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf(
			"not found on the %d nodes that answered, but %d nodes that may hold it are unreachable", len(p.m.Nodes)-unreachable, unreachable))
		return
	}
	if unverified > 0 {
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf(
			"no replica could answer with a whole recorded version (%d copies torn or stale, a write may be in progress; %d nodes unreachable)", unverified, unreachable))
		return
	}
	writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("no replica could answer: %d of %d nodes unreachable", unreachable, len(p.m.Nodes)))
}

func isJSON(h http.Header) bool {
	return strings.HasPrefix(h.Get("Content-Type"), "application/json")
}

// mergeListing answers a directory GET with the union of every healthy
// node's listing: by name, newest modtime wins. first is the listing that
// showed the path is a directory; nodes already asked that had no such
// directory contribute nothing.
func (p *Proxy) mergeListing(w http.ResponseWriter, r *http.Request, ref fileRef, first int, resp *http.Response, cancel context.CancelCauseFunc, asked []bool, unreachable int) {
	ctx := r.Context()
	l := &listings{merged: newDirMerge(), mode: resp.Header.Get("X-File-Mode"), unreachable: unreachable}
	sr := stall.NewReader(resp.Body, p.stall, cancel, errStalled)
	err := l.merged.add(sr)
	sr.Stop()
	resp.Body.Close()
	if err != nil {
		// A broken listing costs that node, like any other failure.
		p.nodeFailed(ctx, first, err)
		p.log.Warn("listing failed", "node", p.m.Nodes[first].Name, "err", err)
		l.unreachable++
	} else {
		l.answered = append(l.answered, first)
	}
	var others []int
	for i := range p.m.Nodes {
		switch {
		case asked[i]:
		case !p.m.Health.Healthy(i):
			l.unreachable++
		default:
			others = append(others, i)
		}
	}
	p.gatherListings(r, ref, others, l)
	p.dirs.add(ref.key())
	p.answerListing(w, r, ref, l)
}

// listAll answers a GET of a path known to be a directory by asking every
// healthy node at once (one round trip instead of two). False when it turns
// out not to be one: the caller reads it the usual way.
func (p *Proxy) listAll(w http.ResponseWriter, r *http.Request, ref fileRef) bool {
	l := &listings{merged: newDirMerge()}
	var nodes []int
	for i := range p.m.Nodes {
		if p.m.Health.Healthy(i) {
			nodes = append(nodes, i)
		} else {
			l.unreachable++
		}
	}
	p.gatherListings(r, ref, nodes, l)
	if l.sawFile || l.merged.lists == 0 {
		p.dirs.forget(ref.key())
		return false
	}
	p.answerListing(w, r, ref, l)
	return true
}

// listings collects directory listings from several nodes.
type listings struct {
	mu          sync.Mutex
	merged      *dirMerge // every listing, merged as it streams
	answered    []int     // nodes that listed it or said 404
	unreachable int
	sawFile     bool // a node has a file at that path
	mode        string
	tombs       map[string][]tombCopy
	tombsAsked  bool
	tombsRead   int // nodes whose tombstones were read (or that have none)
}

// gatherListings asks nodes for the directory. When some keys are not on
// every node (N < node count), listings disagree anyway, so the user's
// tombstones are fetched alongside; otherwise answerListing fetches them
// only if the listings disagree.
func (p *Proxy) gatherListings(r *http.Request, ref fileRef, nodes []int, l *listings) {
	ctx := r.Context()
	var wg sync.WaitGroup
	if !tombstone.Reserved(ref.path) && p.m.Ring.Replicas() < len(p.m.Nodes) {
		l.tombsAsked = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			t, n := p.tombstoneTimes(ctx, r, ref.user, p.healthyNodes())
			l.mu.Lock()
			l.tombs, l.tombsRead = t, n
			l.mu.Unlock()
		}()
	}
	for _, i := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			listed, o := p.listStream(ctx, i, r, l.merged.add)
			l.mu.Lock()
			defer l.mu.Unlock()
			switch {
			case listed:
				l.answered = append(l.answered, i)
				if l.mode == "" {
					l.mode = o.header.Get("X-File-Mode")
				}
			case o.ok():
				l.sawFile = true
			case o.status == http.StatusNotFound:
				l.answered = append(l.answered, i)
			default:
				l.unreachable++
			}
		}()
	}
	wg.Wait()
}

// answerListing writes the merged listing, or 503 when it may be incomplete.
//
// Tombstones hide entries a stale replica still holds. They need not be
// fetched when every file is in every listing and there are at least
// node count − W + 1 listings: an acknowledged delete removed the file from
// W nodes, one of which listed, so a file every listing has was not deleted
// (or was written again since). A node without the directory adds nothing
// to the merge, so it can't bring anything back.
func (p *Proxy) answerListing(w http.ResponseWriter, r *http.Request, ref fileRef, l *listings) {
	m := l.merged
	if (l.unreachable >= p.m.W && !p.complete(ref.user, l.answered)) || m.lists == 0 {
		p.obs.QuorumFailure("list")
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf(
			"listing incomplete: %d of %d nodes unreachable, at most %d allowed", l.unreachable, len(p.m.Nodes), p.m.W-1))
		return
	}
	agreed := m.everywhere() && m.lists >= len(p.m.Nodes)-p.m.W+1
	if !agreed && !tombstone.Reserved(ref.path) {
		if !l.tombsAsked {
			l.tombs, l.tombsRead = p.tombstoneTimes(r.Context(), r, ref.user, p.healthyNodes())
		}
		// A tombstone acknowledged at W is on W nodes: reading fewer than
		// node count − W + 1 nodes' tombstones may miss a delete (unless a
		// node that answered has every delete, see complete).
		if l.tombsRead < len(p.m.Nodes)-p.m.W+1 && !p.complete(ref.user, l.answered) {
			p.obs.QuorumFailure("list")
			writeError(w, http.StatusServiceUnavailable, fmt.Sprintf(
				"listing incomplete: deletes known to %d of %d nodes could not be read", len(p.m.Nodes)-l.tombsRead, len(p.m.Nodes)))
			return
		}
	}
	deleted, ok := p.tombstoneStamps(r.Context(), r, ref, m.names, l.tombs)
	if !ok {
		p.obs.QuorumFailure("list")
		writeError(w, http.StatusServiceUnavailable, "listing incomplete: a delete's record could not be read from any node")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if l.mode != "" {
		w.Header().Set("X-File-Mode", l.mode)
	}
	if err := m.writeJSON(w, listingFilter(ref.path, deleted)); err != nil && r.Context().Err() == nil {
		p.log.Warn("listing not sent whole", "key", ref.key(), "err", err)
	}
}

// listStream asks node i for the directory at r's path. When the node
// answers with a listing, its entries go to add as they are decoded
// (listed: the whole listing was read); otherwise o is its answer as send
// keeps it. A listing that can't be read is an error, never a shorter one.
func (p *Proxy) listStream(ctx context.Context, i int, r *http.Request, add func(io.Reader) error) (listed bool, o outcome) {
	nctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	req, err := p.newNodeRequest(nctx, i, r, http.MethodGet, nil)
	if err != nil {
		return false, outcome{node: i, err: err}
	}
	resp, err := p.transport.RoundTrip(req)
	if err != nil {
		p.nodeFailed(ctx, i, err)
		return false, outcome{node: i, err: fmt.Errorf("list %s on %s: %w", r.URL.Path, p.m.Nodes[i].Name, err)}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 || !isJSON(resp.Header) {
		return false, p.keep(ctx, i, resp, cancel)
	}
	defer resp.Body.Close()
	sr := stall.NewReader(resp.Body, p.stall, cancel, errStalled)
	err = add(sr)
	sr.Stop()
	if err != nil {
		p.nodeFailed(ctx, i, err)
		return false, outcome{node: i, err: fmt.Errorf("list %s on %s: %w", r.URL.Path, p.m.Nodes[i].Name, err)}
	}
	return true, outcome{node: i, status: resp.StatusCode, header: resp.Header}
}

// complete reports whether the nodes that answered can be trusted to hold
// every file of the user although W or more nodes could not be asked: every
// node is a replica of every key (N = node count), and one of them is owed
// nothing by this proxy's hints (it has every write acknowledged since it
// was last away).
func (p *Proxy) complete(user string, answered []int) bool {
	if p.m.Ring.Replicas() != len(p.m.Nodes) {
		return false
	}
	for _, i := range answered {
		if p.healer.Complete(user, p.m.Nodes[i].Name) {
			return true
		}
	}
	return false
}
