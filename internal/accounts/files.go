package accounts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	charm "github.com/charmbracelet/charm/proto"
	"github.com/cring-dev/cring/internal/token"
)

// Files reaches a user's files through the cluster's front door (the
// proxy, or one node), as that user: with a short token signed by the
// nodes' shared key, so what a proxy does for any write or delete
// (replicas, tombstones, backups, healing) happens here too.
type Files struct {
	Base   *url.URL // the proxy's HTTP URL
	Signer *token.Signer
	Issuer string // the nodes' public URL (tokens must carry it)
	Client *http.Client
}

// errNotFound: no such path (or the user has no files at all).
var errNotFound = errors.New("not found")

func (f *Files) do(ctx context.Context, method, charmID, p string) (*http.Response, error) {
	jwt, err := f.Signer.Sign(charmID, f.Issuer, 5*time.Minute)
	if err != nil {
		return nil, fmt.Errorf("sign token for %s: %w", charmID, err)
	}
	// p is escaped, as the nodes list names (charmapi.FromListing): sent
	// as it is, so every listed name is addressed, escaped once.
	u := *f.Base
	u.RawPath = strings.TrimRight(u.EscapedPath(), "/") + "/v1/fs/" + strings.TrimPrefix(p, "/")
	if u.Path, err = url.PathUnescape(u.RawPath); err != nil {
		return nil, fmt.Errorf("path %q: %w", p, err)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "bearer "+jwt)
	req.Header.Set("X-Request-Id", "cring-accounts")
	c := f.Client
	if c == nil {
		c = &http.Client{Timeout: time.Minute}
	}
	return c.Do(req)
}

// list is a directory's entries.
func (f *Files) list(ctx context.Context, charmID, dir string) ([]charm.FileInfo, error) {
	resp, err := f.do(ctx, http.MethodGet, charmID, dir)
	if err != nil {
		return nil, fmt.Errorf("list %q of %s: %w", dir, charmID, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, errNotFound
	case resp.StatusCode != http.StatusOK:
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("list %q of %s: %s %s", dir, charmID, resp.Status, strings.TrimSpace(string(b)))
	case !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json"):
		return nil, fmt.Errorf("list %q of %s: a file, not a directory", dir, charmID)
	}
	var fi charm.FileInfo
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&fi); err != nil {
		return nil, fmt.Errorf("list %q of %s: %w", dir, charmID, err)
	}
	return fi.Files, nil
}

// Usage is the bytes a user stores (each file once, as the client
// uploaded it, encrypted), walking the directory tree.
func (f *Files) Usage(ctx context.Context, charmID string) (int64, error) {
	var walk func(dir string, depth int) (int64, error)
	walk = func(dir string, depth int) (int64, error) {
		if depth > 64 {
			return 0, fmt.Errorf("usage of %s: directories nested too deep", charmID)
		}
		entries, err := f.list(ctx, charmID, dir)
		if errors.Is(err, errNotFound) {
			return 0, nil
		}
		if err != nil {
			return 0, err
		}
		var n int64
		for _, e := range entries {
			if !e.IsDir {
				n += e.Size
				continue
			}
			sub, err := walk(path.Join(dir, e.Name), depth+1)
			if err != nil {
				return 0, err
			}
			n += sub
		}
		return n, nil
	}
	return walk("", 0)
}

// Purge deletes every file and directory of a user through the front door
// (each top-level entry, as `charm fs rm` would) and returns how many
// deletes it sent. A delete is acknowledged once W nodes took it and the
// rest follow in the background, so a listing can still show an entry for
// a moment: Purge lists again, deleting what is still there, until the
// listing is empty or settle has passed. The account itself is untouched.
func (f *Files) Purge(ctx context.Context, charmID string, settle time.Duration) (int, error) {
	deadline := time.Now().Add(settle)
	wait := 100 * time.Millisecond
	n := 0
	for {
		entries, err := f.list(ctx, charmID, "")
		if errors.Is(err, errNotFound) || (err == nil && len(entries) == 0) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		if n > 0 && time.Now().After(deadline) {
			var names []string
			for _, e := range entries {
				names = append(names, e.Name)
			}
			return n, fmt.Errorf("purge %s: still listed after %v: %s", charmID, settle, strings.Join(names, ", "))
		}
		if n > 0 {
			select {
			case <-ctx.Done():
				return n, ctx.Err()
			case <-time.After(wait):
			}
			wait = min(2*wait, 2*time.Second)
		}
		for _, e := range entries {
			if err := f.remove(ctx, charmID, e.Name); err != nil {
				return n, err
			}
			n++
		}
	}
}

func (f *Files) remove(ctx context.Context, charmID, name string) error {
	resp, err := f.do(ctx, http.MethodDelete, charmID, name)
	if err != nil {
		return fmt.Errorf("delete %q of %s: %w", name, charmID, err)
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 && resp.StatusCode != http.StatusNotFound {
		return fmt.Errorf("delete %q of %s: %s %s", name, charmID, resp.Status, strings.TrimSpace(string(b)))
	}
	return nil
}
