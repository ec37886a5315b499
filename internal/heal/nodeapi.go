package heal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cring-dev/cring/internal/fsname"
	"github.com/cring-dev/cring/internal/stamp"
	"github.com/cring-dev/cring/internal/token"
)

var (
	// errNotFound is a node's 404 for a path.
	errNotFound = errors.New("not found")
	// errNewer is a cring node's 409: it holds a newer version than the one
	// sent, and keeps it.
	errNewer = errors.New("the node holds a newer version")
)

// listing is a Charm directory listing; a cring node adds each entry's stamp.
type listing struct {
	Name    string    `json:"name"`
	IsDir   bool      `json:"is_dir"`
	Size    int64     `json:"size"`
	ModTime time.Time `json:"modtime"`
	Stamp   string    `json:"stamp,omitempty"`
	Files   []listing `json:"files,omitempty"`
}

// nodeAPI speaks a Charm node's HTTP API on behalf of any user, with tokens
// signed by the cluster's server key.
type nodeAPI struct {
	client  *http.Client
	signer  *token.Signer
	issuer  func() string
	timeout time.Duration
	log     *slog.Logger

	mu     sync.Mutex
	tokens map[string]cachedToken
}

type cachedToken struct {
	jwt     string
	expires time.Time
}

func (a *nodeAPI) token(user string) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if t, ok := a.tokens[user]; ok && time.Until(t.expires) > time.Minute {
		return t.jwt, nil
	}
	const ttl = 10 * time.Minute
	jwt, err := a.signer.Sign(user, a.issuer(), ttl)
	if err != nil {
		return "", fmt.Errorf("sign token for %s: %w", user, err)
	}
	a.tokens[user] = cachedToken{jwt, time.Now().Add(ttl)}
	return jwt, nil
}

func fsURL(base *url.URL, path string) string {
	u := *base
	u.Path = strings.TrimRight(u.Path, "/") + "/v1/fs/" + strings.TrimPrefix(path, "/")
	return u.String()
}

func (a *nodeAPI) do(ctx context.Context, method, u, user string, body io.Reader, hdr http.Header) (*http.Response, error) {
	jwt, err := a.token(user)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("Authorization", "bearer "+jwt)
	req.Header.Set("X-Request-Id", "cring-heal")
	return a.client.Do(req)
}

// list returns a directory listing, its entries named by path (a node lists
// names escaped, fsname); errNotFound when the node has no such directory
// (or the path is a file).
func (a *nodeAPI) list(ctx context.Context, base *url.URL, user, dir string) (*listing, error) {
	var fi listing
	if err := a.getJSON(ctx, fsURL(base, dir), user, &fi); err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	kept := fi.Files[:0]
	for _, f := range fi.Files {
		p, ok := fsname.FromListing(f.Name)
		if !ok {
			// No path addresses it: acting on its path would act on
			// another file.
			a.log.Warn("a file no path names is left alone", "node", base.Host, "user", user, "dir", dir, "name", f.Name)
			continue
		}
		f.Name = p
		kept = append(kept, f)
	}
	fi.Files = kept
	return &fi, nil
}

// getJSON GETs u as user and decodes a JSON answer; errNotFound for a 404
// or a non-JSON answer (a file where a directory was asked for).
func (a *nodeAPI) getJSON(ctx context.Context, u, user string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	resp, err := a.do(ctx, http.MethodGet, u, user, nil, nil)
	if err != nil {
		return err
	}
	defer drainClose(resp.Body)
	if resp.StatusCode == http.StatusNotFound {
		return errNotFound
	}
	if resp.StatusCode != http.StatusOK {
		return errors.New(resp.Status)
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		return errNotFound
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(v); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	return nil
}

// open streams a file; the caller closes the body. The node request is
// bounded by ctx only: the caller sets a progress timeout for large files.
func (a *nodeAPI) open(ctx context.Context, base *url.URL, user, path string) (*http.Response, error) {
	resp, err := a.do(ctx, http.MethodGet, fsURL(base, path), user, nil, nil)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusNotFound {
		drainClose(resp.Body)
		return nil, errNotFound
	}
	if resp.StatusCode != http.StatusOK || strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		drainClose(resp.Body)
		return nil, fmt.Errorf("get %s: %s %s", path, resp.Status, resp.Header.Get("Content-Type"))
	}
	return resp, nil
}

// absent reports whether a node holds no file at path (a directory of
// that name counts as none, as in a listing): one request, whatever the
// size of the directory around it.
func (a *nodeAPI) absent(ctx context.Context, base *url.URL, user, path string) bool {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	resp, err := a.do(ctx, http.MethodGet, fsURL(base, path), user, nil, nil)
	if err != nil {
		return false
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		drainClose(resp.Body)
		return true
	case resp.StatusCode == http.StatusOK && strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json"):
		drainClose(resp.Body)
		return true
	}
	resp.Body.Close() // unread: a file there is all it needs to know
	return false
}

// drainClose reads what is left of a small answer before closing it, so
// its connection is kept for the next request (an answer closed unread
// costs a new connection).
func drainClose(body io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(body, 64<<10))
	body.Close()
}

// small reads a file of at most 1 MiB whole (tombstones, version records).
func (a *nodeAPI) small(ctx context.Context, base *url.URL, user, path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	resp, err := a.open(ctx, base, user, path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return b, nil
}

// stampHeader carries a version's stamp to a node (a zero stamp: none).
func stampHeader(h http.Header, s stamp.Stamp) http.Header {
	if h == nil {
		h = http.Header{}
	}
	if !s.IsZero() {
		h.Set(stamp.Header, s.String())
	}
	return h
}

// put uploads r as path with mode and the version's stamp, streamed as
// Charm's multipart form. errNewer when a cring node holds a newer version.
func (a *nodeAPI) put(ctx context.Context, base *url.URL, user, path string, mode uint32, st stamp.Stamp, r io.Reader) error {
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		part, err := mw.CreateFormFile("data", path[strings.LastIndex(path, "/")+1:])
		if err == nil {
			_, err = io.Copy(part, r)
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	u := fsURL(base, path) + "?mode=" + strconv.FormatUint(uint64(mode), 10)
	resp, err := a.do(ctx, http.MethodPost, u, user, pr, stampHeader(http.Header{"Content-Type": {mw.FormDataContentType()}}, st))
	pr.CloseWithError(errors.New("request ended"))
	if err != nil {
		return fmt.Errorf("put %s: %w", path, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode == http.StatusConflict {
		return fmt.Errorf("put %s: %w", path, errNewer)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("put %s: %s", path, resp.Status)
	}
	return nil
}

// remove deletes path (Charm answers 200 whether or not it existed). With a
// stamp, a cring node deletes only what is older and keeps a tombstone;
// errNewer when it holds something newer.
func (a *nodeAPI) remove(ctx context.Context, base *url.URL, user, path string, st stamp.Stamp) error {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	resp, err := a.do(ctx, http.MethodDelete, fsURL(base, path), user, nil, stampHeader(nil, st))
	if err != nil {
		return fmt.Errorf("delete %s: %w", path, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode == http.StatusConflict {
		return fmt.Errorf("delete %s: %w", path, errNewer)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("delete %s: %s", path, resp.Status)
	}
	return nil
}

// fileMeta is what a cring node's metadata endpoint answers.
type fileMeta struct {
	Size    int64     `json:"size"`
	MTime   time.Time `json:"mtime"`
	SHA256  string    `json:"sha256"`
	Corrupt bool      `json:"corrupt"` // the bytes no longer match the checksum recorded at write time
}

// meta asks a cring node for a file's exact metadata, its bytes hashed on
// the node now (verify=1), not the checksum recorded when it was written.
func (a *nodeAPI) meta(ctx context.Context, base *url.URL, user, path string) (*fileMeta, error) {
	u := *base
	u.Path = strings.TrimRight(u.Path, "/") + "/v1/cring/meta/" + strings.TrimPrefix(path, "/")
	u.RawQuery = "verify=1"
	var m fileMeta
	if err := a.getJSON(ctx, u.String(), user, &m); err != nil {
		return nil, fmt.Errorf("meta %s: %w", path, err)
	}
	return &m, nil
}
