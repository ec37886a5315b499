package versioned

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/charmbracelet/keygen"

	"github.com/cring-dev/cring/internal/node/filestore"
	"github.com/cring-dev/cring/internal/stamp"
	"github.com/cring-dev/cring/internal/token"
)

func newTestSigner(t *testing.T) *token.Signer {
	t.Helper()
	kp, err := keygen.New(filepath.Join(t.TempDir(), "k"), keygen.WithKeyType(keygen.Ed25519))
	if err != nil {
		t.Fatal(err)
	}
	s, err := token.NewSigner(kp.RawPrivateKey())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func hexSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestMetaHandler(t *testing.T) {
	const iss = "http://proxy.test:35354"
	data := t.TempDir()
	store, err := filestore.Open(data, filestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := store.FilesDir()
	node, stranger := newTestSigner(t), newTestSigner(t)
	legacy := []byte("written by stock charm")
	os.MkdirAll(filepath.Join(dir, "alice", "a"), 0o700)
	os.WriteFile(filepath.Join(dir, "alice", "a", "f"), legacy, 0o600)
	os.MkdirAll(filepath.Join(dir, "bob"), 0o700)
	os.WriteFile(filepath.Join(dir, "bob", "secret"), []byte("bob's"), 0o600)

	s1, s2 := testStamp(1), testStamp(2)
	good := []byte("opaque ciphertext, stamped")
	mustWrite(t, store, "alice", "v/good", s1, good)
	mustWrite(t, store, "alice", "v/rot", s1, good)
	rot := filepath.Join(dir, "alice", "v", "rot")
	st, _ := os.Stat(rot)
	flipped := bytes.Clone(good)
	flipped[3] ^= 0x40
	os.WriteFile(rot, flipped, 0o600) // in place: same size, same mtime, same xattrs
	os.Chtimes(rot, st.ModTime(), st.ModTime())
	mustWrite(t, store, "alice", "v/short", s1, good)
	os.WriteFile(filepath.Join(dir, "alice", "v", "short"), good[:5], 0o600)
	if err := store.Remove("alice", "gone/dir", s2); err != nil {
		t.Fatal(err)
	}

	srv := httptest.NewServer(MetaHandler(store, node, iss))
	t.Cleanup(srv.Close)
	tok := func(s *token.Signer, user, issuer string) string {
		j, err := s.Sign(user, issuer, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return j
	}
	alice := tok(node, "alice", iss)
	for _, tt := range []struct {
		name, path, token string
		status            int
		want              Meta   // checked when status is 200 (MTime: only non-zero)
		deleted           string // "deleted" of a 404
	}{
		{name: "unrecorded file is hashed", path: "a/f", token: alice, status: 200, want: Meta{Size: int64(len(legacy)), SHA256: hexSum(legacy)}},
		{name: "stamped file", path: "v/good", token: alice, status: 200, want: Meta{Size: int64(len(good)), SHA256: hexSum(good), Stamp: s1.String()}},
		{name: "verified intact", path: "v/good?verify=1", token: alice, status: 200, want: Meta{Size: int64(len(good)), SHA256: hexSum(good), Stamp: s1.String()}},
		{name: "rot unseen without verify", path: "v/rot", token: alice, status: 200, want: Meta{Size: int64(len(good)), SHA256: hexSum(good), Stamp: s1.String()}},
		{name: "rot found by verify", path: "v/rot?verify=1", token: alice, status: 200, want: Meta{Size: int64(len(good)), SHA256: hexSum(flipped), Stamp: s1.String(), Corrupt: true}},
		{name: "truncation found without verify", path: "v/short", token: alice, status: 200, want: Meta{Size: 5, SHA256: hexSum(good[:5]), Stamp: s1.String(), Corrupt: true}},
		{name: "deleted", path: "gone/dir/x", token: alice, status: 404, deleted: s2.String()},
		{name: "missing", path: "a/nope", token: alice, status: 404},
		{name: "a directory", path: "a", token: alice, status: 404},
		{name: "climbing out", path: "../bob/secret", token: alice, status: 404},
		{name: "foreign key", path: "a/f", token: tok(stranger, "alice", iss), status: 401},
		{name: "wrong issuer", path: "a/f", token: tok(node, "alice", "http://evil"), status: 401},
		{name: "no token", path: "a/f", status: 401},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, srv.URL+MetaPath+tt.path, nil)
			if tt.token != "" {
				req.Header.Set("Authorization", "bearer "+tt.token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.status)
			}
			if tt.status == 404 {
				var m struct{ Message, Deleted string }
				json.NewDecoder(resp.Body).Decode(&m)
				if m.Message != "file not found" && m.Message != "not found" || m.Deleted != tt.deleted {
					t.Fatalf("404 %+v, want deleted %q", m, tt.deleted)
				}
				return
			}
			if tt.status != 200 {
				return
			}
			var m Meta
			if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
				t.Fatal(err)
			}
			if m.MTime.IsZero() {
				t.Fatal("no mtime")
			}
			m.MTime = time.Time{}
			if m != tt.want {
				t.Fatalf("meta %+v\nwant %+v", m, tt.want)
			}
		})
	}
}

// stampBase keeps test stamps recent: tombstones expire after a grace period.
var stampBase = time.Now().Add(-time.Hour).Truncate(time.Second)

// testStamp is a stamp n seconds after stampBase, from proxy "t".
func testStamp(n int) stamp.Stamp {
	return stamp.Stamp{Wall: stampBase.Add(time.Duration(n) * time.Second).UnixNano(), Proxy: "t"}
}

func mustWrite(t *testing.T, s *filestore.Store, user, p string, st stamp.Stamp, b []byte) {
	t.Helper()
	if _, _, err := s.Write(user, p, st, 0o600, bytes.NewReader(b)); err != nil {
		t.Fatalf("write %s: %v", p, err)
	}
}
