// Package restore puts backed-up files back into a cring cluster, and
// compares a backup with the cluster. It acts for each user through the
// cluster's normal Charm HTTP API with short-lived tokens signed by the
// cluster's shared server key, so it works on stock nodes and on a freshly
// built, empty cluster whose accounts exist.
package restore

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	charm "github.com/charmbracelet/charm/proto"
	"github.com/cring-dev/cring/internal/fsname"
	"github.com/cring-dev/cring/internal/token"
)

// Cluster is the Charm HTTP API of a cluster (the proxy) or of one node.
type Cluster struct {
	base   *url.URL
	issuer string
	signer *token.Signer
	hc     *http.Client

	mu     sync.Mutex
	tokens map[string]signed
}

type signed struct {
	jwt     string
	expires time.Time
}

// tokenTTL is how long a token restore signs lives; it is renewed well
// before it runs out.
const tokenTTL = 15 * time.Minute

// NewCluster talks to baseURL (e.g. http://127.0.0.1:35354), signing tokens
// for issuer (the public URL the nodes were given) with signer. tlsConf, when
// not nil, is the TLS client config for an https baseURL (a private CA).
func NewCluster(baseURL, issuer string, signer *token.Signer, tlsConf *tls.Config) (*Cluster, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("cluster url %q: want http(s)://host:port", baseURL)
	}
	if issuer == "" {
		return nil, errors.New("no token issuer: give --public-url")
	}
	return &Cluster{
		base:   u,
		issuer: issuer,
		signer: signer,
		hc:     &http.Client{Transport: transport(tlsConf)},
		tokens: map[string]signed{},
	}, nil
}

// transport bounds connecting and waiting for headers; bodies take as long
// as they take (big files), under the caller's context.
func transport(tlsConf *tls.Config) *http.Transport {
	return &http.Transport{
		TLSClientConfig:       tlsConf,
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 2 * time.Minute,
	}
}

// DiscoverIssuer asks the cluster which issuer its nodes sign tokens for,
// the default for --public-url. Charm's /.well-known/openid-configuration
// has no "issuer" but a jwks_uri under the same public URL it signs with.
func DiscoverIssuer(ctx context.Context, baseURL string, tlsConf *tls.Config) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	u := strings.TrimRight(baseURL, "/") + "/.well-known/openid-configuration"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", fmt.Errorf("discover issuer: %w", err)
	}
	resp, err := (&http.Client{Transport: transport(tlsConf)}).Do(req)
	if err != nil {
		return "", fmt.Errorf("discover issuer from %s: %w", baseURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("discover issuer from %s: %s", u, resp.Status)
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&doc); err != nil {
		return "", fmt.Errorf("discover issuer from %s: %w", u, err)
	}
	if doc.Issuer != "" {
		return doc.Issuer, nil
	}
	if iss, ok := strings.CutSuffix(doc.JWKSURI, "/v1/public/jwks"); ok && iss != "" {
		return iss, nil
	}
	return "", fmt.Errorf("discover issuer from %s: no issuer or jwks_uri in the answer", u)
}

func (c *Cluster) token(charmID string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.tokens[charmID]; ok && time.Until(t.expires) > tokenTTL/3 {
		return t.jwt, nil
	}
	jwt, err := c.signer.Sign(charmID, c.issuer, tokenTTL)
	if err != nil {
		return "", fmt.Errorf("sign token for %s: %w", charmID, err)
	}
	c.tokens[charmID] = signed{jwt, time.Now().Add(tokenTTL)}
	return jwt, nil
}

// fsURL is /v1/fs/<p> on the cluster; p is used as it is (opaque,
// encrypted names), only escaped where a URL needs it.
func (c *Cluster) fsURL(p string, q url.Values) string {
	u := *c.base
	u.Path = strings.TrimRight(u.Path, "/") + "/v1/fs/" + p
	u.RawPath = ""
	u.RawQuery = q.Encode()
	return u.String()
}

// HTTPError is a non-2xx answer from the cluster.
type HTTPError struct {
	Status  int
	Message string
}

func (e *HTTPError) Error() string {
	if e.Message != "" {
		return fmt.Sprintf("%d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
	}
	return fmt.Sprintf("%d %s", e.Status, http.StatusText(e.Status))
}

// Temporary: worth retrying (the cluster is busy or partly down), as
// opposed to a refusal like 401 or 404 "missing user".
func (e *HTTPError) Temporary() bool {
	return e.Status >= 500 || e.Status == http.StatusTooManyRequests
}

func httpError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	var m struct {
		Message string `json:"message"`
	}
	msg := strings.TrimSpace(string(b))
	if json.Unmarshal(b, &m) == nil && m.Message != "" {
		msg = m.Message
	}
	return &HTTPError{Status: resp.StatusCode, Message: msg}
}

func (c *Cluster) do(ctx context.Context, charmID, method, u string, body io.Reader, size int64, header http.Header) (*http.Response, error) {
	jwt, err := c.token(charmID)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.ContentLength = size
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Authorization", "Bearer "+jwt)
	return c.hc.Do(req)
}

// File is a file in a user's tree on the cluster.
type File struct {
	Path    string // relative to the user's root, as stored (encrypted names)
	Size    int64
	Mode    fs.FileMode
	ModTime time.Time
}

// Walk lists every file of a user on the cluster, walking directories with
// GET /v1/fs/<dir>. A user with no files has an empty tree.
func (c *Cluster) Walk(ctx context.Context, charmID string) ([]File, error) {
	var out []File
	dirs := []string{""}
	for len(dirs) > 0 {
		dir := dirs[0]
		dirs = dirs[1:]
		info, err := c.list(ctx, charmID, dir)
		if err != nil {
			var he *HTTPError
			if errors.As(err, &he) && he.Status == http.StatusNotFound {
				continue // no such directory (a user with no files yet)
			}
			return nil, fmt.Errorf("list %s/%s: %w", charmID, dir, err)
		}
		if info == nil {
			// A file where we expected a directory: the root is a file
			// only if someone stored one at "", which Charm refuses.
			continue
		}
		for _, f := range info.Files {
			name, ok := fsname.FromListing(f.Name) // listed escaped
			if !ok {
				continue // no path names it: not a file a client can have backed up
			}
			p := path.Join(dir, name)
			if f.IsDir {
				dirs = append(dirs, p)
				continue
			}
			out = append(out, File{Path: p, Size: f.Size, Mode: f.Mode, ModTime: f.ModTime})
		}
	}
	return out, nil
}

// list GETs a directory; nil info means the path is a file.
func (c *Cluster) list(ctx context.Context, charmID, dir string) (*charm.FileInfo, error) {
	resp, err := c.do(ctx, charmID, http.MethodGet, c.fsURL(dir, nil), nil, 0, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, httpError(resp)
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		return nil, nil
	}
	var info charm.FileInfo
	if err := json.NewDecoder(io.LimitReader(resp.Body, 256<<20)).Decode(&info); err != nil {
		return nil, fmt.Errorf("decode listing: %w", err)
	}
	return &info, nil
}

// Open streams a user's file from the cluster. The caller closes it.
func (c *Cluster) Open(ctx context.Context, charmID, p string) (io.ReadCloser, error) {
	resp, err := c.do(ctx, charmID, http.MethodGet, c.fsURL(p, nil), nil, 0, nil)
	if err != nil {
		return nil, fmt.Errorf("get %s/%s: %w", charmID, p, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, fmt.Errorf("get %s/%s: %w", charmID, p, httpError(resp))
	}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		resp.Body.Close()
		return nil, fmt.Errorf("get %s/%s: is a directory", charmID, p)
	}
	return resp.Body, nil
}

// Put uploads size bytes from r as a user's file p with mode, exactly as
// charm's fs client does (multipart field "data", ?mode=), streamed with a
// known Content-Length.
func (c *Cluster) Put(ctx context.Context, charmID, p string, r io.Reader, size int64, mode fs.FileMode) error {
	var head bytes.Buffer
	mw := multipart.NewWriter(&head)
	if _, err := mw.CreateFormFile("data", path.Base(p)); err != nil {
		return err
	}
	headLen := head.Len()
	if err := mw.Close(); err != nil {
		return err
	}
	all := head.Bytes()
	body := io.MultiReader(bytes.NewReader(all[:headLen]), io.LimitReader(r, size), bytes.NewReader(all[headLen:]))
	q := url.Values{"mode": {strconv.FormatUint(uint64(mode), 10)}}
	resp, err := c.do(ctx, charmID, http.MethodPost, c.fsURL(p, q), body, int64(len(all))+size,
		http.Header{"Content-Type": {mw.FormDataContentType()}})
	if err != nil {
		return fmt.Errorf("post %s/%s: %w", charmID, p, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("post %s/%s: %w", charmID, p, httpError(resp))
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	return nil
}
