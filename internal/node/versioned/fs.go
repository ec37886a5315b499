package versioned

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"

	charm "github.com/charmbracelet/charm/proto"
	"github.com/charmbracelet/charm/server"

	"github.com/cring-dev/cring/internal/auth"
	"github.com/cring-dev/cring/internal/node/filestore"
	"github.com/cring-dev/cring/internal/stamp"
)

// Headers cring node adds to charm's file API.
const (
	// SHA256Header carries a file's recorded SHA-256 (hex) on reads and
	// on answers to writes.
	SHA256Header = stamp.SHA256Header
	fsPrefix     = "/v1/fs"
)

// MsgNewer is the message of a 409: the node holds a newer version (or a
// newer delete) of the path.
const MsgNewer = "a newer version is stored"

// userLookup is the one account call the file API makes.
type userLookup interface {
	GetUserWithID(charmID string) (*charm.User, error)
}

// fsHandler serves charm's file API (GET|HEAD|POST|DELETE /v1/fs/<path>)
// from the versioned store. It answers as charm's own handler does (status
// codes, JSON errors, headers, listing bytes) and adds versions: a request
// carrying stamp.Header is checked against what the node holds.
type fsHandler struct {
	store      *filestore.Store
	verifier   *auth.Verifier
	users      userLookup
	maxStorage int64 // charm's UserMaxStorage: 0 is unlimited
	log        *slog.Logger
}

// isFSRequest reports whether r is one fsHandler serves. Like charm's goji
// routes it matches the escaped path, and HEAD is served as GET.
func isFSRequest(r *http.Request) bool {
	if !strings.HasPrefix(r.URL.EscapedPath(), fsPrefix+"/") {
		return false
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodDelete:
		return true
	}
	return false
}

func (h *fsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id, ok := h.authenticate(w, r)
	if !ok {
		return
	}
	// charm's RequestLimitMiddleware, read when asked: it is charm's variable.
	if r.ContentLength > server.MaxFSRequestSize {
		http.Error(w, http.StatusText(http.StatusRequestEntityTooLarge), http.StatusRequestEntityTooLarge)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, server.MaxFSRequestSize)
	// charm takes the path as sent (escaped), cleaned; so does the store.
	p := strings.TrimPrefix(r.URL.EscapedPath(), fsPrefix)
	switch r.Method {
	case http.MethodPost:
		h.post(w, r, id, p)
	case http.MethodDelete:
		h.delete(w, r, id, p)
	default:
		h.get(w, r, id, p)
	}
}

// authenticate checks the bearer token and the account as charm's JWT and
// CharmUserMiddleware do, with their exact answers.
func (h *fsHandler) authenticate(w http.ResponseWriter, r *http.Request) (string, bool) {
	hdr := r.Header.Get("Authorization")
	if hdr == "" {
		writeRaw(w, http.StatusBadRequest, `{"message":"JWT is missing."}`)
		return "", false
	}
	parts := strings.Fields(hdr)
	if len(parts) != 2 || strings.ToLower(parts[0]) != "bearer" {
		writeRaw(w, http.StatusInternalServerError, `{"message":"Something went wrong while checking the JWT."}`)
		return "", false
	}
	id, err := h.verifier.Verify(r.Context(), "Bearer "+parts[1])
	if err != nil {
		writeRaw(w, http.StatusUnauthorized, `{"message":"JWT is invalid."}`)
		return "", false
	}
	_, err = h.users.GetUserWithID(id)
	if errors.Is(err, charm.ErrMissingUser) {
		reply(w, http.StatusNotFound, message{Message: fmt.Sprintf("missing user for id '%s'", id)})
		return "", false
	}
	if err != nil {
		h.log.Error("look up user", "id", id, "err", err)
		internalError(w)
		return "", false
	}
	return id, true
}

// message is charm's JSON error (proto.Message), plus the stamp of the
// delete that answers a request when there is one.
type message struct {
	Message string `json:"message"`
	Deleted string `json:"deleted,omitempty"`
}

// reply writes v as charm's renderCustomError does (encoder, so with a
// trailing newline).
func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeRaw writes a fixed JSON body, as go-jwt-middleware does.
func writeRaw(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

// internalError is charm's renderError.
func internalError(w http.ResponseWriter) {
	reply(w, http.StatusInternalServerError, message{Message: "internal error"})
}

// requestStamp reads the request's stamp; a bad one is answered 400.
func requestStamp(w http.ResponseWriter, r *http.Request) (stamp.Stamp, bool) {
	st, err := stamp.Parse(r.Header.Get(stamp.Header))
	if err != nil {
		reply(w, http.StatusBadRequest, message{Message: stamp.Header + ": " + err.Error()})
		return stamp.Stamp{}, false
	}
	return st, true
}

// conflict answers a refused write or delete: 409, the newer stamp held in
// stamp.Header, and "deleted" when it is a delete's.
func conflict(w http.ResponseWriter, ce *filestore.ConflictError) {
	w.Header().Set(stamp.Header, ce.Held.String())
	m := message{Message: MsgNewer}
	if ce.Deleted {
		m.Deleted = ce.Held.String()
	}
	reply(w, http.StatusConflict, m)
}

// versionHeaders describes a stored version on an answer.
func versionHeaders(w http.ResponseWriter, v filestore.Version) {
	if !v.Stamp.IsZero() {
		w.Header().Set(stamp.Header, v.Stamp.String())
	}
	if v.SHA256 != "" {
		w.Header().Set(SHA256Header, v.SHA256)
	}
}

// errOverQuota ends an upload that would exceed the user's storage limit.
var errOverQuota = errors.New("user storage limit exceeded")

func (h *fsHandler) post(w http.ResponseWriter, r *http.Request, id, p string) {
	m, err := strconv.ParseUint(r.URL.Query().Get("mode"), 10, 32)
	if err != nil {
		h.log.Error("file mode not a number", "err", err)
		internalError(w)
		return
	}
	st, ok := requestStamp(w, r)
	if !ok {
		return
	}
	var body io.Reader
	if body, err = dataPart(r); err != nil {
		h.log.Error("cannot parse form data", "err", err)
		internalError(w)
		return
	}
	if h.maxStorage > 0 {
		used, err := h.store.Usage(id)
		if err != nil {
			h.log.Error("cannot stat user storage", "err", err)
			internalError(w)
			return
		}
		body = &capped{r: body, left: h.maxStorage - used}
	}
	v, _, err := h.store.Write(id, p, st, fs.FileMode(m), body)
	var ce *filestore.ConflictError
	switch {
	case errors.As(err, &ce):
		conflict(w, ce)
		return
	case errors.Is(err, errOverQuota):
		reply(w, http.StatusForbidden, message{Message: errOverQuota.Error()})
		return
	case err != nil:
		h.log.Error("cannot post file", "user", id, "path", p, "err", err)
		internalError(w)
		return
	}
	versionHeaders(w, v)
	w.WriteHeader(http.StatusOK)
}

// dataPart is the multipart field "data", what charm's r.FormFile("data")
// reads, streamed: it reads to the end of the whole body before it reports
// the end of the data, so a body cut anywhere is an error, never a file.
func dataPart(r *http.Request) (io.Reader, error) {
	mr, err := r.MultipartReader()
	if err != nil {
		return nil, err
	}
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			return nil, http.ErrMissingFile
		}
		if err != nil {
			return nil, err
		}
		if part.FormName() == "data" {
			return &wholeBody{part: part, mr: mr}, nil
		}
	}
}

type wholeBody struct {
	part *multipart.Part
	mr   *multipart.Reader
}

func (b *wholeBody) Read(p []byte) (int, error) {
	n, err := b.part.Read(p)
	if err != io.EOF {
		return n, err
	}
	for { // the parts after "data", up to the closing boundary
		next, err := b.mr.NextPart()
		if err == io.EOF {
			return n, io.EOF
		}
		if err != nil {
			return n, err
		}
		if _, err := io.Copy(io.Discard, next); err != nil {
			return n, err
		}
	}
}

// capped fails a read once more than left bytes came: charm refuses a file
// that takes the user past the limit (usage + size > limit).
type capped struct {
	r    io.Reader
	left int64
}

func (c *capped) Read(p []byte) (int, error) {
	if c.left < 0 {
		return 0, errOverQuota
	}
	if int64(len(p)) > c.left+1 {
		p = p[:c.left+1]
	}
	n, err := c.r.Read(p)
	if c.left -= int64(n); c.left < 0 {
		return n, errOverQuota
	}
	return n, err
}

func (h *fsHandler) delete(w http.ResponseWriter, r *http.Request, id, p string) {
	st, ok := requestStamp(w, r)
	if !ok {
		return
	}
	err := h.store.Remove(id, p, st)
	var ce *filestore.ConflictError
	switch {
	case errors.As(err, &ce):
		conflict(w, ce)
		return
	case err != nil:
		h.log.Error("cannot delete file", "user", id, "path", p, "err", err)
		internalError(w)
		return
	}
	if !st.IsZero() {
		w.Header().Set(stamp.Header, st.String())
	}
	w.WriteHeader(http.StatusOK)
}

func (h *fsHandler) get(w http.ResponseWriter, r *http.Request, id, p string) {
	e, err := h.store.Open(id, p)
	if errors.Is(err, fs.ErrNotExist) {
		m := message{Message: "file not found"}
		if t, ok, err := h.store.Deleted(id, p); err == nil && ok {
			m.Deleted = t.String()
		}
		reply(w, http.StatusNotFound, m)
		return
	}
	if err != nil {
		h.log.Error("cannot get file", "user", id, "path", p, "err", err)
		internalError(w)
		return
	}
	w.Header().Set("X-File-Mode", strconv.FormatUint(uint64(e.Info.Mode()), 10))
	if e.File == nil {
		w.Header().Set("Content-Type", "application/json")
		_ = e.Listing.Encode(w)
		return
	}
	defer e.File.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Last-Modified", e.Info.ModTime().UTC().Format(http.TimeFormat))
	w.Header().Set("Content-Length", strconv.FormatInt(e.Info.Size(), 10))
	versionHeaders(w, e.Version)
	if r.Method == http.MethodHead {
		w.WriteHeader(http.StatusOK)
		return
	}
	h.serveFile(w, e, id, p)
}

// readChunk is how much of a file is held back until the rest of it has
// matched its checksum.
const readChunk = 64 << 10

// serveFile streams a file while hashing it and holds its last chunk back
// until the whole file matched the recorded SHA-256, so a copy that rotted
// on disk is never served whole: a file shorter than two chunks gets a 500
// before any byte is sent, a longer one is cut short (the client gets
// fewer bytes than Content-Length, an error it can fail over from).
func (h *fsHandler) serveFile(w http.ResponseWriter, e *filestore.Entry, id, p string) {
	if e.Version.SHA256 == "" { // written by stock charm: nothing to check against
		_, _ = io.Copy(w, e.File)
		return
	}
	sum := sha256.New()
	bufs := [2][]byte{make([]byte, readChunk), make([]byte, readChunk)}
	var pending []byte
	var total int64
	sent := false
	for i := 0; ; i ^= 1 {
		n, err := io.ReadFull(e.File, bufs[i])
		chunk := bufs[i][:n]
		sum.Write(chunk)
		total += int64(n)
		last := err == io.EOF || err == io.ErrUnexpectedEOF
		if err != nil && !last {
			h.log.Error("cannot read file", "user", id, "path", p, "err", err)
			h.fail(w, sent, "internal error")
			return
		}
		if last {
			if hex.EncodeToString(sum.Sum(nil)) != e.Version.SHA256 || (e.Version.Size >= 0 && total != e.Version.Size) {
				h.log.Error("refusing to serve a corrupt copy: its content no longer matches the SHA-256 recorded when it was written",
					"user", id, "path", p, "file", e.File.Name())
				h.fail(w, sent, "file is corrupt on this node")
				return
			}
			_, _ = w.Write(pending)
			_, _ = w.Write(chunk)
			return
		}
		if len(pending) > 0 {
			if _, err := w.Write(pending); err != nil {
				return // client gone
			}
			sent = true
		}
		pending = chunk
	}
}

// fail ends a file read that went wrong: a 500 when nothing was sent yet,
// else a cut connection (the response can't be taken back).
func (h *fsHandler) fail(w http.ResponseWriter, sent bool, msg string) {
	if sent {
		panic(http.ErrAbortHandler)
	}
	for k := range w.Header() {
		delete(w.Header(), k)
	}
	reply(w, http.StatusInternalServerError, message{Message: msg})
}
