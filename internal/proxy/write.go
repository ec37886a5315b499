package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"

	"github.com/cring-dev/cring/internal/charmapi"
	"github.com/cring-dev/cring/internal/stamp"
	"github.com/cring-dev/cring/internal/tombstone"
)

// smallBody is the largest body sent to the nodes from one in-memory buffer
// instead of being streamed through pipes.
const smallBody = 64 << 10

// write stores a client's upload (POST) or delete (DELETE) of /v1/fs/*:
// its body checked as charm's server reads it, spooled for the backup,
// its version record (or intent) first where a node may not keep stamps,
// then replicated, and acknowledged only at W (docs/design.md, invariants
// 2 and 3). Every node gets the version's stamp st; a cring node that holds
// a newer version answers 409 and keeps it, which counts as stored: this
// version was superseded, not lost.
func (p *Proxy) write(w http.ResponseWriter, r *http.Request, ref fileRef, st stamp.Stamp) {
	key := ref.key()
	r.Header.Set(stamp.Header, st.String())
	pref, targets, done := p.claim(key)
	defer done() // after the tail took over its nodes, so reads never see a gap

	up, ok := p.readUpload(w, r, ref, targets)
	if !ok {
		return
	}
	defer up.stop()
	recorded, intent, ok := p.recordFirst(w, r, ref, st, up)
	if !ok {
		return
	}
	if (recorded || intent) && p.newerRecorded(r, ref, st) {
		if intent {
			p.dropIntent(r, ref, st)
		}
		p.discardSpool(up.tee)
		writeError(w, http.StatusConflict, errSuperseded.Error())
		return
	}
	rep := p.replicate(r.Context(), r, ref, pref, targets, up.small, up.streamed)
	bodyErr := rep.stream(up.src, up.tee)
	rep.collect(bodyErr)
	rep.finish()
	if intent && (bodyErr != nil || rep.n == 0) {
		p.dropIntent(r, ref, st)
	}
	if bodyErr != nil {
		p.bodyFailed(w, r, key, up.tee, bodyErr)
		return
	}
	p.answerWrite(w, r, ref, st, up.tee, rep, recorded)
}

// upload is a write's body as the nodes will get it: small ones read whole
// (sent to every node from one buffer), larger ones streamed from src.
type upload struct {
	src      io.Reader
	small    []byte
	streamed bool
	tee      *backupTee // the backup spool and checksum, when taken
	stop     func()     // ends the form check of a streamed body
}

// readUpload checks the head of a client's upload before any node is asked
// (the rest as it streams; a small one whole), so a malformed one is the
// client's 400, never the nodes' 500; starts its backup spool; and reads a
// small body whole. It answers the client itself when it fails.
func (p *Proxy) readUpload(w http.ResponseWriter, r *http.Request, ref fileRef, targets []int) (*upload, bool) {
	up := &upload{src: r.Body, stop: func() {}}
	hasBody := r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
	if !hasBody {
		return up, true
	}
	isSmall := r.ContentLength > 0 && r.ContentLength <= smallBody
	boundary := ""
	if r.Method == http.MethodPost && !tombstone.Reserved(ref.path) {
		boundary, _ = formBoundary(r) // checked by checkFSWrite
	}
	if boundary != "" && !isSmall {
		checked, stop, err := checkHead(up.src, boundary, r.ContentLength)
		if err != nil {
			p.bodyFailed(w, r, ref.key(), nil, err)
			return nil, false
		}
		up.src, up.stop = checked, stop
	}
	// With backups, the upload's file also goes to a spool file; without
	// one there is no ack, so check before any node works.
	var err error
	if up.tee, err = p.newBackupTee(r, ref, p.mayNeedRecord(targets)); err != nil {
		up.stop()
		p.log.Error("cannot spool the backup of an upload", "err", err)
		writeError(w, http.StatusServiceUnavailable, "cannot back up the upload: "+err.Error())
		return nil, false
	}
	if !isSmall {
		up.streamed = true
		return up, true
	}
	// A small body is read whole first and sent to every node from that one
	// buffer: no pipes or feed goroutines, and net/http sends headers and
	// body in one write. The client's body is complete before any node
	// sees a byte, so a node's 2xx is for the whole file.
	up.small = make([]byte, r.ContentLength)
	_, err = io.ReadFull(up.src, up.small)
	if err != nil {
		err = clientBodyError(r.Context(), err)
	}
	if err == nil && boundary != "" {
		err = checkForm(bytes.NewReader(up.small), boundary, nil)
	}
	if err != nil {
		p.bodyFailed(w, r, ref.key(), up.tee, err)
		return nil, false
	}
	if up.tee != nil {
		up.tee.take(up.small)
		p.keptTee(ref.key(), up.tee)
	}
	return up, true
}

// errSuperseded: an upload found a newer version of its file recorded
// before sending its data.
var errSuperseded = errors.New("a newer version of this file was written meanwhile; this one was not stored")

// recordFirst writes what must precede an upload's data where a node may
// not keep stamps. A small upload's version record goes before its data,
// since its checksum is known already: a stock node's copy then never
// exists without its record, so no healer can take it for a torn or late
// copy and write over it while the ack waits (docs/design.md, "Versions").
// A streamed upload's checksum is known only at its end: an intent record
// goes first instead, and the version record follows the data. It answers
// the client itself when it fails.
func (p *Proxy) recordFirst(w http.ResponseWriter, r *http.Request, ref fileRef, st stamp.Stamp, up *upload) (recorded, intent, ok bool) {
	if up.tee == nil || up.tee.sum == nil { // not hashed: every target keeps stamps
		return false, false, true
	}
	var err error
	if up.small != nil {
		err = p.recordVersion(r, ref, st, up.tee)
		recorded = err == nil
	} else {
		err = p.recordIntent(r, ref, st)
		intent = err == nil
	}
	if err != nil {
		p.obs.QuorumFailure(r.Method) // the upload's first step failed
		p.discardSpool(up.tee)
		writeError(w, http.StatusServiceUnavailable, "could not record the upload's version: "+err.Error())
		return false, false, false
	}
	return recorded, intent, true
}

// newerRecorded reports whether a version of ref newer than st is recorded
// (or its intent) on the nodes, right before this write's data is sent. A
// stock node can't refuse an older write: data that lands after a newer
// version's, from a write another proxy accepted later, replaces it on every
// node it reaches, and the newer write, acknowledged, is lost (docs/chaos.md).
// A newer write's record is on W nodes before its data is sent, so reading
// every healthy node's records here leaves only this data's own flight for
// a newer write to record and store itself in. Nodes that don't answer are
// taken to hold nothing newer: the check never fails a write by itself.
func (p *Proxy) newerRecorded(r *http.Request, ref fileRef, st stamp.Stamp) bool {
	ctx, cancel := context.WithTimeout(r.Context(), p.stall)
	defer cancel()
	req := r.Clone(ctx)
	req.URL = &url.URL{Path: charmapi.FSPath(tombstone.VersionDir(ref.path))}
	for _, o := range p.sendAll(ctx, p.healthyNodes(), req, http.MethodGet, nil) {
		if !o.ok() || !isJSON(o.header) {
			continue
		}
		d, _, err := charmapi.DecodeListing(bytes.NewReader(o.body))
		if err != nil {
			continue
		}
		for _, f := range d.Files {
			if s, _, err := tombstone.RecordName(f.Name); err == nil && s.After(st) {
				return true
			}
		}
	}
	return false
}

// answerWrite answers a write whose body reached the nodes: at W, after
// its version record (where a replica that stored it can't keep stamps)
// and its backup; below W, the failure, keeping a version that survives
// on some node.
func (p *Proxy) answerWrite(w http.ResponseWriter, r *http.Request, ref fileRef, st stamp.Stamp, tee *backupTee, rep *replication, recorded bool) {
	// A version record is needed when a replica that stored the upload
	// can't keep its stamp: a cring node confirms the stamp in its answer.
	p.learnStamping(rep.got, rep.stored)
	needRecord := !recorded && p.records && r.Method == http.MethodPost && !tombstone.Reserved(ref.path) &&
		slices.ContainsFunc(rep.got, func(o outcome) bool { return rep.stored(o) && o.header.Get(stamp.Header) == "" })
	if rep.n >= p.m.W {
		if needRecord {
			if err := p.recordVersion(r, ref, st, tee); err != nil {
				p.obs.QuorumFailure("version")
				p.discardSpool(tee)
				writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("stored on %d of %d replicas, but its version record failed: %v", rep.n, len(rep.targets), err))
				return
			}
		}
		// The backup takes it too before the ack: stored (sync) or
		// durably queued (async). Either failing means no ack.
		if err := p.backupAck(r.Context(), r, ref, tee); err != nil {
			p.obs.QuorumFailure("backup")
			p.log.Error("backup failed: write not acknowledged", "key", ref.key(), "err", err)
			writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("stored on %d of %d replicas, but the backup failed: %v", rep.n, len(rep.targets), err))
			return
		}
		if superseded(rep.first) {
			w.WriteHeader(http.StatusOK) // a newer version is stored: this one was written over
			return
		}
		relay(w, rep.first)
		return
	}
	if rep.n > 0 {
		// Failed, yet stored somewhere: a real version the healer will
		// spread, so it is recorded and backed up like any other.
		p.keepFailedVersion(r, ref, st, tee, needRecord)
	} else {
		p.discardSpool(tee)
	}
	if rep.readOnly() {
		p.obs.QuorumFailure(r.Method)
		writeError(w, http.StatusServiceUnavailable, errReadOnly.Error())
		return
	}
	if o, same := rep.clientError(); same {
		// Every replica refused the request itself (say 404 missing user,
		// 413 too large): answer as a single Charm server would.
		relay(w, o)
		return
	}
	if !tombstone.Reserved(ref.path) {
		// cring's own writes (tombstones, version records) are counted by
		// the client request they serve.
		p.obs.QuorumFailure(r.Method)
	}
	writeError(w, http.StatusServiceUnavailable, rep.shortfall())
}

// mayNeedRecord reports whether an upload to targets may need a version
// record, so its checksum must be taken as it streams: some target was not
// seen keeping stamps at its last write (or hasn't been written to yet).
func (p *Proxy) mayNeedRecord(targets []int) bool {
	return p.records && slices.ContainsFunc(targets, func(i int) bool { return !p.keepsStamps[i].Load() })
}

// learnStamping remembers, per node, whether its last stored write was
// confirmed with the stamp (a cring node) or not (a stock node).
func (p *Proxy) learnStamping(os []outcome, stored func(outcome) bool) {
	for _, o := range os {
		if stored(o) && o.node >= 0 && o.node < len(p.keepsStamps) {
			p.keepsStamps[o.node].Store(o.header.Get(stamp.Header) != "")
		}
	}
}

// keepFailedVersion records and backs up an upload answered 503 that some
// replica stored anyway (docs/design.md, "A failed write that survives").
func (p *Proxy) keepFailedVersion(r *http.Request, ref fileRef, st stamp.Stamp, tee *backupTee, record bool) {
	if record {
		if err := p.recordVersion(r, ref, st, tee); err != nil {
			p.log.Warn("no version record for a failed write that survives", "key", ref.key(), "err", err)
		}
	}
	// Best effort, and bounded: the client is waiting for its 503.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), p.postQuorum)
	defer cancel()
	if err := p.backupAck(ctx, r, ref, tee); err != nil {
		p.log.Warn("no backup of a failed write that survives", "key", ref.key(), "err", err)
	}
}

// discardSpool drops an upload's backup spool, if any.
func (p *Proxy) discardSpool(tee *backupTee) {
	if tee != nil && tee.spool != nil {
		p.backup.Discard(tee.spool)
		tee.spool = nil
	}
}

// keptTee checks the proxy's own copy of an upload whose body has been
// read whole. A spool that failed is dropped: no backup copy means no ack
// (backupAck reports it).
func (p *Proxy) keptTee(key string, tee *backupTee) {
	if tee.err != nil {
		p.log.Warn("upload could not be spooled for the backup", "key", key, "err", tee.err)
		p.discardSpool(tee)
	}
}

// clientBodyError is the error to report for a failed read of a client's
// body: what the client did wrong (stalled, malformed), else that it left.
func clientBodyError(ctx context.Context, err error) error {
	if _, ok := asClientError(err); ok {
		return err
	}
	if ctx.Err() != nil {
		return errClientGone
	}
	return err
}

// bodyFailed answers a write whose client body could not be read, or was
// not what charm's server reads.
func (p *Proxy) bodyFailed(w http.ResponseWriter, r *http.Request, key string, tee *backupTee, err error) {
	p.discardSpool(tee)
	p.log.Warn("write aborted: client body failed", "key", key, "err", err, "request_id", r.Header.Get("X-Request-Id"))
	if ce, ok := asClientError(err); ok {
		writeClientError(w, ce)
		return
	}
	writeError(w, http.StatusBadRequest, "read request body: "+err.Error())
}
