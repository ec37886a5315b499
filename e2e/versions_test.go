package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/heal"
	"github.com/cring-dev/cring/internal/stamp"
	"github.com/cring-dev/cring/internal/testwait"
	"github.com/cring-dev/cring/internal/tombstone"
)

// Regression tests for the ways versions decided by nodes' file times lost
// acknowledged data (docs/design.md, "Versions"). Each fails on the code
// that ordered copies by modification time.

var all3 = []string{"node1", "node2", "node3"}

// scan runs one healing pass now.
func scan(t *testing.T, tc *testCluster) *heal.Report {
	t.Helper()
	rep, err := tc.srv.Healer().Scan(context.Background(), heal.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// TestRenewedTombstoneKeepsNewerWrite: a repair copy of a tombstone lands
// with a fresh modification time. Its delete is older than the write that
// followed it, and the write must stay.
func TestRenewedTombstoneKeepsNewerWrite(t *testing.T) {
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2, heal: true})
	u := tc.newUser(t)
	u.put(t, "k", []byte("v1"))
	if err := u.fs.Remove("k"); err != nil {
		t.Fatal(err)
	}
	u.put(t, "k", []byte("v2, acknowledged after the delete"))
	identicalOn(t, tc, u, "k", all3, 5*time.Second)
	ep, err := u.fs.EncryptPath("k")
	if err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Minute)
	for _, n := range tc.dc.Nodes {
		if err := os.Chtimes(n.FilePath(u.id, tombstone.Path(ep)), later, later); err != nil {
			t.Fatal(err)
		}
	}
	scan(t, tc)
	identicalOn(t, tc, u, "k", all3, time.Second)
	if got := u.get(t, "k"); string(got) != "v2, acknowledged after the delete" {
		t.Fatalf("read %q after the scan", got)
	}
}

// TestLateWriteLosesToDelete: a write a frozen replica finishes after the
// key was deleted lands with the newest modification time; the delete is
// newer by its stamp and must win.
func TestLateWriteLosesToDelete(t *testing.T) {
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2, heal: true})
	u := tc.newUser(t)
	u.put(t, "k", []byte("old version"))
	identicalOn(t, tc, u, "k", all3, 5*time.Second)
	old := tc.onDisk(t, u, "k")["node1"]
	if err := u.fs.Remove("k"); err != nil {
		t.Fatal(err)
	}
	// The delete is acked at W: let its last replica finish first (a scan
	// meeting a node in the middle of deleting can't list it, and rightly
	// leaves the key for the next pass).
	identicalOn(t, tc, u, "k", nil, 5*time.Second)
	ep, err := u.fs.EncryptPath("k")
	if err != nil {
		t.Fatal(err)
	}
	late := tc.dc.Nodes[2].FilePath(u.id, ep)
	if err := os.MkdirAll(filepath.Dir(late), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(late, old, 0o600); err != nil { // the abandoned write lands now
		t.Fatal(err)
	}
	rep := scan(t, tc)
	t.Logf("scan: keys %d healthy %d unreachable %v fixes %+v", rep.Keys, rep.Healthy, rep.Unreachable, rep.Fixes)
	identicalOn(t, tc, u, "k", nil, time.Second)
	if _, err := u.fs.ReadFile("k"); err == nil {
		t.Fatal("the deleted file is back")
	}
}

// TestDeletedDirectoryStaysDeleted: a directory deleted while a node was
// down comes back whole on that node; its tombstone covers every file
// under it.
func TestDeletedDirectoryStaysDeleted(t *testing.T) {
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2, heal: true})
	u := tc.newUser(t)
	files := []string{"tree/sub/a", "tree/sub/b", "tree/sub/c"}
	for _, f := range files {
		u.put(t, f, []byte(f))
	}
	for _, f := range files {
		identicalOn(t, tc, u, f, all3, 5*time.Second)
	}
	tc.stop(2)
	tc.waitReady(2)
	if err := u.fs.Remove("tree"); err != nil {
		t.Fatal(err)
	}
	tc.start(2)
	tc.waitReady(3)
	// The hint replay removes the tree node3 kept, without waiting for a
	// scan (scans run hourly here).
	for _, f := range files {
		identicalOn(t, tc, u, f, nil, 10*time.Second)
	}
	scan(t, tc)
	for _, f := range files {
		identicalOn(t, tc, u, f, nil, time.Second)
	}
	u.put(t, "tree/new", []byte("written after the delete"))
	scan(t, tc)
	identicalOn(t, tc, u, "tree/new", all3, 5*time.Second)
}

// TestNoFalse404WhenHintCannotReplay: a node that missed a write comes back
// while every node holding it is down. The hint stays, and the read is a
// 503, never "file does not exist"; once the others return, it is repaired.
func TestNoFalse404WhenHintCannotReplay(t *testing.T) {
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2, heal: true})
	u := tc.newUser(t)
	tc.stop(0)
	tc.waitReady(2)
	u.put(t, "k", []byte("on node2 and node3"))
	tc.stop(1)
	tc.stop(2)
	tc.waitReady(0)
	tc.start(0)
	tc.waitReady(1)
	ep, err := u.fs.EncryptPath("k")
	if err != nil {
		t.Fatal(err)
	}
	// Once node1's hint was tried (and could not be settled), it is still
	// owed the key: the read must not take its 404 for an answer.
	testwait.For(t, 10*time.Second, "the condition", func() bool { return tc.srv.Healer().Status().Totals["hints_retried"] > 0 })
	if st := u.status(t, tc, ep); st != http.StatusServiceUnavailable {
		t.Fatalf("read with the key's only copies down: %d, want 503", st)
	}
	tc.start(1)
	tc.start(2)
	tc.waitReady(3)
	identicalOn(t, tc, u, "k", all3, 10*time.Second)
}

// TestRefusedWriteKeepsFile: a write every node refuses leaves the file as
// it was, readable at once, and owes nobody a hint.
func TestRefusedWriteKeepsFile(t *testing.T) {
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2, heal: true})
	u := tc.newUser(t)
	u.put(t, "k", []byte("the existing file"))
	ep, err := u.fs.EncryptPath("k")
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, "http://"+tc.httpAddr+"/v1/fs/"+ep+"?mode=420", bytes.NewReader([]byte("not multipart")))
	req.Header.Set("Content-Type", "multipart/form-data; boundary=x")
	req.Header.Set("Authorization", "bearer "+u.jwt(t))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Fatal("a garbage body was acknowledged")
	}
	if got := u.get(t, "k"); string(got) != "the existing file" {
		t.Fatalf("read %q after a refused write", got)
	}
	for node, n := range tc.srv.Healer().Status().HintsPending {
		if n != 0 {
			t.Fatalf("%d hints for %s recorded for a write no node stored", n, node)
		}
	}
}

// status GETs an encrypted path through the proxy and returns the status.
func (u *user) status(t *testing.T, tc *testCluster, ep string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+tc.httpAddr+"/v1/fs/"+ep, nil)
	req.Header.Set("Authorization", "bearer "+u.jwt(t))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// jwt is a fresh token of the user's.
func (u *user) jwt(t *testing.T) string {
	t.Helper()
	j, err := u.cc.JWT()
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// TestReadVerifiesStockCopies: a stock node rewrites a file in place, so a
// read meeting another proxy's write can get a torn copy. A copy is served
// only when it is a recorded version: torn copies fail over, and with no
// whole copy left the read is a 503, never wrong bytes.
func TestReadVerifiesStockCopies(t *testing.T) {
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2})
	u := tc.newUser(t)
	data := bytes.Repeat([]byte("recorded version "), 300)
	u.put(t, "k", data)
	identicalOn(t, tc, u, "k", all3, 5*time.Second)
	ep, err := u.fs.EncryptPath("k")
	if err != nil {
		t.Fatal(err)
	}
	good := tc.onDisk(t, u, "k")["node1"]
	tear := func(i int) {
		torn := bytes.Clone(good)
		copy(torn[len(torn)/2:], "another write's bytes landing in place")
		if err := os.WriteFile(tc.dc.Nodes[i].FilePath(u.id, ep), torn, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tear(0)
	tear(1)
	for range 5 { // whichever replica is asked first
		if got := u.get(t, "k"); !bytes.Equal(got, data) {
			t.Fatalf("read %d bytes, not the recorded version", len(got))
		}
	}
	tear(2)
	if st := u.status(t, tc, ep); st != http.StatusServiceUnavailable {
		t.Fatalf("read with every copy torn: %d, want 503", st)
	}
}

// TestRecordsPrecedeStockData: a stock copy must never exist without a
// record saying what it may be, or a healer judging the key in between
// takes it for a torn or late copy and writes over an upload about to be
// acknowledged (the stock chaos run's lost write). A small upload's version
// record, and a streamed upload's intent record, reach W nodes before any
// node gets the data; a streamed upload's version record follows it.
func TestRecordsPrecedeStockData(t *testing.T) {
	for _, tt := range []struct {
		name  string
		size  int
		first string // the record that precedes the data
	}{
		{"small", 1 << 10, "record"},
		{"streamed", 256 << 10, "intent"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var seen []string // "record", "intent" or "data", in arrival order
			var ep string
			observe := func(_ int, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				if r.Method != http.MethodPost || ep == "" {
					return
				}
				p := strings.TrimPrefix(r.URL.Path, "/v1/fs/")
				switch {
				case p == ep:
					seen = append(seen, "data")
				case strings.HasPrefix(p, tombstone.VersionDir(ep)+"/"):
					if tombstone.IsPending(p) {
						seen = append(seen, "intent")
					} else {
						seen = append(seen, "record")
					}
				}
			}
			tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2, observe: observe})
			u := tc.newUser(t)
			e, err := u.fs.EncryptPath("k")
			if err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			ep = e
			mu.Unlock()
			u.put(t, "k", bytes.Repeat([]byte{'x'}, tt.size))
			identicalOn(t, tc, u, "k", all3, 5*time.Second)
			mu.Lock()
			defer mu.Unlock()
			firstData := slices.Index(seen, "data")
			if firstData < 0 || slices.Contains(seen[firstData:], tt.first) ||
				len(slices.DeleteFunc(slices.Clone(seen[:firstData]), func(s string) bool { return s != tt.first })) < 2 {
				t.Fatalf("requests in order %v: want %s on W=2 nodes before any data", seen, tt.first)
			}
			if tt.first == "intent" && !slices.Contains(seen[firstData:], "record") {
				t.Fatalf("requests in order %v: no version record after the data", seen)
			}
		})
	}
}

// TestUploadAwaitingRecordKept: a streamed upload's copies on stock nodes
// match no version record until the upload is stored at W and its record
// is written. A scan in between must not write the older recorded version
// over them (the acknowledged upload would be lost); its intent record says
// an upload is in flight.
func TestUploadAwaitingRecordKept(t *testing.T) {
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2, heal: true})
	u := tc.newUser(t)
	u.put(t, "k", []byte("v1, recorded"))
	u.put(t, "other", bytes.Repeat([]byte("v2, streamed "), 10_000))
	identicalOn(t, tc, u, "k", all3, 5*time.Second)
	identicalOn(t, tc, u, "other", all3, 5*time.Second)
	ep, err := u.fs.EncryptPath("k")
	if err != nil {
		t.Fatal(err)
	}
	v2 := tc.onDisk(t, u, "other")["node1"]
	st := stamp.NewClockID("test", nil).Now()
	writeOn := func(i int, p string, b []byte) {
		t.Helper()
		f := tc.dc.Nodes[i].FilePath(u.id, p)
		if err := os.MkdirAll(filepath.Dir(f), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The proxy's intent is on every node, v2's data on W of them; the
	// third replica still holds v1.
	for i := range 3 {
		writeOn(i, tombstone.PendingPath(ep, st), tombstone.VersionBody(tombstone.Version{Path: ep, Stamp: st.String()}))
	}
	writeOn(0, ep, v2)
	writeOn(1, ep, v2)
	scan(t, tc)
	if c := tc.onDisk(t, u, "k"); !bytes.Equal(c["node1"], v2) || !bytes.Equal(c["node2"], v2) {
		t.Fatal("the scan wrote over an upload waiting for its version record")
	}
	// The record follows; the upload is acknowledged and the next scan
	// spreads it.
	sum := sha256.Sum256(v2)
	for i := range 3 {
		writeOn(i, tombstone.VersionPath(ep, st), tombstone.VersionBody(tombstone.Version{Path: ep, Stamp: st.String(), Size: int64(len(v2)), SHA256: hex.EncodeToString(sum[:])}))
	}
	scan(t, tc)
	identicalOn(t, tc, u, "k", all3, time.Second)
	if c := tc.onDisk(t, u, "k"); !bytes.Equal(c["node3"], v2) {
		t.Fatal("the acknowledged upload did not win")
	}
	// An intent older than the pending grace is an upload that died with
	// its proxy: a copy matching no record is then torn, and repaired.
	torn := bytes.Clone(v2)
	copy(torn[len(torn)/2:], "torn by an upload that never finished")
	writeOn(2, ep, torn)
	old := stamp.NewClockID("test", func() time.Time { return time.Now().Add(-heal.PendingGrace - time.Minute) }).Now()
	writeOn(2, tombstone.PendingPath(ep, old), tombstone.VersionBody(tombstone.Version{Path: ep, Stamp: old.String()}))
	scan(t, tc)
	identicalOn(t, tc, u, "k", all3, time.Second)
}

// TestFailedUploadDropsIntent: an upload whose client goes away mid-body
// leaves torn copies on stock nodes; its proxy removes the intent record,
// so the healer repairs them at once rather than after the pending grace.
func TestFailedUploadDropsIntent(t *testing.T) {
	var intents atomic.Int64
	observe := func(_ int, r *http.Request) {
		if r.Method == http.MethodPost && tombstone.IsPending(r.URL.Path) {
			intents.Add(1)
		}
	}
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2, observe: observe})
	u := tc.newUser(t)
	ep, err := u.fs.EncryptPath("k")
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		part, _ := mw.CreateFormFile("data", "k")
		_, _ = part.Write(bytes.Repeat([]byte{'x'}, 64<<10))
	}()
	req, _ := http.NewRequest(http.MethodPost, "http://"+tc.httpAddr+"/v1/fs/"+ep+"?mode=420", pr)
	req.Header.Set("Authorization", "Bearer "+u.jwt(t))
	req.Header.Set("Content-Type", mw.FormDataContentType())
	done := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("an upload cut mid-body answered %d", resp.StatusCode)
		} else {
			err = nil
		}
		done <- err
	}()
	// The intent is written before any data; then the client goes away.
	testwait.For(t, 10*time.Second, "the condition", func() bool { return intents.Load() >= 2 })
	pw.CloseWithError(errors.New("client gone mid-body"))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	testwait.For(t, 10*time.Second, "the condition", func() bool {
		for _, n := range tc.dc.Nodes {
			ents, _ := os.ReadDir(n.FilePath(u.id, tombstone.VersionDir(ep)))
			for _, e := range ents {
				if tombstone.IsPending(e.Name()) {
					return false
				}
			}
		}
		return true
	})
}

// TestCopyRacingNewerWriteStops: a stock node can't refuse an older copy.
// A repair copy of v1 that lands on a node right after an acknowledged v2
// replaces it there; the repair must then copy v1 onto no other node, or
// it could replace v2 everywhere it is (the second lost write of the stock
// chaos runs, docs/chaos.md). Here v1 is on node1 only; the first repair
// copy is held at its node's front while v2 is written, and v2's copy to
// the other missing node is held until the repair has ended (without the
// fix, until the repair's own copy arrives there, which then lands last).
func TestCopyRacingNewerWriteStops(t *testing.T) {
	var (
		mu      sync.Mutex
		ep      string
		first   = -1 // the node the repair copies onto first
		held    = make(chan struct{})
		release = sync.OnceFunc(func() { close(held) })
		posts   = map[int]int{}
		during  func() // writes v2, while the repair's first copy is held
		landed  func() // waits until v2 is on the held node
	)
	observe := func(k int, r *http.Request) {
		mu.Lock()
		if ep == "" || k == 0 || r.Method != http.MethodPost || r.URL.Path != "/v1/fs/"+ep {
			mu.Unlock()
			return
		}
		posts[k]++
		n := posts[k]
		if first == -1 {
			first = k // the repair's copy
		}
		isFirst := k == first
		mu.Unlock()
		switch {
		case isFirst && n == 1:
			during()
		case !isFirst && n == 1: // v2's copy
			<-held
		case !isFirst && n == 2: // the repair's copy, without the fix
			release()
			landed()
		}
	}
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2, heal: true, observe: observe})
	t.Cleanup(release)
	u := tc.newUser(t)
	u.put(t, "k", []byte("v1"))
	identicalOn(t, tc, u, "k", all3, 5*time.Second)
	p, err := u.fs.EncryptPath("k")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range tc.dc.Nodes[1:] {
		if err := os.Remove(n.FilePath(u.id, p)); err != nil {
			t.Fatal(err)
		}
	}
	wrote := make(chan error, 1)
	var v2 []byte
	during = func() {
		go func() { wrote <- u.fs.WriteFile("k", memFile("k", []byte("v2, acknowledged"))) }()
		if err := <-wrote; err != nil {
			t.Errorf("write v2: %v", err)
			return
		}
		v2 = tc.onDisk(t, u, "k")["node1"]
	}
	landed = func() {
		mu.Lock()
		other := 3 - first // the missing node the repair reaches second
		mu.Unlock()
		testwait.For(t, 5*time.Second, "v2 on the held node", func() bool {
			return bytes.Equal(tc.onDisk(t, u, "k")[tc.dc.Nodes[other].Name], v2)
		})
	}
	mu.Lock()
	ep = p
	mu.Unlock()
	res := tc.srv.Healer().RepairKey(context.Background(), u.id, p, false)
	release()
	mu.Lock()
	other := 3 - first
	mu.Unlock()
	if first == -1 || v2 == nil {
		t.Fatalf("the repair made no copy to race (result %+v)", res)
	}
	name := tc.dc.Nodes[other].Name
	testwait.For(t, 5*time.Second, "v2 kept on "+name+" (a repair copy of v1 must not land after it)", func() bool {
		return bytes.Equal(tc.onDisk(t, u, "k")[name], v2)
	})
	if slices.Contains(res.Copied, name) {
		t.Fatalf("the repair copied v1 onto %s after a newer write raced its first copy (result %+v)", name, res)
	}
	// The next pass spreads v2 from the copies it kept.
	scan(t, tc)
	identicalOn(t, tc, u, "k", all3, 5*time.Second)
	if got := u.get(t, "k"); string(got) != "v2, acknowledged" {
		t.Fatalf("read %q after the repair, want v2", got)
	}
}

// TestOlderWriteNeverLandsOverNewer: two proxies accept writes of one key
// in turn, A (older stamp) then B. A's data is still to be sent when B is
// stored and acknowledged: a stock node would let A's data replace B's on
// every node it reached, and B, acknowledged, would be lost (a stock chaos
// run, docs/chaos.md). A must find B's version record first and not store.
func TestOlderWriteNeverLandsOverNewer(t *testing.T) {
	for _, tt := range []struct {
		name  string
		older []byte
	}{
		{"small, its record first", []byte("A, accepted first")},
		{"streamed, its intent first", bytes.Repeat([]byte("A, accepted first, streamed "), 5000)},
	} {
		t.Run(tt.name, func(t *testing.T) { olderWriteNeverLandsOverNewer(t, tt.older) })
	}
}

func olderWriteNeverLandsOverNewer(t *testing.T, older []byte) {
	var (
		mu      sync.Mutex
		armed   bool
		first   string // A's stamp, the first version (or intent) recorded once armed
		seen    = make(chan struct{})
		saw     = sync.OnceFunc(func() { close(seen) })
		held    = make(chan struct{})
		release = sync.OnceFunc(func() { close(held) })
	)
	observe := func(_ int, r *http.Request) {
		if r.Method != http.MethodPost || !strings.Contains(r.URL.Path, "/"+tombstone.Versions+"/") {
			return
		}
		mu.Lock()
		name := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
		if armed && first == "" {
			first = name
		}
		mine := armed && name == first
		mu.Unlock()
		if mine { // A's record: held until B is stored
			saw()
			<-held
		}
	}
	o := clusterOpts{nodes: 3, replicas: 3, quorum: 2, observe: observe}
	tc := startCluster(t, o)
	t.Cleanup(release)
	p2 := tc.startProxy(o, 3, "")
	u := tc.newUser(t)
	jwt := u.jwt(t)
	post := func(addr, data string) (int, string) {
		var body bytes.Buffer
		mw := multipart.NewWriter(&body)
		part, _ := mw.CreateFormFile("data", "k")
		_, _ = part.Write([]byte(data))
		_ = mw.Close()
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/fs/k?mode=420", &body)
		req.Header.Set("Authorization", "Bearer "+jwt)
		req.Header.Set("Content-Type", mw.FormDataContentType())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	mu.Lock()
	armed = true
	mu.Unlock()
	type answer struct {
		status int
		body   string
	}
	a := make(chan answer, 1)
	go func() { s, b := post(tc.httpAddr, string(older)); a <- answer{s, b} }()
	<-seen
	if s, b := post(p2.httpAddr, "B, accepted second"); s != http.StatusOK {
		t.Fatalf("B: %d %s", s, b)
	}
	release()
	if got := <-a; got.status == http.StatusOK {
		t.Errorf("A, older than the stored B, was acknowledged: its data may have replaced B's")
	} else {
		t.Logf("A: %d %s", got.status, got.body)
	}
	for _, addr := range []string{tc.httpAddr, p2.httpAddr} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/v1/fs/k", nil)
		req.Header.Set("Authorization", "Bearer "+jwt)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(b) != "B, accepted second" {
			t.Errorf("read through %s: %d %q, want B's acknowledged write", addr, resp.StatusCode, b)
		}
	}
}
