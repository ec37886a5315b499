package charmapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"path"
	"strconv"
)

// Client acts for any user on Charm servers (nodes, or a proxy) through
// the file API, with tokens from Tokens. Its calls take the server's base
// URL, so one Client serves every node; they are bounded by their context
// and the HTTP client's own timeouts, and leave error context (what, on
// which node) to the caller.
type Client struct {
	HTTP   *http.Client
	Tokens *Tokens
	// RequestID, when set, is every request's X-Request-Id, so a node's
	// log (and a test) tells these requests from clients'.
	RequestID string
	// MaxJSON bounds the bytes of a JSON answer (a listing) read
	// [64 MiB].
	MaxJSON int64
}

// Do sends req as user.
func (c *Client) Do(req *http.Request, user string) (*http.Response, error) {
	jwt, err := c.Tokens.Get(user)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "bearer "+jwt) // as charm's client sends it
	if c.RequestID != "" {
		req.Header.Set("X-Request-Id", c.RequestID)
	}
	return c.HTTP.Do(req)
}

func (c *Client) send(ctx context.Context, method string, u *url.URL, user string, body io.Reader, hdr http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	return c.Do(req, user)
}

// getJSON GETs u as user and decodes the JSON answer with decode. A 404,
// or an answer that is not JSON (a file where a directory was asked for),
// is ErrNotFound.
func (c *Client) getJSON(ctx context.Context, u *url.URL, user string, decode func(io.Reader) error) error {
	resp, err := c.send(ctx, http.MethodGet, u, user, nil, nil)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return statusError(resp)
	}
	defer drainClose(resp.Body)
	if !isJSON(resp.Header) {
		return fmt.Errorf("%w: a file", ErrNotFound)
	}
	limit := c.MaxJSON
	if limit <= 0 {
		limit = 64 << 20
	}
	return decode(io.LimitReader(resp.Body, limit))
}

// GetJSON GETs u (any route: see URL) as user and decodes its JSON answer
// into v; ErrNotFound for a 404 or an answer that is not JSON.
func (c *Client) GetJSON(ctx context.Context, u *url.URL, user string, v any) error {
	return c.getJSON(ctx, u, user, func(r io.Reader) error {
		if err := json.NewDecoder(r).Decode(v); err != nil {
			return fmt.Errorf("decode: %w", err)
		}
		return nil
	})
}

// List is user's directory dir at base, its Files named by path
// (DecodeListing: unnamed are the listed names no path addresses, left
// out). ErrNotFound when there is no such directory (or dir is a file).
func (c *Client) List(ctx context.Context, base *url.URL, user, dir string) (listed *Entry, unnamed []string, err error) {
	err = c.getJSON(ctx, FSURL(base, dir, nil), user, func(r io.Reader) error {
		var err error
		listed, unnamed, err = DecodeListing(r)
		return err
	})
	return listed, unnamed, err
}

// Open streams user's file p at base; the caller closes the body. It is
// bounded by ctx only: large files take as long as they take. ErrNotFound
// for a 404, ErrIsDir for a directory.
func (c *Client) Open(ctx context.Context, base *url.URL, user, p string) (*http.Response, error) {
	resp, err := c.send(ctx, http.MethodGet, FSURL(base, p, nil), user, nil, nil)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, statusError(resp)
	}
	if isJSON(resp.Header) {
		drainClose(resp.Body)
		return nil, ErrIsDir
	}
	return resp, nil
}

// Put uploads user's file p at base with mode, streamed as Charm's upload
// form: size bytes of r with a known Content-Length, or, for a size below
// zero, all of r, chunked. hdr is added to the request (a stamp). A cring
// node that holds a newer version answers ErrNewer.
func (c *Client) Put(ctx context.Context, base *url.URL, user, p string, mode fs.FileMode, r io.Reader, size int64, hdr http.Header) error {
	form := NewForm(path.Base(p))
	if size >= 0 {
		r = io.LimitReader(r, size)
	}
	body := form.Body(r)
	q := url.Values{"mode": {strconv.FormatUint(uint64(mode), 10)}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, FSURL(base, p, q).String(), body)
	if err != nil {
		return err
	}
	if size >= 0 {
		req.ContentLength = form.Len(size)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", form.ContentType())
	resp, err := c.Do(req, user)
	if err != nil {
		return err
	}
	return answered(resp)
}

// Delete removes user's path p at base (Charm answers 200 whether or not
// it existed; a directory goes with everything under it). hdr is added to
// the request (a stamp): a cring node that holds something newer answers
// ErrNewer and keeps it.
func (c *Client) Delete(ctx context.Context, base *url.URL, user, p string, hdr http.Header) error {
	resp, err := c.send(ctx, http.MethodDelete, FSURL(base, p, nil), user, nil, hdr)
	if err != nil {
		return err
	}
	return answered(resp)
}

// answered closes a write's answer: nil for a 2xx, else its StatusError.
func answered(resp *http.Response) error {
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return statusError(resp)
	}
	drainClose(resp.Body)
	return nil
}
