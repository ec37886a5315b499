package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
)

// A request the client got wrong is refused here, before any node works on
// it, with the status and message a node would owe it: nodes (stock charm
// above all) answer most of these 500, which would read as node failures,
// fail the write as "stored on 0 of N replicas" and count against the
// nodes' health.

const (
	maxNameBytes = 255  // one path segment: NAME_MAX of the nodes' file systems
	maxPathBytes = 3072 // a whole path, leaving PATH_MAX (4096) room for a node's data directory
	maxFormParts = 1000 // what Go's multipart.ReadForm (charm's r.FormFile) reads at most
	formHead     = 4 << 10
)

// checkFSPath refuses a path no node can store or find.
func checkFSPath(ref fileRef) *clientError {
	if len(ref.path) > maxPathBytes {
		return &clientError{status: http.StatusRequestURITooLong,
			msg: fmt.Sprintf("path too long: %d bytes, at most %d", len(ref.path), maxPathBytes)}
	}
	for _, seg := range strings.Split(ref.path, "/") {
		if len(seg) > maxNameBytes {
			return badRequest("file name too long: %d bytes, at most %d", len(seg), maxNameBytes)
		}
	}
	return nil
}

// checkFSWrite refuses a write or delete of /v1/fs/* that no node should
// see: one of the user's root (it would erase the whole namespace, cring's
// tombstones included), or an upload without a mode or a multipart body.
func checkFSWrite(r *http.Request, ref fileRef) *clientError {
	if ref.path == "" {
		verb := "write"
		if r.Method == http.MethodDelete {
			verb = "delete"
		}
		return badRequest("refusing to %s the root of your files: name a file or directory", verb)
	}
	if r.Method != http.MethodPost {
		return nil
	}
	if ms := r.URL.Query().Get("mode"); ms == "" {
		return badRequest("missing ?mode=: the file's mode bits as a decimal number (charm sends mode=420 for 0644)")
	} else if _, err := strconv.ParseUint(ms, 10, 32); err != nil {
		return badRequest("mode %q is not a number: want the file's mode bits in decimal (420 for 0644)", ms)
	}
	if _, err := formBoundary(r); err != nil {
		return badRequest("%v", err)
	}
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return badRequest("an upload needs a body: a multipart form with a file part named data")
	}
	return nil
}

// formBoundary is the multipart boundary of an upload.
func formBoundary(r *http.Request) (string, error) {
	ct := r.Header.Get("Content-Type")
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || mt != "multipart/form-data" || params["boundary"] == "" {
		return "", fmt.Errorf("content type %q: an upload is multipart/form-data with a boundary", ct)
	}
	return params["boundary"], nil
}

// errMore ends the head of a body checked before the rest arrived.
var errMore = errors.New("the rest of the body is yet to come")

// checkForm reads a whole multipart upload as charm's r.FormFile("data")
// does and says what is wrong with it, if anything. Parts are skipped
// through skip (nil: io.Discard's pooled 8 KiB buffer); a part never hands
// out more than the multipart reader's 4 KiB buffer at a time, so a 4 KiB
// one costs no more reads.
func checkForm(r io.Reader, boundary string, skip []byte) error {
	mr := multipart.NewReader(r, boundary)
	data := false
	for parts := 0; ; parts++ {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return malformed(err)
		}
		if parts == maxFormParts {
			return &clientError{status: http.StatusRequestEntityTooLarge,
				msg: fmt.Sprintf("multipart body has more than %d parts", maxFormParts)}
		}
		if part.FormName() == "data" && part.FileName() != "" {
			data = true
		}
		if err := skipPart(part, skip); err != nil {
			return malformed(err)
		}
	}
	if !data {
		return badRequest("the multipart body has no file part named data (charm's form field for the file)")
	}
	return nil
}

// skipPart reads part to its end through buf (nil: io.Discard's).
func skipPart(part io.Reader, buf []byte) error {
	if buf == nil {
		_, err := io.Copy(io.Discard, part)
		return err
	}
	for {
		if _, err := part.Read(buf); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
	}
}

func malformed(err error) error {
	if ce, ok := asClientError(err); ok {
		return ce // the body itself failed (stalled, cut)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return badRequest("malformed multipart body: it ends before its closing boundary (is Content-Length shorter than the body?)")
	}
	return badRequest("malformed multipart body: %v", err)
}

// checkHead reads the first bytes of an upload and checks them before any
// node is asked, so a body that is no form at all never reaches one. It
// returns the body to stream on (the head, then the rest, checked as it
// passes) and a func that ends the check.
func checkHead(src io.Reader, boundary string, size int64) (io.Reader, func(), error) {
	n := int64(formHead)
	if size > 0 {
		n = min(n, size)
	}
	head := make([]byte, n)
	got, err := io.ReadFull(src, head)
	head = head[:got]
	switch {
	case err == io.EOF || err == io.ErrUnexpectedEOF:
		// The whole body, or a body cut short: either way the check of
		// the stream below decides.
	case err != nil:
		return nil, nil, err
	default:
		// Only a fault found within the head counts: one the check met
		// after asking for more bytes may be the head's end, not the body's.
		hr := &headReader{r: bytes.NewReader(head)}
		if cerr := checkForm(hr, boundary, nil); cerr != nil && !hr.more {
			return nil, nil, cerr
		}
	}
	fc := newFormCheck(io.MultiReader(bytes.NewReader(head), src), boundary)
	return fc, fc.stop, nil
}

// headReader is the head of a body; more records that a reader wanted more.
type headReader struct {
	r    io.Reader
	more bool
}

func (h *headReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	if err == io.EOF {
		h.more = true
		err = errMore
	}
	return n, err
}

// formCheck checks a multipart upload as it streams: a second reader of
// every chunk, so a malformed body fails as soon as it shows (and a
// truncated one at its end) instead of reaching the nodes' stores.
type formCheck struct {
	src    io.Reader
	pw     *io.PipeWriter
	done   chan struct{}
	result error
}

func newFormCheck(src io.Reader, boundary string) *formCheck {
	pr, pw := io.Pipe()
	f := &formCheck{src: src, pw: pw, done: make(chan struct{})}
	go func() {
		defer close(f.done)
		// Held for the whole upload: 4 KiB, not io.Discard's 8.
		f.result = checkForm(pr, boundary, make([]byte, formHead))
		if f.result != nil {
			pr.CloseWithError(f.result) // the next chunk fails at once
			return
		}
		_, _ = io.Copy(io.Discard, pr) // an epilogue after the closing boundary
	}()
	return f
}

func (f *formCheck) Read(p []byte) (int, error) {
	n, err := f.src.Read(p)
	if n > 0 {
		if _, werr := f.pw.Write(p[:n]); werr != nil {
			<-f.done
			if f.result != nil {
				return 0, f.result
			}
			return 0, werr
		}
	}
	if err == io.EOF {
		f.pw.Close()
		<-f.done
		if f.result != nil {
			return n, f.result
		}
		return n, io.EOF
	}
	return n, err
}

// stop ends the check (idempotent); the body's readers are done.
func (f *formCheck) stop() {
	f.pw.CloseWithError(errClientGone)
	<-f.done
}
