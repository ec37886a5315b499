// Package restore puts backed-up files back into a cring cluster, and
// compares a backup with the cluster. It acts for each user through the
// cluster's normal Charm HTTP API with short-lived tokens signed by the
// cluster's shared server key, so it works on stock nodes and on a freshly
// built, empty cluster whose accounts exist.
package restore

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/cring-dev/cring/internal/charmapi"
	"github.com/cring-dev/cring/internal/token"
)

// Cluster is the Charm HTTP API of a cluster (the proxy) or of one node.
type Cluster struct {
	base *url.URL
	api  *charmapi.Client
}

// tokenTTL is how long a token restore signs lives; it is renewed well
// before it runs out.
const tokenTTL = 15 * time.Minute

// NewCluster talks to baseURL (e.g. http://127.0.0.1:35354), signing tokens
// for issuer (the public URL the nodes were given) with signer. tlsConf, when
// not nil, is the TLS client config for an https baseURL (a private CA).
func NewCluster(baseURL, issuer string, signer *token.Signer, tlsConf *tls.Config) (*Cluster, error) {
	u, err := charmapi.ParseBase(baseURL)
	if err != nil {
		return nil, fmt.Errorf("cluster url %w", err)
	}
	if issuer == "" {
		return nil, errors.New("no token issuer: give --public-url")
	}
	return &Cluster{base: u, api: &charmapi.Client{
		HTTP:    &http.Client{Transport: transport(tlsConf)},
		Tokens:  charmapi.NewTokens(signer, func() string { return issuer }, tokenTTL, tokenTTL/3),
		MaxJSON: 256 << 20, // a whole cluster's merged listing
	}}, nil
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

// HTTPError is a non-2xx answer from the cluster.
type HTTPError = charmapi.StatusError

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
		// Names no path addresses are left out: not files a client can
		// have backed up.
		info, _, err := c.api.List(ctx, c.base, charmID, dir)
		if errors.Is(err, charmapi.ErrNotFound) {
			// No such directory (a user with no files yet), or a file
			// where we expected a directory: the root is a file only if
			// someone stored one at "", which Charm refuses.
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list %s/%s: %w", charmID, dir, err)
		}
		for _, f := range info.Files {
			p := path.Join(dir, f.Name)
			if f.IsDir {
				dirs = append(dirs, p)
				continue
			}
			out = append(out, File{Path: p, Size: f.Size, Mode: f.Mode, ModTime: f.ModTime})
		}
	}
	return out, nil
}

// Open streams a user's file from the cluster. The caller closes it.
func (c *Cluster) Open(ctx context.Context, charmID, p string) (io.ReadCloser, error) {
	resp, err := c.api.Open(ctx, c.base, charmID, p)
	if err != nil {
		return nil, fmt.Errorf("get %s/%s: %w", charmID, p, err)
	}
	return resp.Body, nil
}

// Put uploads size bytes from r as a user's file p with mode, exactly as
// charm's fs client does (multipart field "data", ?mode=), streamed with a
// known Content-Length.
func (c *Cluster) Put(ctx context.Context, charmID, p string, r io.Reader, size int64, mode fs.FileMode) error {
	if err := c.api.Put(ctx, c.base, charmID, p, mode, r, size, nil); err != nil {
		return fmt.Errorf("post %s/%s: %w", charmID, p, err)
	}
	return nil
}
