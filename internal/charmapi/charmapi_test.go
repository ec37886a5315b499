package charmapi

import (
	"bytes"
	"context"
	"errors"
	"io"
	stdlog "log"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/charmbracelet/keygen"
	charmlog "github.com/charmbracelet/log"

	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/stamp"
	"github.com/cring-dev/cring/internal/token"
)

func TestMain(m *testing.M) {
	// The in-process Charm servers log every request.
	stdlog.SetOutput(io.Discard)
	charmlog.SetOutput(io.Discard)
	os.Exit(m.Run())
}

// node is one real Charm server (cring node's file store when versioned)
// and a Client acting for a user it knows.
type node struct {
	base *url.URL
	user string
	c    *Client
}

func startNode(t *testing.T, versioned bool) *node {
	t.Helper()
	dir := t.TempDir()
	const issuer = "http://127.0.0.1:35354"
	dc, err := devcluster.New(dir, devcluster.Options{Nodes: 1, PublicURL: issuer, Versioned: versioned})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dc.Close() })
	if err := dc.StartAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	kp, err := keygen.New(filepath.Join(dir, "user_ed25519"), keygen.WithKeyType(keygen.Ed25519))
	if err != nil {
		t.Fatal(err)
	}
	user, err := dc.SeedUser(kp.RawAuthorizedKey())
	if err != nil {
		t.Fatal(err)
	}
	signer, err := token.LoadSigner(dc.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	base, err := url.Parse(dc.Nodes[0].HTTPURL())
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 30 * time.Second}
	t.Cleanup(hc.CloseIdleConnections)
	return &node{base: base, user: user, c: &Client{
		HTTP:      hc,
		Tokens:    NewTokens(signer, func() string { return issuer }, 10*time.Minute, time.Minute),
		RequestID: "charmapi-test",
	}}
}

func (n *node) read(t *testing.T, p string) []byte {
	t.Helper()
	resp, err := n.c.Open(context.Background(), n.base, n.user, p)
	if err != nil {
		t.Fatalf("open %s: %v", p, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	return b
}

func (n *node) names(t *testing.T, dir string) []string {
	t.Helper()
	d, unnamed, err := n.c.List(context.Background(), n.base, n.user, dir)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		t.Fatalf("list %s: %v", dir, err)
	}
	if len(unnamed) > 0 {
		t.Errorf("list %s: unnamed %q", dir, unnamed)
	}
	var out []string
	for _, f := range d.Files {
		if f.IsDir {
			out = append(out, f.Name+"/")
		} else {
			out = append(out, f.Name)
		}
	}
	slices.Sort(out)
	return out
}

// TestFiles: uploads (streamed with a known length, and chunked), listings
// and deletes on a real stock node and a real cring node, names with a
// space and a percent sign among them: each is stored once, escaped, and
// listed back as the path it was written by.
func TestFiles(t *testing.T) {
	for _, kind := range []struct {
		name      string
		versioned bool
	}{{"stock", false}, {"cring node", true}} {
		t.Run(kind.name, func(t *testing.T) {
			n := startNode(t, kind.versioned)
			ctx := context.Background()
			files := []struct {
				path string
				data string
				size int64 // -1: chunked
			}{
				{"dir/plain", "plain bytes", int64(len("plain bytes"))},
				{"dir/sp ace", "a name with a space", -1},
				{"dir/100%", "percent", int64(len("percent"))},
				{"dir/sub/deep", "", 0},
			}
			for _, f := range files {
				if err := n.c.Put(ctx, n.base, n.user, f.path, 0o600, strings.NewReader(f.data), f.size, nil); err != nil {
					t.Fatalf("put %q: %v", f.path, err)
				}
				if got := string(n.read(t, f.path)); got != f.data {
					t.Errorf("%q reads %q, want %q", f.path, got, f.data)
				}
			}
			want := []string{"100%", "plain", "sp ace", "sub/"}
			if got := n.names(t, "dir"); !slices.Equal(got, want) {
				t.Errorf("dir lists %q, want %q", got, want)
			}
			d, _, err := n.c.List(ctx, n.base, n.user, "dir")
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range d.Files {
				if f.Name == "sp ace" && (f.Size != int64(len("a name with a space")) || f.Mode.Perm() != 0o600) {
					t.Errorf("sp ace listed with size %d, mode %v", f.Size, f.Mode)
				}
			}

			if err := n.c.Delete(ctx, n.base, n.user, "dir/sp ace", nil); err != nil {
				t.Fatalf("delete: %v", err)
			}
			if _, err := n.c.Open(ctx, n.base, n.user, "dir/sp ace"); !errors.Is(err, ErrNotFound) {
				t.Errorf("open of a deleted file: %v, want ErrNotFound", err)
			}
			want = []string{"100%", "plain", "sub/"}
			if got := n.names(t, "dir"); !slices.Equal(got, want) {
				t.Errorf("after the delete dir lists %q, want %q", got, want)
			}
			if err := n.c.Delete(ctx, n.base, n.user, "dir", nil); err != nil {
				t.Fatalf("delete dir: %v", err)
			}
			if got := n.names(t, "dir"); got != nil {
				t.Errorf("a deleted directory lists %q", got)
			}
		})
	}
}

// TestWrongKind: a directory opened as a file, a file listed as a
// directory, and paths that were never there.
func TestWrongKind(t *testing.T) {
	n := startNode(t, false)
	ctx := context.Background()
	if err := n.c.Put(ctx, n.base, n.user, "d/f", 0o600, strings.NewReader("x"), 1, nil); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		call func() error
		want error
	}{
		{"open a directory", func() error { _, err := n.c.Open(ctx, n.base, n.user, "d"); return err }, ErrIsDir},
		{"list a file", func() error { _, _, err := n.c.List(ctx, n.base, n.user, "d/f"); return err }, ErrNotFound},
		{"open nothing", func() error { _, err := n.c.Open(ctx, n.base, n.user, "d/none"); return err }, ErrNotFound},
		{"list nothing", func() error { _, _, err := n.c.List(ctx, n.base, n.user, "none"); return err }, ErrNotFound},
	} {
		if err := tt.call(); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
}

// TestUnnamed: a file stored from a request that escaped a slash is
// listed under a name no path addresses: List leaves it out and says so.
func TestUnnamed(t *testing.T) {
	n := startNode(t, false)
	ctx := context.Background()
	form := NewForm("a")
	u := FSURL(n.base, "d/a/b", url.Values{"mode": {"384"}})
	u.RawPath = "/v1/fs/d/a%2Fb" // one name, as no path can say it
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(form.Bytes([]byte("odd"))))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", form.ContentType())
	resp, err := n.c.Do(req, n.user)
	if err != nil {
		t.Fatal(err)
	}
	if err := answered(resp); err != nil {
		t.Fatalf("raw upload: %v", err)
	}
	if err := n.c.Put(ctx, n.base, n.user, "d/ok", 0o600, strings.NewReader("ok"), 2, nil); err != nil {
		t.Fatal(err)
	}
	d, unnamed, err := n.c.List(ctx, n.base, n.user, "d")
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Files) != 1 || d.Files[0].Name != "ok" {
		t.Errorf("listed %+v, want only ok", d.Files)
	}
	if !slices.Equal(unnamed, []string{"a%2Fb"}) {
		t.Errorf("unnamed %q, want [a%%2Fb]", unnamed)
	}
}

// TestNewer: a cring node keeps a newer version and says so, for an
// upload and a delete alike.
func TestNewer(t *testing.T) {
	n := startNode(t, true)
	ctx := context.Background()
	clock := stamp.NewClock(time.Now)
	older, newer := clock.Now(), clock.Now()
	hdr := func(s stamp.Stamp) http.Header { return http.Header{stamp.Header: {s.String()}} }
	if err := n.c.Put(ctx, n.base, n.user, "k", 0o600, strings.NewReader("new"), -1, hdr(newer)); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		call func() error
	}{
		{"put", func() error {
			return n.c.Put(ctx, n.base, n.user, "k", 0o600, strings.NewReader("old"), 3, hdr(older))
		}},
		{"delete", func() error { return n.c.Delete(ctx, n.base, n.user, "k", hdr(older)) }},
	} {
		err := tt.call()
		var se *StatusError
		if !errors.Is(err, ErrNewer) || !errors.As(err, &se) || se.Status != http.StatusConflict {
			t.Errorf("%s older than what the node holds: %v, want a 409 (ErrNewer)", tt.name, err)
		}
		if got := string(n.read(t, "k")); got != "new" {
			t.Errorf("after an older %s the node holds %q", tt.name, got)
		}
	}
}

// TestForm: the form parses as charm's server parses it, the file's bytes
// whole, and Len is its length, for each way of building it.
func TestForm(t *testing.T) {
	fixed, err := NewFormBoundary("data", "cring-test-boundary")
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789"), 1000)
	for _, tt := range []struct {
		name string
		form *Form
		body func(f *Form) []byte
	}{
		{"streamed", NewForm("sp ace"), func(f *Form) []byte {
			b, _ := io.ReadAll(f.Body(bytes.NewReader(data)))
			return b
		}},
		{"bytes", NewForm(`q"uote`), func(f *Form) []byte { return f.Bytes(data) }},
		{"fixed boundary", fixed, func(f *Form) []byte {
			return slices.Concat(f.Head(), data, f.Tail())
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			body := tt.body(tt.form)
			if int64(len(body)) != tt.form.Len(int64(len(data))) {
				t.Errorf("body is %d bytes, Len says %d", len(body), tt.form.Len(int64(len(data))))
			}
			req, err := http.NewRequest(http.MethodPost, "http://node/v1/fs/x", bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", tt.form.ContentType())
			f, _, err := req.FormFile("data")
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			got, err := io.ReadAll(f)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Errorf("the data part holds %d bytes, want %d", len(got), len(data))
			}
		})
	}
}
