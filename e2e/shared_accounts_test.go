package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	charmfs "github.com/charmbracelet/charm/fs"
	charm "github.com/charmbracelet/charm/proto"
	"github.com/cring-dev/cring/internal/accounts/postgres"
	"github.com/cring-dev/cring/internal/testwait"
	"github.com/cring-dev/cring/internal/token"
)

// TestSharedAccountsNewUserFirstNodeDown: with node 1 (the SSH primary)
// stopped, a brand-new user's first login goes to another node; the user
// copies a file in and reads it back, and a second device with the same key
// gets the same charm ID through the proxy and directly from every running
// node: one identity, not one per node.
func TestSharedAccountsNewUserFirstNodeDown(t *testing.T) {
	pc := startPGCluster(t, 3)
	pc.stop(0, syscall.SIGTERM)
	pc.waitReady(2)

	u := pc.newUser(t)
	data := randBytes(t, 100<<10)
	u.put(t, "notes/first.txt", data)
	if got := u.get(t, "notes/first.txt"); !bytes.Equal(got, data) {
		t.Fatal("read back different bytes")
	}
	if names := u.ls(t, "notes"); !slices.Equal(names, []string{"first.txt"}) {
		t.Fatalf("ls notes = %v", names)
	}

	_, proxySSH, _ := splitPort(pc.sshAddr)
	_, proxyHTTP, _ := splitPort(pc.httpAddr)
	other := sameKeyClient(t, u, proxySSH, proxyHTTP)
	if id, err := other.ID(); err != nil || id != u.id {
		t.Fatalf("second device via proxy: %q %v, want %s", id, err, u.id)
	}
	for _, i := range []int{1, 2} {
		n := pc.nodes[i]
		direct := sameKeyClient(t, u, n.ssh, n.http)
		if id, err := direct.ID(); err != nil || id != u.id {
			t.Fatalf("same key directly on %s: %q %v, want %s", n.name, id, err, u.id)
		}
	}

	// The database holds one user for the key, under that charm ID.
	pg, err := postgres.Open(context.Background(), pc.pgURL, postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close()
	if n, _ := pg.UserCount(); n != 1 {
		t.Fatalf("%d users in PostgreSQL, want 1", n)
	}
	if eks, err := encryptKeysOf(pg, u); err != nil || len(eks) != 1 {
		t.Fatalf("encrypt keys in PostgreSQL: %v %v", eks, err)
	}

	// Node 1 back (hinted handoff brings it the file), nodes 2 and 3 gone:
	// the same user, same charm ID, still reads and lists it.
	pc.start(0)
	pc.waitReady(3)
	ep, err := u.fs.EncryptPath("notes/first.txt")
	if err != nil {
		t.Fatal(err)
	}
	onNode1 := filepath.Join(pc.nodes[0].dataDir, "files", u.id, ep)
	testwait.For(t, 10*time.Second, "notes/first.txt on node1", func() bool {
		b, err := os.ReadFile(onNode1)
		return err == nil && len(b) > 0
	})
	pc.stop(1, syscall.SIGTERM)
	pc.stop(2, syscall.SIGTERM)
	pc.waitReady(1)
	again := sameKeyClient(t, u, proxySSH, proxyHTTP)
	if id, err := again.ID(); err != nil || id != u.id {
		t.Fatalf("with only node1 up: charm ID %q %v, want %s", id, err, u.id)
	}
	if got := u.get(t, "notes/first.txt"); !bytes.Equal(got, data) {
		t.Fatal("with only node1 up: read back different bytes")
	}
	if names := u.ls(t, "notes"); !slices.Equal(names, []string{"first.txt"}) {
		t.Fatalf("with only node1 up: ls notes = %v", names)
	}
}

func encryptKeysOf(pg *postgres.DB, u *user) ([]*charm.EncryptKey, error) {
	pu, err := pg.UserForKey(strings.Join(strings.Fields(string(u.pubKey))[:2], " "), false)
	if err != nil {
		return nil, err
	}
	return pg.EncryptKeysForPublicKey(pu.PublicKey)
}

// linkHandler answers charm's link protocol for a test: it hands the token
// over, approves the request and records how the link ended.
type linkHandler struct {
	token   chan string
	success chan bool
}

func newLinkHandler() *linkHandler {
	return &linkHandler{token: make(chan string, 1), success: make(chan bool, 1)}
}

func (h *linkHandler) TokenCreated(l *charm.Link) { h.token <- string(l.Token) }
func (h *linkHandler) TokenSent(*charm.Link)      {}
func (h *linkHandler) ValidToken(*charm.Link)     {}
func (h *linkHandler) InvalidToken(*charm.Link)   { h.done(false) }
func (h *linkHandler) Request(*charm.Link) bool   { return true }
func (h *linkHandler) RequestDenied(*charm.Link)  { h.done(false) }
func (h *linkHandler) SameUser(*charm.Link)       { h.done(true) }
func (h *linkHandler) Success(*charm.Link)        { h.done(true) }
func (h *linkHandler) Timeout(*charm.Link)        { h.done(false) }
func (h *linkHandler) Error(*charm.Link)          { h.done(false) }
func (h *linkHandler) done(ok bool) {
	select {
	case h.success <- ok:
	default:
	}
}

// TestSharedAccountsLink: `charm link` (charm's client link API, what the
// CLI runs) between two users' key sets through the proxy: both SSH
// sessions meet on the sticky primary, the accounts merge in PostgreSQL,
// and afterwards either key is the same charm ID on every node and reads
// the other's files.
func TestSharedAccountsLink(t *testing.T) {
	pc := startPGCluster(t, 3)
	a := pc.newUser(t)
	b := pc.newUser(t)
	if a.id == b.id {
		t.Fatal("two fresh keys got one charm ID")
	}
	a.use(t)
	a.put(t, "from-a.txt", []byte("written before the link"))

	ha, hb := newLinkHandler(), newLinkHandler()
	errc := make(chan error, 2)
	go func() { errc <- a.cc.LinkGen(ha) }()
	var tok string
	select {
	case tok = <-ha.token:
	case <-time.After(30 * time.Second):
		t.Fatal("no link token")
	}
	go func() { errc <- b.cc.Link(hb, tok) }()
	for range 2 {
		select {
		case err := <-errc:
			if err != nil {
				t.Fatalf("link: %v", err)
			}
		case <-time.After(90 * time.Second):
			t.Fatal("link did not finish")
		}
	}
	for name, h := range map[string]*linkHandler{"generator": ha, "requester": hb} {
		select {
		case ok := <-h.success:
			if !ok {
				t.Fatalf("link %s side failed", name)
			}
		default:
			t.Fatalf("link %s side never finished", name)
		}
	}

	_, proxySSH, _ := splitPort(pc.sshAddr)
	_, proxyHTTP, _ := splitPort(pc.httpAddr)
	for _, at := range []struct {
		name      string
		ssh, http int
	}{{"proxy", proxySSH, proxyHTTP}, {"node1", pc.nodes[0].ssh, pc.nodes[0].http},
		{"node2", pc.nodes[1].ssh, pc.nodes[1].http}, {"node3", pc.nodes[2].ssh, pc.nodes[2].http}} {
		cc := sameKeyClient(t, b, at.ssh, at.http)
		if id, err := cc.ID(); err != nil || id != a.id {
			t.Fatalf("b's key via %s: %q %v, want a's %s", at.name, id, err, a.id)
		}
	}
	keys, err := a.cc.AuthorizedKeysWithMetadata()
	if err != nil || len(keys.Keys) != 2 {
		t.Fatalf("a's keys after link: %+v %v", keys, err)
	}
	// b's key decrypts a's files: the encrypt keys were re-encrypted for it.
	b2 := sameKeyClient(t, b, proxySSH, proxyHTTP)
	b.use(t)
	bfs, err := charmfs.NewFSWithClient(b2)
	if err != nil {
		t.Fatal(err)
	}
	bu := &user{cc: b2, fs: bfs, env: b.env}
	if got := bu.get(t, "from-a.txt"); string(got) != "written before the link" {
		t.Fatalf("b reads %q", got)
	}
}

// TestSharedAccountsKVAnyNodeDown: charm kv set, reset and get work with any
// single node down, including the SSH primary; every earlier value stays.
func TestSharedAccountsKVAnyNodeDown(t *testing.T) {
	pc := startPGCluster(t, 3)
	u := pc.newUser(t)
	for i := range pc.nodes {
		pc.stop(i, syscall.SIGTERM)
		pc.waitReady(2)
		kvSet(t, u, "notes", fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i))
		for j := 0; j <= i; j++ {
			if got := kvResetGet(t, u, "notes", fmt.Sprintf("k%d", j)); got != fmt.Sprintf("v%d", j) {
				t.Fatalf("%s down: k%d = %q", pc.nodes[i].name, j, got)
			}
		}
		pc.start(i)
		pc.waitReady(3)
	}
}

// TestSharedAccountsSeqConcurrent: many clients incrementing one seq through
// the proxy, and some straight at each node, while nodes crash and come
// back: no value is ever handed out twice, and no client sees its sequence
// go backwards.
func TestSharedAccountsSeqConcurrent(t *testing.T) {
	pc := startPGCluster(t, 3)
	u := pc.newUser(t)
	signer, err := token.LoadSigner(pc.keyPath)
	if err != nil {
		t.Fatal(err)
	}
	jwt, err := signer.Sign(u.id, pc.publicURL, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 15 * time.Second}
	inc := func(base string) (uint64, error) {
		req, _ := http.NewRequest(http.MethodPost, base+"/v1/seq/counter", nil)
		req.Header.Set("Authorization", "bearer "+jwt)
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("%d %s", resp.StatusCode, b)
		}
		var m charm.SeqMsg
		return m.Seq, json.Unmarshal(b, &m)
	}

	chaosDone := make(chan struct{})
	go func() {
		defer close(chaosDone)
		for i := range pc.nodes {
			// The sleeps are the fault's shape (down 300 ms, up 300 ms
			// before the next node), not waits: clients run throughout.
			pc.stop(i, syscall.SIGKILL)
			time.Sleep(300 * time.Millisecond)
			pc.start(i)
			time.Sleep(300 * time.Millisecond)
		}
	}()

	proxy := "http://" + pc.httpAddr
	bases := []string{proxy, proxy, proxy, proxy, proxy, proxy, pc.nodes[0].httpURL(), pc.nodes[1].httpURL(), pc.nodes[2].httpURL()}
	var mu sync.Mutex
	seen := map[uint64]string{}
	var wg sync.WaitGroup
	var ok, failed int
	fail := make(chan error, len(bases))
	for c, base := range bases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var last uint64
			first := true
			for n := 0; n < 2000; n++ {
				select {
				case <-chaosDone:
					if n > 20 {
						return
					}
				default:
				}
				v, err := inc(base)
				mu.Lock()
				if err != nil {
					failed++ // a node killed mid-request: allowed, a repeat is not
					mu.Unlock()
					time.Sleep(20 * time.Millisecond) // a client's pause before retrying: not a wait
					continue
				}
				ok++
				who := fmt.Sprintf("client %d via %s", c, base)
				if prev, dup := seen[v]; dup {
					mu.Unlock()
					fail <- fmt.Errorf("%d handed out twice: to %s and %s", v, prev, who)
					return
				}
				seen[v] = who
				mu.Unlock()
				if !first && v <= last {
					fail <- fmt.Errorf("%s: seq went from %d to %d", who, last, v)
					return
				}
				first, last = false, v
			}
		}()
	}
	wg.Wait()
	<-chaosDone
	close(fail)
	for err := range fail {
		t.Fatal(err)
	}
	t.Logf("%d increments, %d failed while nodes crashed", ok, failed)
	if ok < 100 || failed > ok/4 {
		t.Fatalf("%d increments succeeded, %d failed", ok, failed)
	}
}
