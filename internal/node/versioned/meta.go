package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	jose "gopkg.in/square/go-jose.v2"

	"github.com/cring-dev/cring/internal/auth"
	"github.com/cring-dev/cring/internal/token"
	"github.com/cring-dev/cring/internal/tombstone"
)

// MetaPath is the route of the metadata endpoint.
const MetaPath = "/v1/cring/meta/"

// Meta is a file's exact metadata on one node.
type Meta struct {
	Size   int64     `json:"size"`
	MTime  time.Time `json:"mtime"` // nanoseconds
	SHA256 string    `json:"sha256"`
}

// MetaHandler serves GET /v1/cring/meta/<path>: the exact size, modification
// time and SHA-256 of the caller's file, computed on the node, so the healer
// compares replicas without pulling every copy over the network. The caller
// authenticates like any Charm client (a token this node's key signed for
// the cluster's public URL); the path is within the token subject's files.
func MetaHandler(filesDir string, signer *token.Signer, issuer string) http.Handler {
	set := &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{signer.JWK()}}
	v := auth.NewVerifier(func(context.Context) (*jose.JSONWebKeySet, string, error) { return set, issuer, nil }, issuer)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reply := func(status int, v any) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_ = json.NewEncoder(w).Encode(v)
		}
		if r.Method != http.MethodGet || !strings.HasPrefix(r.URL.Path, MetaPath) {
			reply(http.StatusNotFound, map[string]string{"message": "not found"})
			return
		}
		user, err := v.Verify(r.Context(), r.Header.Get("Authorization"))
		if err != nil {
			reply(http.StatusUnauthorized, map[string]string{"message": err.Error()})
			return
		}
		if user == "" || strings.ContainsAny(user, `/\`) || user == "." || user == ".." {
			reply(http.StatusBadRequest, map[string]string{"message": "bad subject"})
			return
		}
		// Cleaned as rooted, so it can't climb out of the user's directory.
		p := filepath.Join(filesDir, user, filepath.FromSlash(tombstone.Clean(strings.TrimPrefix(r.URL.Path, MetaPath))))
		m, err := fileMeta(p)
		if errors.Is(err, os.ErrNotExist) {
			reply(http.StatusNotFound, map[string]string{"message": "file not found"})
			return
		}
		if err != nil {
			reply(http.StatusInternalServerError, map[string]string{"message": err.Error()})
			return
		}
		reply(http.StatusOK, m)
	})
}

func fileMeta(p string) (Meta, error) {
	f, err := os.Open(p)
	if err != nil {
		return Meta{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Meta{}, err
	}
	if st.IsDir() {
		return Meta{}, os.ErrNotExist
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return Meta{}, err
	}
	return Meta{Size: st.Size(), MTime: st.ModTime(), SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}
