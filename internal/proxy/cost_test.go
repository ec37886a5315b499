package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/charmbracelet/keygen"

	"github.com/cring-dev/cring/internal/auth"
	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/token"
	"github.com/cring-dev/cring/internal/tombstone"
)

// recordLookups counts the proxy's requests for version records.
type recordLookups struct {
	next http.RoundTripper
	n    atomic.Int64
}

func (c *recordLookups) RoundTrip(req *http.Request) (*http.Response, error) {
	if strings.Contains(req.URL.Path, "/"+tombstone.Versions) {
		c.n.Add(1)
	}
	return c.next.RoundTrip(req)
}

// tokenVerifier accepts one real token (the nodes check it too).
type tokenVerifier struct{ header, user string }

func (v tokenVerifier) Verify(_ context.Context, header string) (string, error) {
	if header == v.header {
		return v.user, nil
	}
	return "", &auth.Error{Reason: "bad token"}
}

// TestReadCost: what a read of a file costs the nodes. A cring node answers
// a file it holds without a stamp (written to it directly, or before cring)
// with its recorded checksum, and never serves a torn copy: its reads look
// up no version records (they did on every node, for every key once per
// 10 s). A stock node sends neither, so its copies are still checked
// against the records (the first read of a key looks them up).
func TestReadCost(t *testing.T) {
	for _, tc := range []struct {
		name      string
		versioned bool
		lookups   bool // reads look up version records
	}{
		{"cring nodes", true, false},
		{"stock nodes", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			ports, err := devcluster.FreePorts("127.0.0.1", 1)
			if err != nil {
				t.Fatal(err)
			}
			issuer := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
			dc, err := devcluster.New(dir, devcluster.Options{Nodes: 3, PublicURL: issuer, Versioned: tc.versioned})
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
			id, err := dc.SeedUser(kp.RawAuthorizedKey())
			if err != nil {
				t.Fatal(err)
			}
			signer, err := token.LoadSigner(dc.KeyPath)
			if err != nil {
				t.Fatal(err)
			}
			jwt, err := signer.Sign(id, issuer, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			authz := "Bearer " + jwt

			var urls []string
			for _, n := range dc.Nodes {
				urls = append(urls, n.HTTPURL())
			}
			tr := &http.Transport{ResponseHeaderTimeout: headerTimeout, DisableCompression: true}
			t.Cleanup(tr.CloseIdleConnections)
			lookups := &recordLookups{next: tr}
			p, err := New(Options{
				Members:  testMembers(t, urls, 2, &stubHealth{up: []bool{true, true, true}}),
				Verifier: tokenVerifier{authz, id}, Transport: lookups,
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), StallTimeout: stallTimeout,
				VersionRecords: true, // as cring serve sets it when a node has no meta: address
			})
			if err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewUnstartedServer(p)
			srv.Config.ErrorLog = log.New(io.Discard, "", 0)
			srv.Start()
			t.Cleanup(srv.Close)

			// Files on every node, written to each directly: no stamps.
			const files = 8
			content := func(k int) []byte { return bytes.Repeat([]byte{byte('a' + k)}, 4<<10) }
			for k := range files {
				for _, n := range dc.Nodes {
					if err := postDirect(n.HTTPURL(), authz, fmt.Sprintf("cost/f%d", k), content(k)); err != nil {
						t.Fatal(err)
					}
				}
			}
			client := &http.Client{Timeout: clientTimeout}
			const rounds = 3
			for range rounds {
				for k := range files {
					req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("%s/v1/fs/cost/f%d", srv.URL, k), nil)
					req.Header.Set("Authorization", authz)
					resp, err := client.Do(req)
					if err != nil {
						t.Fatal(err)
					}
					b, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(b, content(k)) {
						t.Fatalf("read f%d: %d %v, %d bytes", k, resp.StatusCode, err, len(b))
					}
				}
			}
			got := lookups.n.Load()
			if tc.lookups && got == 0 {
				t.Errorf("%d reads of unrecorded stock copies never looked up their records", rounds*files)
			}
			if !tc.lookups && got != 0 {
				t.Errorf("%d reads of cring nodes' copies made %d requests for version records, want none", rounds*files, got)
			}
		})
	}
}

// postDirect uploads data to one node as charm's client does.
func postDirect(base, authz, p string, data []byte) error {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	fw, err := mw.CreateFormFile("data", "data")
	if err != nil {
		return err
	}
	_, _ = fw.Write(data)
	_ = mw.Close()
	req, err := http.NewRequest(http.MethodPost, base+"/v1/fs/"+p+"?mode=420", &buf)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.Header.Set("Authorization", authz)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("upload %s to %s: %s %s", p, base, resp.Status, b)
	}
	return nil
}

// TestCopyHeader: end-to-end headers are copied (values not shared with
// the source), hop-by-hop ones and those Connection names are not.
func TestCopyHeader(t *testing.T) {
	for _, tc := range []struct {
		name      string
		src       http.Header
		want      http.Header
		dstBefore http.Header
	}{
		{"end to end", http.Header{"Authorization": {"bearer x"}, "X-Cring-Stamp": {"s"}, "Accept": {"a", "b"}},
			http.Header{"Authorization": {"bearer x"}, "X-Cring-Stamp": {"s"}, "Accept": {"a", "b"}}, nil},
		{"hop by hop", http.Header{"Connection": {"keep-alive"}, "Keep-Alive": {"timeout=5"}, "Te": {"trailers"},
			"Transfer-Encoding": {"chunked"}, "Upgrade": {"h2c"}, "Proxy-Authorization": {"p"}, "Content-Type": {"t"}},
			http.Header{"Content-Type": {"t"}}, nil},
		{"named by Connection", http.Header{"Connection": {"x-secret, X-Other"}, "X-Secret": {"1"}, "X-Other": {"2"}, "X-Kept": {"3"}},
			http.Header{"X-Kept": {"3"}}, nil},
		{"added to what dst has", http.Header{"Content-Length": {"5"}},
			http.Header{"Content-Length": {"5"}, "X-Request-Id": {"r"}}, http.Header{"X-Request-Id": {"r"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := http.Header{}
			for k, v := range tc.dstBefore {
				dst[k] = v
			}
			copyHeader(dst, tc.src)
			if fmt.Sprint(dst) != fmt.Sprint(tc.want) {
				t.Fatalf("copied %v, want %v", dst, tc.want)
			}
			for k, v := range dst {
				if sv, ok := tc.src[k]; ok && len(v) > 0 {
					v[0] = "changed"
					if sv[0] == "changed" {
						t.Fatalf("%s shares its values with the source", k)
					}
				}
			}
		})
	}
}
