package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
)

// forwardOne sends a request to one node: healthy nodes first in configured
// order (the same primary SSH uses, so account reads match logins), then the
// ones believed down as a last resort. It fails over on transport errors and
// 5xx; any other answer is the node's and is streamed back.
func (p *Proxy) forwardOne(w http.ResponseWriter, r *http.Request, body []byte) {
	ctx := r.Context()
	order := p.healthyNodes()
	if len(order) < len(p.m.Nodes) {
		up := map[int]bool{}
		for _, i := range order {
			up[i] = true
		}
		for i := range p.m.Nodes {
			if !up[i] {
				order = append(order, i)
			}
		}
	}
	var last string
	for _, i := range order {
		nctx, cancel := context.WithCancelCause(ctx)
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, err := p.newNodeRequest(nctx, i, r, r.Method, rd)
		if err != nil {
			cancel(nil)
			last = err.Error()
			continue
		}
		resp, err := p.transport.RoundTrip(req)
		if err != nil {
			cancel(nil)
			p.nodeFailed(ctx, i, err)
			last = fmt.Sprintf("%s: %v", p.m.Nodes[i].Name, err)
			continue
		}
		if resp.StatusCode >= 500 && resp.StatusCode != http.StatusNotImplemented {
			o := p.keep(ctx, i, resp, cancel)
			cancel(nil)
			last = fmt.Sprintf("%s: %s", p.m.Nodes[i].Name, o.String())
			continue
		}
		err = p.stream(w, resp, cancel)
		resp.Body.Close()
		cancel(nil)
		if err != nil && err != errClientGone {
			p.nodeFailed(ctx, i, err)
			panic(http.ErrAbortHandler)
		}
		return
	}
	writeError(w, http.StatusServiceUnavailable, "no node could answer: "+last)
}
