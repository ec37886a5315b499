package heal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/cring-dev/cring/internal/charmapi"
	"github.com/cring-dev/cring/internal/stamp"
	"github.com/cring-dev/cring/internal/token"
)

var (
	// errNotFound is a node's 404 for a path.
	errNotFound = charmapi.ErrNotFound
	// errNewer is a cring node's 409: it holds a newer version than the one
	// sent, and keeps it.
	errNewer = charmapi.ErrNewer
)

// listing is a Charm directory listing; a cring node adds each entry's stamp.
type listing = charmapi.Entry

// nodeAPI speaks a Charm node's HTTP API on behalf of any user, with tokens
// signed by the cluster's server key (package charmapi), each call bounded
// by the stall timeout unless it streams.
type nodeAPI struct {
	api     *charmapi.Client
	timeout time.Duration
	log     *slog.Logger
}

func newNodeAPI(tr http.RoundTripper, signer *token.Signer, issuer func() string, timeout time.Duration, log *slog.Logger) *nodeAPI {
	return &nodeAPI{
		api: &charmapi.Client{
			HTTP:      &http.Client{Transport: tr},
			Tokens:    charmapi.NewTokens(signer, issuer, 10*time.Minute, time.Minute),
			RequestID: "cring-heal", // tests and node logs tell the healer's requests apart
			MaxJSON:   64 << 20,
		},
		timeout: timeout,
		log:     log,
	}
}

// list returns a directory listing, its entries named by path (a node lists
// names escaped, charmapi.FromListing); errNotFound when the node has no such
// directory (or the path is a file).
func (a *nodeAPI) list(ctx context.Context, base *url.URL, user, dir string) (*listing, error) {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	fi, unnamed, err := a.api.List(ctx, base, user, dir)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	for _, name := range unnamed {
		// No path addresses it: acting on its path would act on another file.
		a.log.Warn("a file no path names is left alone", "node", base.Host, "user", user, "dir", dir, "name", name)
	}
	return fi, nil
}

// open streams a file; the caller closes the body. The node request is
// bounded by ctx only: the caller sets a progress timeout for large files.
func (a *nodeAPI) open(ctx context.Context, base *url.URL, user, path string) (*http.Response, error) {
	resp, err := a.api.Open(ctx, base, user, path)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", path, err)
	}
	return resp, nil
}

// absent reports whether a node holds no file at path (a directory of
// that name counts as none, as in a listing): one request, whatever the
// size of the directory around it.
func (a *nodeAPI) absent(ctx context.Context, base *url.URL, user, path string) bool {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	resp, err := a.api.Open(ctx, base, user, path)
	if err != nil {
		return errors.Is(err, charmapi.ErrNotFound) || errors.Is(err, charmapi.ErrIsDir)
	}
	resp.Body.Close() // unread: a file there is all it needs to know
	return false
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
func stampHeader(s stamp.Stamp) http.Header {
	h := http.Header{}
	if !s.IsZero() {
		h.Set(stamp.Header, s.String())
	}
	return h
}

// put uploads r as path with mode and the version's stamp, streamed as
// Charm's multipart form. errNewer when a cring node holds a newer version.
func (a *nodeAPI) put(ctx context.Context, base *url.URL, user, path string, mode uint32, st stamp.Stamp, r io.Reader) error {
	if err := a.api.Put(ctx, base, user, path, fs.FileMode(mode), r, -1, stampHeader(st)); err != nil {
		return fmt.Errorf("put %s: %w", path, err)
	}
	return nil
}

// remove deletes path (Charm answers 200 whether or not it existed). With a
// stamp, a cring node deletes only what is older and keeps a tombstone;
// errNewer when it holds something newer.
func (a *nodeAPI) remove(ctx context.Context, base *url.URL, user, path string, st stamp.Stamp) error {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	if err := a.api.Delete(ctx, base, user, path, stampHeader(st)); err != nil {
		return fmt.Errorf("delete %s: %w", path, err)
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
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	u := charmapi.URL(base, "/v1/cring/meta/"+strings.TrimPrefix(path, "/"), url.Values{"verify": {"1"}})
	var m fileMeta
	if err := a.api.GetJSON(ctx, u, user, &m); err != nil {
		return nil, fmt.Errorf("meta %s: %w", path, err)
	}
	return &m, nil
}
