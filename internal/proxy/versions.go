package proxy

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/cring-dev/cring/internal/charmapi"
	"github.com/cring-dev/cring/internal/stamp"
	"github.com/cring-dev/cring/internal/tombstone"
)

// recordVersion stores the version record of an upload that reached nodes:
// required (acked at W) before the upload is acknowledged, best effort for
// an upload that failed but survives on some node, so the healer knows it
// for the version it is (docs/design.md, "Versions").
func (p *Proxy) recordVersion(r *http.Request, ref fileRef, st stamp.Stamp, tee *backupTee) error {
	if tee == nil || tee.sum == nil || tee.err != nil {
		return fmt.Errorf("no checksum of the upload: %v", tee.errOrNil())
	}
	sum := hex.EncodeToString(tee.sum.Sum(nil))
	body := tombstone.VersionBody(tombstone.Version{Path: ref.path, Stamp: st.String(), Size: tee.n, SHA256: sum})
	if err := p.writeOwn(r, http.MethodPost, fileRef{ref.user, tombstone.VersionPath(ref.path, st)}, body, st); err != nil {
		return err
	}
	p.recs.add(ref.key(), st.String(), tee.n, sum)
	return nil
}

// recordIntent stores the intent record of a streamed upload before its
// data, so the healer takes its copies for what they are until the version
// record follows (docs/design.md, "Versions").
func (p *Proxy) recordIntent(r *http.Request, ref fileRef, st stamp.Stamp) error {
	body := tombstone.VersionBody(tombstone.Version{Path: ref.path, Stamp: st.String()})
	if err := p.writeOwn(r, http.MethodPost, fileRef{ref.user, tombstone.PendingPath(ref.path, st)}, body, st); err != nil {
		return err
	}
	return nil
}

// dropIntent removes the intent record of an upload that failed, so its
// torn copies are repaired at once rather than after the pending grace.
// Best effort and bounded; a proxy that dies instead leaves it to expire.
func (p *Proxy) dropIntent(r *http.Request, ref fileRef, st stamp.Stamp) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), p.postQuorum)
	defer cancel()
	if err := p.writeOwn(r.WithContext(ctx), http.MethodDelete, fileRef{ref.user, tombstone.PendingPath(ref.path, st)}, nil, st); err != nil {
		p.log.Warn("intent record of a failed upload not removed", "key", ref.key(), "err", err)
	}
}

// writeOwn replicates one of cring's own small files (a tombstone, a
// version or intent record), or deletes one, with the client's token,
// acknowledged at W like any write. It calls the replication primitive
// directly: it never goes through the HTTP handler.
func (p *Proxy) writeOwn(r *http.Request, method string, ref fileRef, data []byte, st stamp.Stamp) error {
	req, body := ownRequest(r, method, ref, data, st)
	pref, targets, done := p.claim(ref.key())
	defer done()
	rep := p.replicate(req.Context(), req, ref, pref, targets, body, false)
	rep.collect(nil)
	rep.finish()
	if rep.n >= p.m.W {
		return nil
	}
	if rep.readOnly() {
		return errReadOnly
	}
	if o, same := rep.clientError(); same {
		return errors.New(nodeMessage(o))
	}
	return errors.New(rep.shortfall())
}

// ownRequest is the request every node gets for one of cring's own files:
// the client's token and headers, the file's path, its stamp, and for a
// POST the multipart form charm's server reads (returned as the body).
func ownRequest(r *http.Request, method string, ref fileRef, data []byte, st stamp.Stamp) (*http.Request, []byte) {
	req := r.Clone(r.Context())
	req.Method = method
	req.URL = &url.URL{Path: charmapi.FSPath(ref.path)}
	req.Header.Del("Content-Length")
	req.Header.Del("Content-Type")
	req.Header.Set(stamp.Header, st.String())
	req.Body, req.ContentLength = http.NoBody, 0
	if method != http.MethodPost {
		return req, nil
	}
	form := charmapi.NewForm("tombstone")
	body := form.Bytes(data)
	req.URL.RawQuery = "mode=" + strconv.Itoa(tombstone.Mode)
	req.ContentLength = int64(len(body))
	req.Header.Set("Content-Type", form.ContentType())
	return req, body
}

// nodeMessage is the message of a node's JSON error answer, or its status.
func nodeMessage(o outcome) string {
	var m struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(o.body, &m) == nil && m.Message != "" {
		return m.Message
	}
	return o.String()
}
