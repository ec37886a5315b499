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
	"net/url"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/charmbracelet/keygen"

	"github.com/cring-dev/cring/internal/auth"
	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/ring"
	"github.com/cring-dev/cring/internal/token"
)

// nodeCounter counts the requests the proxy sends to nodes.
type nodeCounter struct {
	nopObserver
	n atomic.Int64
}

func (c *nodeCounter) NodeRequest(string, int, error, time.Duration) { c.n.Add(1) }

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
// with its recorded checksum, and never serves a torn copy: one node
// request per read, no version-record lookup on every node. A stock node
// sends neither, so its copies are still checked against the records (the
// first read of a key looks them up).
func TestReadCost(t *testing.T) {
	for _, tc := range []struct {
		name      string
		versioned bool
		lookups   bool // node requests beyond one per read
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

			var pnodes []Node
			var rnodes []ring.Node
			for _, n := range dc.Nodes {
				u, _ := url.Parse(n.HTTPURL())
				pnodes = append(pnodes, Node{Name: n.Name, URL: u})
				rnodes = append(rnodes, ring.Node{Name: n.Name})
			}
			rg, err := ring.New(rnodes, 3)
			if err != nil {
				t.Fatal(err)
			}
			tr := &http.Transport{ResponseHeaderTimeout: headerTimeout, DisableCompression: true}
			t.Cleanup(tr.CloseIdleConnections)
			obs := &nodeCounter{}
			p, err := New(Options{
				Nodes: pnodes, Ring: rg, WriteQuorum: 2, Health: &stubHealth{up: []bool{true, true, true}},
				Verifier: tokenVerifier{authz, id}, Transport: tr, Observer: obs,
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
			before := obs.n.Load()
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
			reads := int64(rounds * files)
			got := obs.n.Load() - before
			if tc.lookups && got <= reads {
				t.Errorf("%d node requests for %d reads of unrecorded stock copies: their records were never looked up", got, reads)
			}
			if !tc.lookups && got != reads {
				t.Errorf("%d node requests for %d reads, want one each", got, reads)
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
