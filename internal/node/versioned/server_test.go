package versioned

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	stdlog "log"
	"log/slog"
	"math/rand/v2"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/charmbracelet/charm/client"
	charmfs "github.com/charmbracelet/charm/fs"
	charm "github.com/charmbracelet/charm/proto"
	"github.com/charmbracelet/charm/server"
	"github.com/charmbracelet/keygen"
	"github.com/google/uuid"

	"github.com/cring-dev/cring/internal/node/filestore"
	"github.com/cring-dev/cring/internal/stamp"
	"github.com/cring-dev/cring/internal/testwait"
	"github.com/cring-dev/cring/internal/token"
)

// testPorts returns n free loopback ports below the ephemeral range, where
// the kernel's own picks (charm's internal port among them) never land.
func testPorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	for tries := 0; len(ports) < n; tries++ {
		if tries > 1000 {
			t.Fatal("no free port")
		}
		p := 20000 + rand.IntN(12768)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		lns = append(lns, l)
		ports = append(ports, p)
	}
	return ports
}

// testNode is one node (cring's, or stock charm's when stock) in this
// process on a data dir, with the ports it keeps across restarts.
type testNode struct {
	t                         *testing.T
	dataDir                   string
	httpPort, sshPort, health int
	maxStorage                int64
	signer                    *token.Signer
	srv                       *Server        // cring node
	stock                     *server.Server // stock charm serve
	publicURL                 string
	closeFn                   func()
	privateKey, authorizedKey []byte
}

func newTestNode(t *testing.T) *testNode {
	t.Helper()
	ports := testPorts(t, 3)
	n := &testNode{t: t, dataDir: t.TempDir(), httpPort: ports[0], sshPort: ports[1], health: ports[2]}
	n.publicURL = fmt.Sprintf("http://127.0.0.1:%d", n.httpPort)
	kp, err := keygen.New(filepath.Join(n.dataDir, ".ssh", "charm_server_ed25519"), keygen.WithKeyType(keygen.Ed25519), keygen.WithWrite())
	if err != nil {
		t.Fatal(err)
	}
	n.privateKey, n.authorizedKey = kp.RawPrivateKey(), kp.RawAuthorizedKey()
	if n.signer, err = token.NewSigner(n.privateKey); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.stop)
	return n
}

func (n *testNode) config() *server.Config {
	cfg := server.DefaultConfig()
	cfg.BindAddr, cfg.Host = "127.0.0.1", "127.0.0.1"
	cfg.HTTPPort, cfg.SSHPort, cfg.HealthPort = n.httpPort, n.sshPort, n.health
	cfg.DataDir = n.dataDir
	cfg.PublicURL = ""
	cfg.EnableMetrics = false
	cfg.UserMaxStorage = n.maxStorage
	// Without its own error logger charm's SSH server borrows a global one.
	cfg = cfg.WithKeys(n.authorizedKey, n.privateKey).WithErrorLogger(stdlog.New(io.Discard, "", 0))
	if err := os.MkdirAll(filepath.Join(n.dataDir, "db"), 0o700); err != nil {
		n.t.Fatal(err)
	}
	return cfg
}

// start runs cring node's server.
func (n *testNode) start() *testNode {
	t := n.t
	t.Helper()
	log := slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := NewServer(n.config(), ServerOptions{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Start() }()
	n.srv, n.closeFn = srv, func() { _ = srv.Close() }
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	n.waitSSH()
	return n
}

// startStock runs stock charm serve (charm's server and local store).
func (n *testNode) startStock() {
	t := n.t
	t.Helper()
	srv, err := server.NewServer(n.config())
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Start() }()
	n.stock, n.closeFn = srv, func() { _ = srv.Close() }
	testwait.For(t, 30*time.Second, "stock charm up", func() bool {
		resp, err := http.Get(n.publicURL + "/v1/public/jwks")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	n.waitSSH()
}

func (n *testNode) waitSSH() {
	testwait.For(n.t, 30*time.Second, "ssh up", func() bool {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", n.sshPort), time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

func (n *testNode) stop() {
	if n.closeFn != nil {
		n.closeFn()
		n.closeFn, n.srv, n.stock = nil, nil, nil
	}
}

type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// charmUser is a real charm client of the node: its first login over SSH
// creates the account. Charm's crypt package reads CHARM_* itself.
func (n *testNode) charmUser() (*client.Client, *charmfs.FS, string) {
	t := n.t
	t.Helper()
	dir := t.TempDir()
	for k, v := range map[string]string{
		"CHARM_HOST": "127.0.0.1", "CHARM_SSH_PORT": strconv.Itoa(n.sshPort),
		"CHARM_HTTP_PORT": strconv.Itoa(n.httpPort), "CHARM_DATA_DIR": dir,
	} {
		t.Setenv(k, v)
	}
	cc, err := client.NewClient(&client.Config{Host: "127.0.0.1", SSHPort: n.sshPort, HTTPPort: n.httpPort, DataDir: dir, KeyType: "ed25519"})
	if err != nil {
		t.Fatal(err)
	}
	auth, err := cc.Auth()
	if err != nil {
		t.Fatalf("first login: %v", err)
	}
	cfs, err := charmfs.NewFSWithClient(cc)
	if err != nil {
		t.Fatal(err)
	}
	return cc, cfs, auth.ID
}

func (n *testNode) token(id string) string {
	n.t.Helper()
	tok, err := n.signer.Sign(id, n.publicURL, time.Hour)
	if err != nil {
		n.t.Fatal(err)
	}
	return tok
}

// req is one raw request to the file API.
type req struct {
	method, path string
	st           stamp.Stamp
	stampText    string // sent as is instead of st when set
	data         string // POST: the multipart "data" part
	auth         string // Authorization header; none when ""
}

func (n *testNode) send(base string, r req) *http.Response {
	t := n.t
	t.Helper()
	var body io.Reader
	ctype := ""
	if r.method == http.MethodPost {
		buf := &bytes.Buffer{}
		mw := multipart.NewWriter(buf)
		fw, _ := mw.CreateFormFile("data", "f")
		io.WriteString(fw, r.data)
		mw.Close()
		body, ctype = buf, mw.FormDataContentType()
	}
	hr, err := http.NewRequest(r.method, base+r.path, body)
	if err != nil {
		t.Fatal(err)
	}
	if ctype != "" {
		hr.Header.Set("Content-Type", ctype)
	}
	if r.auth != "" {
		hr.Header.Set("Authorization", r.auth)
	}
	if !r.st.IsZero() {
		hr.Header.Set(stamp.Header, r.st.String())
	}
	if r.stampText != "" {
		hr.Header.Set(stamp.Header, r.stampText)
	}
	resp, err := http.DefaultClient.Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func readAll(t *testing.T, resp *http.Response) []byte {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestNodeStampedFileAPI: stamped writes and deletes over HTTP, with the
// statuses, headers and JSON cring node answers.
func TestNodeStampedFileAPI(t *testing.T) {
	n := newTestNode(t).start()
	_, _, id := n.charmUser()
	bearer := "Bearer " + n.token(id)
	type want struct {
		status  int
		stamp   string // X-Cring-Stamp
		message string
		deleted string
		body    string // GET 200
	}
	post := func(p string, s int, data string) req {
		return req{method: "POST", path: "/v1/fs/" + p + "?mode=420", st: testStamp(s), data: data, auth: bearer}
	}
	del := func(p string, s int) req {
		return req{method: "DELETE", path: "/v1/fs/" + p, st: testStamp(s), auth: bearer}
	}
	get := func(p string) req { return req{method: "GET", path: "/v1/fs/" + p, auth: bearer} }
	s := func(i int) string { return testStamp(i).String() }
	for _, tt := range []struct {
		name  string
		steps []req
		wants []want
	}{
		{
			name:  "older write refused, newer bytes stay",
			steps: []req{post("a/f", 2, "new"), post("a/f", 1, "old"), get("a/f")},
			wants: []want{{status: 200, stamp: s(2)}, {status: 409, stamp: s(2), message: MsgNewer}, {status: 200, stamp: s(2), body: "new"}},
		},
		{
			name:  "equal stamp answered 200",
			steps: []req{post("b/f", 1, "v1"), post("b/f", 1, "v1"), get("b/f")},
			wants: []want{{status: 200, stamp: s(1)}, {status: 200, stamp: s(1)}, {status: 200, stamp: s(1), body: "v1"}},
		},
		{
			name:  "late write after delete refused",
			steps: []req{del("c/f", 2), post("c/f", 1, "late"), get("c/f")},
			wants: []want{{status: 200, stamp: s(2)}, {status: 409, stamp: s(2), message: MsgNewer, deleted: s(2)}, {status: 404, message: "file not found", deleted: s(2)}},
		},
		{
			name: "directory delete keeps a newer file",
			steps: []req{post("d/old", 1, "o"), post("d/new", 3, "n"), del("d", 2),
				get("d/old"), get("d/new"), post("d/sub/late", 1, "x"), post("d/later", 4, "l"), get("d/later")},
			wants: []want{{status: 200}, {status: 200}, {status: 200},
				{status: 404, message: "file not found", deleted: s(2)}, {status: 200, stamp: s(3), body: "n"},
				{status: 409, stamp: s(2), message: MsgNewer, deleted: s(2)}, {status: 200}, {status: 200, stamp: s(4), body: "l"}},
		},
		{
			name:  "delete older than the file refused",
			steps: []req{post("e/f", 2, "keep"), del("e/f", 1), get("e/f")},
			wants: []want{{status: 200}, {status: 409, stamp: s(2), message: MsgNewer}, {status: 200, body: "keep"}},
		},
		{
			name:  "bad stamp",
			steps: []req{{method: "POST", path: "/v1/fs/g?mode=420", stampText: "yesterday", data: "x", auth: bearer}},
			wants: []want{{status: 400}},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for i, r := range tt.steps {
				resp := n.send(n.publicURL, r)
				body := readAll(t, resp)
				w := tt.wants[i]
				if resp.StatusCode != w.status {
					t.Fatalf("step %d %s %s: %d %s, want %d", i, r.method, r.path, resp.StatusCode, body, w.status)
				}
				if w.stamp != "" && resp.Header.Get(stamp.Header) != w.stamp {
					t.Fatalf("step %d: %s %q, want %q", i, stamp.Header, resp.Header.Get(stamp.Header), w.stamp)
				}
				if w.message != "" {
					var m struct{ Message, Deleted string }
					if err := json.Unmarshal(body, &m); err != nil || m.Message != w.message || m.Deleted != w.deleted {
						t.Fatalf("step %d: body %s, want message %q deleted %q", i, body, w.message, w.deleted)
					}
					if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
						t.Fatalf("step %d: Content-Type %q", i, ct)
					}
				}
				if w.body != "" {
					if string(body) != w.body || resp.Header.Get(SHA256Header) != hexSum([]byte(w.body)) ||
						resp.Header.Get("Content-Type") != "application/octet-stream" || resp.Header.Get("X-File-Mode") != "420" {
						t.Fatalf("step %d: %q %v, want %q with its checksum", i, body, resp.Header, w.body)
					}
				}
			}
		})
	}
}

// TestNodeAnswersLikeCharm: every refusal and answer charm's own handler
// gives (asked on the internal port, behind the same store) is given the
// same on the public port: status, Content-Type and body bytes.
func TestNodeAnswersLikeCharm(t *testing.T) {
	n := newTestNode(t)
	n.maxStorage = 1000
	n.start()
	_, _, id := n.charmUser()
	bearer := "Bearer " + n.token(id)
	stranger := newTestSigner(t)
	foreign, _ := stranger.Sign(id, n.publicURL, time.Hour)
	// Some files to read, unstamped as charm's handler writes them.
	for _, p := range []string{"l/a", "l/b", "l/s/c", "q/big"} {
		data := p
		if p == "q/big" {
			data = string(bytes.Repeat([]byte("x"), 600))
		}
		resp := n.send(n.publicURL, req{method: "POST", path: "/v1/fs/" + p + "?mode=420", data: data, auth: bearer})
		if b := readAll(t, resp); resp.StatusCode != 200 {
			t.Fatalf("seed %s: %d %s", p, resp.StatusCode, b)
		}
	}
	notMultipart := func(base string) *http.Response {
		q, _ := http.NewRequest("POST", base+"/v1/fs/x?mode=420", bytes.NewReader([]byte("raw")))
		q.Header.Set("Authorization", bearer)
		resp, err := http.DefaultClient.Do(q)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	for _, tt := range []struct {
		name string
		r    req
		raw  func(base string) *http.Response
	}{
		{name: "no token", r: req{method: "GET", path: "/v1/fs/l/a"}},
		{name: "not a bearer", r: req{method: "GET", path: "/v1/fs/l/a", auth: "Token abc"}},
		{name: "garbage token", r: req{method: "GET", path: "/v1/fs/l/a", auth: "Bearer abc.def.ghi"}},
		{name: "foreign key", r: req{method: "GET", path: "/v1/fs/l/a", auth: "Bearer " + foreign}},
		{name: "unknown user", r: req{method: "GET", path: "/v1/fs/l/a", auth: "Bearer " + n.token(uuid.NewString())}},
		{name: "missing file", r: req{method: "GET", path: "/v1/fs/l/nope", auth: bearer}},
		{name: "file", r: req{method: "GET", path: "/v1/fs/l/a", auth: bearer}},
		{name: "listing", r: req{method: "GET", path: "/v1/fs/l", auth: bearer}},
		{name: "root listing", r: req{method: "GET", path: "/v1/fs/", auth: bearer}},
		{name: "climbing out", r: req{method: "GET", path: "/v1/fs/../../etc/passwd", auth: bearer}},
		{name: "bad mode", r: req{method: "POST", path: "/v1/fs/x?mode=rw", data: "x", auth: bearer}},
		{name: "no mode", r: req{method: "POST", path: "/v1/fs/x", data: "x", auth: bearer}},
		{name: "not multipart", raw: notMultipart},
		{name: "over the storage limit", r: req{method: "POST", path: "/v1/fs/q/more?mode=420", data: string(bytes.Repeat([]byte("y"), 500)), auth: bearer}},
		{name: "delete of nothing", r: req{method: "DELETE", path: "/v1/fs/never/there", auth: bearer}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ask := func(base string) (int, http.Header, []byte) {
				var resp *http.Response
				if tt.raw != nil {
					resp = tt.raw(base)
				} else {
					resp = n.send(base, tt.r)
				}
				return resp.StatusCode, resp.Header, readAll(t, resp)
			}
			cs, ch, cb := ask(n.srv.InternalURL())
			gs, gh, gb := ask(n.publicURL)
			if gs != cs || !bytes.Equal(gb, cb) {
				t.Fatalf("cring node: %d %s\ncharm:      %d %s", gs, gb, cs, cb)
			}
			headers := []string{"Content-Type", "X-File-Mode", "Last-Modified"}
			if _, off := time.Now().Zone(); off != 0 {
				headers = headers[:2] // charm labels local time GMT; cring node sends real GMT
			}
			for _, h := range headers {
				if gh.Get(h) != ch.Get(h) {
					t.Fatalf("%s: %q, charm %q", h, gh.Get(h), ch.Get(h))
				}
			}
		})
	}
}

// TestNodeCharmClient: charm's own fs client, unstamped, works through cring
// node end to end, and what lands on disk is in charm's layout with its
// checksum recorded.
func TestNodeCharmClient(t *testing.T) {
	n := newTestNode(t).start()
	_, cfs, id := n.charmUser()
	data := bytes.Repeat([]byte("charm "), 50000)
	if err := cfs.WriteFile("notes/today.txt", memFile(data)); err != nil {
		t.Fatal(err)
	}
	if err := cfs.WriteFile("notes/other.txt", memFile([]byte("other"))); err != nil {
		t.Fatal(err)
	}
	got, err := cfs.ReadFile("notes/today.txt")
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %d bytes, %v", len(got), err)
	}
	des, err := cfs.ReadDir("notes")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"other.txt", "today.txt"}) {
		t.Fatalf("ls notes = %v", names)
	}

	ep, err := cfs.EncryptPath("notes/today.txt")
	if err != nil {
		t.Fatal(err)
	}
	onDisk := filepath.Join(n.dataDir, "files", id, ep)
	f, err := os.Open(onDisk)
	if err != nil {
		t.Fatalf("charm's layout: %v", err)
	}
	v, err := filestore.ReadVersion(f)
	f.Close()
	stored, _ := os.ReadFile(onDisk)
	if err != nil || v.SHA256 != hexSum(stored) || v.Size != int64(len(stored)) || !v.Stamp.IsZero() {
		t.Fatalf("recorded %+v %v for %d bytes on disk", v, err, len(stored))
	}

	if err := cfs.Remove("notes/today.txt"); err != nil {
		t.Fatal(err)
	}
	if _, err := cfs.ReadFile("notes/today.txt"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("after remove: %v", err)
	}
	if _, err := os.Stat(onDisk); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("removed file still on disk")
	}
}

// TestNodeListingJSON: a listing decodes as charm's FileInfo and carries
// each file's stamp.
func TestNodeListingJSON(t *testing.T) {
	n := newTestNode(t).start()
	_, _, id := n.charmUser()
	bearer := "Bearer " + n.token(id)
	for i, p := range []string{"dir/a", "dir/b"} {
		resp := n.send(n.publicURL, req{method: "POST", path: "/v1/fs/" + p + "?mode=420", st: testStamp(i + 1), data: p, auth: bearer})
		readAll(t, resp)
	}
	resp := n.send(n.publicURL, req{method: "POST", path: "/v1/fs/dir/sub/c?mode=420", data: "c", auth: bearer})
	readAll(t, resp)
	resp = n.send(n.publicURL, req{method: "GET", path: "/v1/fs/dir", auth: bearer})
	body := readAll(t, resp)
	if resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("Content-Type %q", resp.Header.Get("Content-Type"))
	}
	var fi charm.FileInfo
	if err := json.Unmarshal(body, &fi); err != nil || !fi.IsDir || fi.Name != "dir" || len(fi.Files) != 3 {
		t.Fatalf("as charm.FileInfo: %+v %v", fi, err)
	}
	var l filestore.Listing
	json.Unmarshal(body, &l)
	stamps := map[string]string{}
	for _, f := range l.Files {
		stamps[f.Name] = f.Stamp
	}
	want := map[string]string{"a": testStamp(1).String(), "b": testStamp(2).String(), "sub": ""}
	if !maps(stamps, want) {
		t.Fatalf("stamps %v, want %v", stamps, want)
	}
}

func maps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestNodeCutUpload: a client that goes away in the middle of an upload
// leaves the old version under the name and no temp file behind.
func TestNodeCutUpload(t *testing.T) {
	n := newTestNode(t).start()
	_, _, id := n.charmUser()
	tok := n.token(id)
	resp := n.send(n.publicURL, req{method: "POST", path: "/v1/fs/cut/f?mode=420", st: testStamp(1), data: "old", auth: "Bearer " + tok})
	readAll(t, resp)
	tmp := n.srv.Store().TmpDir()
	entries := func() int {
		des, _ := os.ReadDir(tmp)
		return len(des)
	}

	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", n.httpPort))
	if err != nil {
		t.Fatal(err)
	}
	head := "--b\r\nContent-Disposition: form-data; name=\"data\"; filename=\"f\"\r\nContent-Type: application/octet-stream\r\n\r\n"
	fmt.Fprintf(c, "POST /v1/fs/cut/f?mode=420 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n%s: %s\r\n"+
		"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: %d\r\n\r\n%s",
		tok, stamp.Header, testStamp(2), 10<<20, head)
	chunk := bytes.Repeat([]byte("n"), 256<<10)
	if _, err := c.Write(chunk); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, 10*time.Second, "the upload's temp file", func() bool { return entries() == 1 })
	c.Close()
	testwait.For(t, 10*time.Second, "the cut upload's temp file removed", func() bool { return entries() == 0 })

	resp = n.send(n.publicURL, req{method: "GET", path: "/v1/fs/cut/f", auth: "Bearer " + tok})
	if b := readAll(t, resp); string(b) != "old" || resp.Header.Get(stamp.Header) != testStamp(1).String() {
		t.Fatalf("after a cut upload: %q %s", b, resp.Header.Get(stamp.Header))
	}
}

// TestNodeRefusesCorruptCopy: a copy that rotted on disk is never served
// whole: a small one gets a 500, a large one is cut short.
func TestNodeRefusesCorruptCopy(t *testing.T) {
	n := newTestNode(t).start()
	_, _, id := n.charmUser()
	bearer := "Bearer " + n.token(id)
	for _, size := range []int{1000, 1 << 20} {
		p := fmt.Sprintf("rot/%d", size)
		data := bytes.Repeat([]byte("r"), size)
		readAll(t, n.send(n.publicURL, req{method: "POST", path: "/v1/fs/" + p + "?mode=420", st: testStamp(1), data: string(data), auth: bearer}))
		onDisk := filepath.Join(n.dataDir, "files", id, p)
		bad := bytes.Clone(data)
		bad[size-1] = 'X' // the very end: only a check of the whole file finds it
		if err := os.WriteFile(onDisk, bad, 0o644); err != nil {
			t.Fatal(err)
		}
		hr, _ := http.NewRequest("GET", n.publicURL+"/v1/fs/"+p, nil)
		hr.Header.Set("Authorization", bearer)
		resp, err := http.DefaultClient.Do(hr)
		if err != nil {
			t.Fatal(err)
		}
		got, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 200 && rerr == nil {
			t.Fatalf("%d bytes: a rotten copy was served whole (%d bytes)", size, len(got))
		}
		if size <= readChunk && resp.StatusCode != 500 {
			t.Fatalf("%d bytes: status %d, want 500 before any byte", size, resp.StatusCode)
		}
	}
}

// TestNodeSwitchFromCharmServe: a data dir moves from stock `charm serve`
// to cring node and back: same layout, same bytes, same accounts.
func TestNodeSwitchFromCharmServe(t *testing.T) {
	n := newTestNode(t)
	n.startStock()
	_, cfs, _ := n.charmUser()
	first := bytes.Repeat([]byte("1"), 5000)
	if err := cfs.WriteFile("s/first", memFile(first)); err != nil {
		t.Fatal(err)
	}
	n.stop()

	n.start()
	second := []byte("second")
	if got, err := cfs.ReadFile("s/first"); err != nil || !bytes.Equal(got, first) {
		t.Fatalf("cring node reading charm's file: %v", err)
	}
	if err := cfs.WriteFile("s/second", memFile(second)); err != nil {
		t.Fatal(err)
	}
	n.stop()

	n.startStock()
	for name, want := range map[string][]byte{"s/first": first, "s/second": second} {
		if got, err := cfs.ReadFile(name); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("stock charm reading %s: %v", name, err)
		}
	}
}

// memFile is an fs.File over bytes, what charm's WriteFile wants.
type memFileT struct {
	*bytes.Reader
	size int64
}

func memFile(b []byte) fs.File { return &memFileT{Reader: bytes.NewReader(b), size: int64(len(b))} }

func (m *memFileT) Stat() (fs.FileInfo, error) { return m, nil }
func (m *memFileT) Close() error               { return nil }
func (m *memFileT) Name() string               { return "f" }
func (m *memFileT) Size() int64                { return m.size }
func (m *memFileT) Mode() fs.FileMode          { return 0o644 }
func (m *memFileT) ModTime() time.Time         { return time.Now() }
func (m *memFileT) IsDir() bool                { return false }
func (m *memFileT) Sys() any                   { return nil }
