// Package charmapi speaks Charm's HTTP file API (/v1/fs) as a user: the
// URL of a path (escaped as a node stores it), a directory listing with its
// names turned back into paths, the multipart form an upload is sent as,
// and a Client that acts for any user with tokens signed by the cluster's
// server key (the healer, restore). The proxy forwards its clients' own
// tokens, so it uses only the URL, form and listing helpers.
package charmapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// ParseBase parses the HTTP base URL of a node or proxy
// (http(s)://host:port, perhaps with a path prefix).
func ParseBase(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%q: want http(s)://host:port", s) // the caller says which URL
	}
	return u, nil
}

// FSPath is the route of path p in Charm's file API, unescaped, as a
// url.URL's Path holds it: /v1/fs/<p>.
func FSPath(p string) string { return "/v1/fs/" + strings.TrimPrefix(p, "/") }

// URL is route (unescaped) under base, the HTTP base URL of a node or
// proxy, with query q (nil: none). The path is escaped where a URL needs it
// when the URL is written out (Escape): names are opaque (charm encrypts
// them) and sent as they are.
func URL(base *url.URL, route string, q url.Values) *url.URL {
	u := *base
	u.Path = strings.TrimRight(u.Path, "/") + route
	u.RawPath = ""
	u.RawQuery = q.Encode()
	return &u
}

// FSURL is path p's URL in the file API at base, with query q (nil: none).
func FSURL(base *url.URL, p string, q url.Values) *url.URL {
	return URL(base, FSPath(p), q)
}

var (
	// ErrNotFound is a 404 for a path, or a file where a directory (a
	// JSON answer) was asked for.
	ErrNotFound = errors.New("not found")
	// ErrNewer is a cring node's 409: it holds a newer version than the
	// one sent, and keeps it.
	ErrNewer = errors.New("the node holds a newer version")
	// ErrIsDir is a directory where a file was asked for.
	ErrIsDir = errors.New("is a directory")
)

// StatusError is an answer other than the 2xx asked for, with the
// {"message"} of its body (or its text) when it has one. It is ErrNotFound
// for a 404 and ErrNewer for a 409.
type StatusError struct {
	Status  int
	Message string
}

func (e *StatusError) Error() string {
	if e.Message != "" {
		return fmt.Sprintf("%d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
	}
	return fmt.Sprintf("%d %s", e.Status, http.StatusText(e.Status))
}

// Is makes a 404 ErrNotFound and a 409 ErrNewer for errors.Is.
func (e *StatusError) Is(target error) bool {
	return target == ErrNotFound && e.Status == http.StatusNotFound ||
		target == ErrNewer && e.Status == http.StatusConflict
}

// Temporary: worth retrying (busy, or partly down), as opposed to a
// refusal like 401 or 404 "missing user".
func (e *StatusError) Temporary() bool {
	return e.Status >= 500 || e.Status == http.StatusTooManyRequests
}

// statusError reads a refused answer's message and closes it.
func statusError(resp *http.Response) error {
	defer drainClose(resp.Body)
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	var m struct {
		Message string `json:"message"`
	}
	msg := strings.TrimSpace(string(b))
	if json.Unmarshal(b, &m) == nil && m.Message != "" {
		msg = m.Message
	}
	return &StatusError{Status: resp.StatusCode, Message: msg}
}

// drainClose reads what is left of a small answer before closing it, so
// its connection is kept for the next request (an answer closed unread
// costs a new connection).
func drainClose(body io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(body, 64<<10))
	body.Close()
}

// isJSON tells a directory listing from a file: Charm answers a GET of a
// directory with application/json and a file with its bytes.
func isJSON(h http.Header) bool {
	return strings.HasPrefix(h.Get("Content-Type"), "application/json")
}

// Entry is a Charm FileInfo as a listing answers it: the directory, and
// each of its Files. A cring node adds each entry's stamp.
type Entry struct {
	Name    string      `json:"name"`
	IsDir   bool        `json:"is_dir"`
	Mode    fs.FileMode `json:"mode"` // next to IsDir: fits its padding
	Size    int64       `json:"size"`
	ModTime time.Time   `json:"modtime"`
	Stamp   string      `json:"stamp,omitempty"`
	Files   []Entry     `json:"files,omitempty"`
}

// DecodeListing reads a directory answer (r bounded by the caller). Its
// Files are named by path (FromListing): a listed name no path addresses
// is left out, and returned in unnamed for the caller to report.
func DecodeListing(r io.Reader) (dir *Entry, unnamed []string, err error) {
	var d Entry
	if err := json.NewDecoder(r).Decode(&d); err != nil {
		return nil, nil, fmt.Errorf("decode listing: %w", err)
	}
	kept := d.Files[:0]
	for _, f := range d.Files {
		p, ok := FromListing(f.Name)
		if !ok {
			// No path addresses it: acting on its path would act on
			// another file.
			unnamed = append(unnamed, f.Name)
			continue
		}
		f.Name = p
		kept = append(kept, f)
	}
	d.Files = kept
	return &d, unnamed, nil
}
