package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/charmbracelet/charm/kv"
	"github.com/charmbracelet/keygen"
	badger "github.com/dgraph-io/badger/v3"
	jwt "github.com/golang-jwt/jwt/v4"

	"github.com/cring-dev/cring/internal/testwait"
	"github.com/cring-dev/cring/internal/token"
)

func randBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPlacement: every file lands on exactly N nodes, byte-identical, and
// reads back through the proxy.
func TestPlacement(t *testing.T) {
	for _, tt := range []struct {
		nodes, replicas int
	}{
		{3, 3},
		{5, 3},
	} {
		t.Run(fmt.Sprintf("%d_of_%d", tt.replicas, tt.nodes), func(t *testing.T) {
			tc := startCluster(t, clusterOpts{nodes: tt.nodes, replicas: tt.replicas, quorum: 2})
			u := tc.newUser(t)
			perNode := map[string]int{}
			for i := range 12 {
				name := fmt.Sprintf("docs/file-%d.txt", i)
				data := randBytes(t, 1000+i*731)
				u.put(t, name, data)
				// Acked at W; the last replica may land a moment later.
				var copies map[string][]byte
				testwait.For(t, 5*time.Second, "the condition", func() bool {
					copies = tc.onDisk(t, u, name)
					return len(copies) >= tt.replicas && allEqual(copies)
				})
				if len(copies) != tt.replicas {
					t.Fatalf("%s on %d nodes, want %d", name, len(copies), tt.replicas)
				}
				for n := range copies {
					perNode[n]++
				}
				if got := u.get(t, name); !bytes.Equal(got, data) {
					t.Fatalf("%s read back differs", name)
				}
			}
			if len(u.ls(t, "docs")) != 12 {
				t.Fatalf("listing has %d files, want 12", len(u.ls(t, "docs")))
			}
			t.Logf("copies per node: %v", perNode)
		})
	}
}

// TestNodeDown: reads, writes, listings and kv keep working with the first
// (SSH primary) or the last node stopped, including files written before.
func TestNodeDown(t *testing.T) {
	for _, down := range []int{0, 2} {
		t.Run(fmt.Sprintf("node%d_stopped", down+1), func(t *testing.T) {
			tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2})
			u := tc.newUser(t)
			before := randBytes(t, 5000)
			u.put(t, "dir/before", before)
			kvSet(t, u, "db", "k1", "v1")

			tc.stop(down)
			tc.waitReady(2)

			// A brand-new client session (fresh SSH login) must work too.
			u2 := tc.newUser(t)
			u2.put(t, "x", []byte("hello"))
			if string(u2.get(t, "x")) != "hello" {
				t.Fatal("new user read mismatch")
			}

			after := randBytes(t, 7000)
			u.put(t, "dir/after", after)
			if !bytes.Equal(u.get(t, "dir/before"), before) || !bytes.Equal(u.get(t, "dir/after"), after) {
				t.Fatal("read mismatch with a node down")
			}
			if got := u.ls(t, "dir"); !slices.Equal(got, []string{"after", "before"}) && !slices.Equal(got, []string{"before", "after"}) {
				t.Fatalf("listing = %v", got)
			}
			kvSet(t, u, "db", "k2", "v2")
			for k, v := range map[string]string{"k1": "v1", "k2": "v2"} {
				if got := kvResetGet(t, u, "db", k); got != v {
					t.Fatalf("kv %s = %q, want %q", k, got, v)
				}
			}
			if copies := tc.onDisk(t, u, "dir/after"); len(copies) != 2 {
				t.Fatalf("written with a node down: on %d nodes, want 2", len(copies))
			}

			// Back up: everything still readable, listing complete.
			tc.start(down)
			tc.waitReady(3)
			if !bytes.Equal(u.get(t, "dir/after"), after) {
				t.Fatal("read mismatch after node returned")
			}
			if got := u.ls(t, "dir"); len(got) != 2 {
				t.Fatalf("listing after return = %v", got)
			}
		})
	}
}

// TestQuorumLost: with 2 of 3 nodes down writes get 503 with a clear
// message, files stored earlier still read, and nothing gets acked.
func TestQuorumLost(t *testing.T) {
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2})
	u := tc.newUser(t)
	data := randBytes(t, 4096)
	u.put(t, "keep", data)
	tc.stop(1)
	tc.stop(2)
	tc.waitReady(1)

	err := u.fs.WriteFile("new", memFile("new", []byte("nope")))
	if err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "stored on 1 of 3 replicas, 2 required") {
		t.Fatalf("write with 2 of 3 down: err = %v, want 503 stored on 1 of 3", err)
	}
	if !bytes.Equal(u.get(t, "keep"), data) {
		t.Fatal("read with 2 of 3 down failed")
	}
	err = u.fs.Remove("keep")
	if err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("delete with 2 of 3 down: err = %v, want 503", err)
	}
	// A listing could miss files only the down nodes hold: 503, not a short list.
	if _, err := u.fs.ReadDir("/"); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("listing with 2 of 3 down: err = %v, want 503", err)
	}
	// The admin API says we are not ready.
	resp, err := http.Get("http://" + tc.admin + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("readyz = %d, want 503", resp.StatusCode)
	}
}

// TestBadTokens: forged, expired and wrong-issuer tokens get 401 and not a
// single request reaches a node.
func TestBadTokens(t *testing.T) {
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2, count: true})
	u := tc.newUser(t)
	for _, c := range tc.counters {
		c.Store(0) // setting up the user's encrypt key went through
	}
	good, err := token.LoadSigner(tc.dc.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := keygen.New(filepath.Join(t.TempDir(), "other"), keygen.WithKeyType(keygen.Ed25519))
	if err != nil {
		t.Fatal(err)
	}
	forged, err := token.NewSigner(foreign.RawPrivateKey())
	if err != nil {
		t.Fatal(err)
	}
	iss := tc.cfg.PublicURL
	sign := func(s *token.Signer, c jwt.RegisteredClaims) string {
		tok, err := s.SignClaims(c)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	valid := jwt.RegisteredClaims{Subject: u.id, Issuer: iss, Audience: jwt.ClaimStrings{"charm"}, ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}
	expired := valid
	expired.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Minute))
	wrongIss := valid
	wrongIss.Issuer = "http://evil.example:35354"
	wrongAud := valid
	wrongAud.Audience = jwt.ClaimStrings{"glow"}

	for _, tt := range []struct {
		name, header string
	}{
		{"missing", ""},
		{"garbage", "bearer not.a.jwt"},
		{"forged", "bearer " + sign(forged, valid)},
		{"expired", "bearer " + sign(good, expired)},
		{"wrong issuer", "bearer " + sign(good, wrongIss)},
		{"wrong audience", "bearer " + sign(good, wrongAud)},
		{"alg none", "bearer " + noneToken(t, valid)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, req := range []*http.Request{
				mustReq(t, "POST", "http://"+tc.httpAddr+"/v1/fs/a?mode=420", strings.NewReader("x")),
				mustReq(t, "GET", "http://"+tc.httpAddr+"/v1/fs/a", nil),
				mustReq(t, "DELETE", "http://"+tc.httpAddr+"/v1/fs/a", nil),
				mustReq(t, "POST", "http://"+tc.httpAddr+"/v1/seq/a", nil),
				mustReq(t, "POST", "http://"+tc.httpAddr+"/v1/encrypt-key", strings.NewReader("{}")),
				mustReq(t, "GET", "http://"+tc.httpAddr+"/v1/bio", nil),
			} {
				if tt.header != "" {
					req.Header.Set("Authorization", tt.header)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(b), `"message"`) {
					t.Fatalf("%s %s: %d %s, want 401 JSON", req.Method, req.URL.Path, resp.StatusCode, b)
				}
			}
		})
	}
	for i, c := range tc.counters {
		if n := c.Load(); n != 0 {
			t.Fatalf("node%d saw %d requests from bad tokens", i+1, n)
		}
	}
	// The same route with a good token does reach nodes (the counter works).
	req := mustReq(t, "GET", "http://"+tc.httpAddr+"/v1/fs/a", nil)
	req.Header.Set("Authorization", "bearer "+sign(good, valid))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var total int64
	for _, c := range tc.counters {
		total += c.Load()
	}
	if total == 0 {
		t.Fatal("a good token reached no node: the counters prove nothing")
	}
}

func noneToken(t *testing.T, c jwt.RegisteredClaims) string {
	tok, err := jwt.NewWithClaims(jwt.SigningMethodNone, c).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func mustReq(t testing.TB, method, url string, body io.Reader) *http.Request {
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// TestKV: kv set → reset → get through the proxy, with a second device.
func TestKV(t *testing.T) {
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2})
	u := tc.newUser(t)
	for i := range 5 {
		kvSet(t, u, "notes", fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i))
	}
	for i := range 5 {
		if got := kvResetGet(t, u, "notes", fmt.Sprintf("k%d", i)); got != fmt.Sprintf("v%d", i) {
			t.Fatalf("k%d = %q", i, got)
		}
	}
}

func kvOpen(t *testing.T, u *user, name string) *kv.KV {
	t.Helper()
	u.use(t)
	opts := badger.DefaultOptions(filepath.Join(t.TempDir(), name)).WithLoggingLevel(badger.ERROR)
	db, err := kv.Open(u.cc, name, opts)
	if err != nil {
		t.Fatalf("kv open: %v", err)
	}
	return db
}

func kvSet(t *testing.T, u *user, db, k, v string) {
	t.Helper()
	d := kvOpen(t, u, db)
	defer d.Close()
	if err := d.Sync(); err != nil {
		t.Fatalf("kv sync: %v", err)
	}
	txn, err := d.NewTransaction(true)
	if err != nil {
		t.Fatalf("kv txn: %v", err)
	}
	if err := txn.Set([]byte(k), []byte(v)); err != nil {
		t.Fatal(err)
	}
	// Not kv.Set: it commits asynchronously and uploads the backup at once,
	// so a slow machine can upload a backup without the write (a charm kv
	// race, reproducible on a single stock server). A nil callback commits
	// synchronously; the proxy sees the same seq, listing and upload calls.
	if err := d.Commit(txn, nil); err != nil {
		t.Fatalf("kv commit %s: %v", k, err)
	}
}

// kvResetGet opens the db fresh (as another device would), resets it from
// the server and reads k.
func kvResetGet(t *testing.T, u *user, db, k string) string {
	t.Helper()
	d := kvOpen(t, u, db)
	defer d.Close()
	if err := d.Reset(); err != nil {
		t.Fatalf("kv reset: %v", err)
	}
	v, err := d.Get([]byte(k))
	if err != nil {
		t.Fatalf("kv get %s: %v", k, err)
	}
	return string(v)
}

// TestNodeKilledMidUpload: a node dying while a large body streams costs
// that replica only; the write is acked on the two others, identical.
func TestNodeKilledMidUpload(t *testing.T) {
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2})
	u := tc.newUser(t)
	auth, err := u.cc.Auth()
	if err != nil {
		t.Fatal(err)
	}
	const size = 48 << 20
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		part, _ := mw.CreateFormFile("data", "big")
		chunk := randBytes(t, 1<<20)
		for i := range size >> 20 {
			if i == 8 {
				// A few MiB in: kill node 2 (crash: listeners and connections closed).
				tc.stop(1)
			}
			if _, err := part.Write(chunk); err != nil {
				pw.CloseWithError(err)
				return
			}
		}
		pw.CloseWithError(mw.Close())
	}()
	req := mustReq(t, "POST", "http://"+tc.httpAddr+"/v1/fs/big?mode=420", pr)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.Header.Set("Authorization", "bearer "+auth.JWT)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("upload with a node killed mid-body: %d %s", resp.StatusCode, b)
	}
	var sizes []int
	var first []byte
	for _, n := range []int{0, 2} {
		got, err := readNodeFile(tc, n, u.id, "big")
		if err != nil {
			t.Fatalf("node%d: %v", n+1, err)
		}
		sizes = append(sizes, len(got))
		if first == nil {
			first = got
		} else if !bytes.Equal(first, got) {
			t.Fatal("surviving replicas differ")
		}
	}
	if sizes[0] != size {
		t.Fatalf("stored %d bytes, want %d", sizes[0], size)
	}
	// The proxy is alive and serving.
	u.put(t, "after-kill", []byte("still here"))
	if string(u.get(t, "after-kill")) != "still here" {
		t.Fatal("proxy not serving after a node died mid-upload")
	}
}

func readNodeFile(tc *testCluster, i int, charmID, path string) ([]byte, error) {
	return os.ReadFile(tc.dc.Nodes[i].FilePath(charmID, path))
}

// TestSeqMonotonic: /v1/seq never goes backwards or repeats while nodes stop
// and return with stale counters, and a returning node is brought up to date.
func TestSeqMonotonic(t *testing.T) {
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2})
	u := tc.newUser(t)
	signer, err := token.LoadSigner(tc.dc.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	jwt, err := signer.Sign(u.id, tc.cfg.PublicURL, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	seq := func(method, base string) uint64 {
		t.Helper()
		req := mustReq(t, method, base+"/v1/seq/counter", nil)
		req.Header.Set("Authorization", "bearer "+jwt)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m struct {
			Seq uint64 `json:"seq"`
		}
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("%s seq via %s: %d %s", method, base, resp.StatusCode, b)
		}
		if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
			t.Fatal(err)
		}
		return m.Seq
	}
	proxy := "http://" + tc.httpAddr
	var last uint64
	next := func() {
		t.Helper()
		v := seq("POST", proxy)
		if last != 0 && v <= last {
			t.Fatalf("seq went from %d to %d", last, v)
		}
		last = v
		if g := seq("GET", proxy); g != v {
			t.Fatalf("GET seq = %d right after POST answered %d", g, v)
		}
	}
	for range 3 {
		next()
	}
	tc.stop(2) // node3 misses increments
	tc.waitReady(2)
	for range 5 {
		next()
	}
	tc.start(2)
	tc.waitReady(3)
	tc.stop(0) // now node3's stale counter is one of the two answering
	tc.waitReady(2)
	next()
	if direct := seq("GET", tc.dc.Nodes[2].HTTPURL()); direct < last {
		t.Fatalf("node3 holds %d after catch-up, the cluster answered %d", direct, last)
	}
	tc.stop(1) // one node left: an increment can't be sure to overlap the last
	tc.waitReady(1)
	req := mustReq(t, "POST", proxy+"/v1/seq/counter", nil)
	req.Header.Set("Authorization", "bearer "+jwt)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("seq with 1 of 3 nodes = %d, want 503", resp.StatusCode)
	}
}

// allEqual reports whether every copy has the same bytes.
func allEqual(copies map[string][]byte) bool {
	var first []byte
	for _, b := range copies {
		if first == nil {
			first = b
		} else if !bytes.Equal(first, b) {
			return false
		}
	}
	return true
}
