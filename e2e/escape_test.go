package e2e

import (
	"bytes"
	"context"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/accounts"
	"github.com/cring-dev/cring/internal/heal"
	"github.com/cring-dev/cring/internal/testwait"
	"github.com/cring-dev/cring/internal/token"
)

// TestHealEscapedName: a file whose name needs escaping in a URL ("sp ace",
// sent as sp%20ace and kept so by the nodes), written while a node is down,
// reaches that node by hinted handoff and is left healthy by a scan, under
// its own name: never escaped twice (sp%2520ace), which is another file
// under another key.
func TestHealEscapedName(t *testing.T) {
	for _, tt := range []struct {
		name  string
		start func(t *testing.T) escapeCluster
	}{
		{"stock", func(t *testing.T) escapeCluster {
			tc := startCluster(t, healOpts())
			u := tc.newUser(t)
			var urls []string
			for _, n := range tc.dc.Nodes {
				urls = append(urls, n.HTTPURL())
			}
			return escapeCluster{
				proxy: "http://" + tc.httpAddr, nodes: urls, jwt: func() string { return u.jwt(t) },
				stop:  func() { tc.stop(2) },
				start: func() { tc.start(2) },
				lose: func() error {
					return os.Remove(tc.dc.Nodes[1].FilePath(u.id, "sp%20ace"))
				},
				ready:  tc.waitReady,
				healer: tc.srv.Healer(),
			}
		}},
		{"cring node", func(t *testing.T) escapeCluster {
			pc := startPGCluster(t, 3)
			u := pc.newUser(t)
			var urls []string
			for _, n := range pc.nodes {
				urls = append(urls, n.httpURL())
			}
			return escapeCluster{
				proxy: "http://" + pc.httpAddr, nodes: urls, jwt: func() string { return u.jwt(t) },
				stop:  func() { pc.stop(2, syscall.SIGKILL) },
				start: func() { pc.start(2) },
				lose: func() error {
					return os.Remove(filepath.Join(pc.nodes[1].dataDir, "files", u.id, "sp%20ace"))
				},
				ready:  pc.waitReady,
				healer: pc.srv.Healer(),
				meta:   true,
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.start(t)
			data := []byte("a file whose name has a space")
			c.stop()
			c.ready(2)
			if st := c.post(t, c.proxy, "sp%20ace", data); st != http.StatusOK {
				t.Fatalf("write through the proxy: %d", st)
			}
			c.start()
			c.ready(3)
			testwait.For(t, 15*time.Second, "the condition", func() bool {
				st, b := c.get(t, c.nodes[2], "sp%20ace")
				return st == http.StatusOK && bytes.Equal(b, data)
			})
			rep, err := c.healer.Scan(context.Background(), heal.ScanOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Failed != 0 {
				t.Fatalf("scan after the handoff: %+v", rep)
			}
			// A copy lost on a node is found and repaired by a scan.
			if err := c.lose(); err != nil {
				t.Fatal(err)
			}
			rep, err = c.healer.Scan(context.Background(), heal.ScanOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Repaired != 1 || rep.Failed != 0 {
				t.Fatalf("scan with node2's copy gone: %+v, want it repaired", rep)
			}
			// A deep scan hashes every copy: a cring node's metadata
			// endpoint does it in place, on the same name.
			before := c.healer.Status().Totals["hashed_on_node"]
			rep, err = c.healer.Scan(context.Background(), heal.ScanOptions{Deep: true})
			if err != nil || rep.Failed != 0 || rep.Differing != 0 {
				t.Fatalf("deep scan: %+v, %v", rep, err)
			}
			if hashed := c.healer.Status().Totals["hashed_on_node"] - before; c.meta && hashed < 3 {
				t.Errorf("the nodes' metadata endpoints hashed %d copies of sp%%20ace, want 3", hashed)
			}
			for i, n := range c.nodes {
				if st, b := c.get(t, n, "sp%20ace"); st != http.StatusOK || !bytes.Equal(b, data) {
					t.Errorf("node%d: sp%%20ace %d %q", i+1, st, b)
				}
				if st, _ := c.get(t, n, "sp%2520ace"); st != http.StatusNotFound {
					t.Errorf("node%d holds sp%%2520ace (%d): the name was escaped twice", i+1, st)
				}
			}
		})
	}
}

// escapeCluster is what TestHealEscapedName needs of either kind of cluster.
type escapeCluster struct {
	proxy  string
	nodes  []string // HTTP URLs
	jwt    func() string
	stop   func()       // node3
	start  func()       // node3
	lose   func() error // removes node2's copy from its disk
	ready  func(healthy int)
	healer *heal.Healer
	meta   bool // nodes have a metadata endpoint (cring node)
}

// post uploads data as the escaped path ep to base (the proxy or a node),
// as charm's client does.
func (c escapeCluster) post(t *testing.T, base, ep string, data []byte) int {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	part, err := mw.CreateFormFile("data", "f")
	if err != nil {
		t.Fatal(err)
	}
	part.Write(data)
	mw.Close()
	req, err := http.NewRequest(http.MethodPost, base+"/v1/fs/"+ep+"?mode=420", &body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	st, _ := c.do(t, req)
	return st
}

func (c escapeCluster) get(t *testing.T, base, ep string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+"/v1/fs/"+ep, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c.do(t, req)
}

func (c escapeCluster) do(t *testing.T, req *http.Request) (int, []byte) {
	t.Helper()
	req.Header.Set("Authorization", "bearer "+c.jwt())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// TestAccountFilesEscapedName: cring accounts' usage and purge reach a
// directory whose name needs escaping ("my dir", listed as my%20dir) by
// that name, not escaped twice.
func TestAccountFilesEscapedName(t *testing.T) {
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2})
	u := tc.newUser(t)
	c := escapeCluster{proxy: "http://" + tc.httpAddr, jwt: func() string { return u.jwt(t) }}
	data := []byte("twelve bytes")
	for _, ep := range []string{"my%20dir/sp%20ace", "plain"} {
		if st := c.post(t, c.proxy, ep, data); st != http.StatusOK {
			t.Fatalf("write %s: %d", ep, st)
		}
	}
	signer, err := token.LoadSigner(tc.dc.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	base, _ := url.Parse(c.proxy)
	files := &accounts.Files{Base: base, Signer: signer, Issuer: tc.dc.PublicURL}
	ctx := context.Background()
	// A write is acknowledged at W; a listing can show the last replica's
	// copy mid-write (stock nodes write in place: docs/design.md, "What
	// stock nodes can't do"), so the usage is asked until it settles.
	testwait.For(t, 10*time.Second, "the usage of both files", func() bool {
		n, err := files.Usage(ctx, u.id)
		return err == nil && n == 2*int64(len(data))
	})
	if _, err := files.Purge(ctx, u.id, 5*time.Second); err != nil {
		t.Fatalf("purge: %v", err)
	}
	if st, _ := c.get(t, c.proxy, "my%20dir/sp%20ace"); st != http.StatusNotFound {
		t.Fatalf("after purge, my%%20dir/sp%%20ace answers %d", st)
	}
}
