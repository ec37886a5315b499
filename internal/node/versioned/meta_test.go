package node

import (
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

	"github.com/cring-dev/cring/internal/token"
)

func TestMetaHandler(t *testing.T) {
	const iss = "http://proxy.test:35354"
	dir := t.TempDir()
	newSigner := func() *token.Signer {
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
	node, stranger := newSigner(), newSigner()
	data := []byte("opaque ciphertext")
	os.MkdirAll(filepath.Join(dir, "alice", "a"), 0o700)
	os.WriteFile(filepath.Join(dir, "alice", "a", "f"), data, 0o600)
	os.MkdirAll(filepath.Join(dir, "bob"), 0o700)
	os.WriteFile(filepath.Join(dir, "bob", "secret"), []byte("bob's"), 0o600)
	srv := httptest.NewServer(MetaHandler(dir, node, iss))
	t.Cleanup(srv.Close)
	tok := func(s *token.Signer, user, issuer string) string {
		j, err := s.Sign(user, issuer, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return j
	}
	sum := sha256.Sum256(data)
	for _, tt := range []struct {
		name, path, token string
		status            int
	}{
		{"own file", "a/f", tok(node, "alice", iss), 200},
		{"missing", "a/nope", tok(node, "alice", iss), 404},
		{"a directory", "a", tok(node, "alice", iss), 404},
		{"climbing out", "../bob/secret", tok(node, "alice", iss), 404},
		{"foreign key", "a/f", tok(stranger, "alice", iss), 401},
		{"wrong issuer", "a/f", tok(node, "alice", "http://evil"), 401},
		{"no token", "a/f", "", 401},
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
			if tt.status != 200 {
				return
			}
			var m Meta
			if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
				t.Fatal(err)
			}
			if m.Size != int64(len(data)) || m.SHA256 != hex.EncodeToString(sum[:]) || m.MTime.IsZero() {
				t.Fatalf("meta %+v", m)
			}
		})
	}
}
