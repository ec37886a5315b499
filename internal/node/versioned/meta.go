package versioned

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"strings"
	"time"

	jose "gopkg.in/square/go-jose.v2"

	"github.com/cring-dev/cring/internal/auth"
	"github.com/cring-dev/cring/internal/node/filestore"
	"github.com/cring-dev/cring/internal/token"
)

// MetaPath is the route of the metadata endpoint.
const MetaPath = "/v1/cring/meta/"

// Meta is a file's exact metadata on one node.
type Meta struct {
	Size   int64     `json:"size"`
	MTime  time.Time `json:"mtime"` // nanoseconds
	SHA256 string    `json:"sha256"`
	// Stamp is the version's stamp ("" for an unstamped file).
	Stamp string `json:"stamp,omitempty"`
	// Corrupt: the content no longer matches the SHA-256 recorded when it
	// was written (then SHA256 is the content's, as read now).
	Corrupt bool `json:"corrupt,omitempty"`
}

// MetaHandler serves GET /v1/cring/meta/<path>: the size, modification
// time, stamp and SHA-256 of the caller's file, so the healer compares
// replicas without pulling every copy over the network. The SHA-256 is the
// one recorded when the version was written; ?verify=1 reads the file and
// hashes it again, and reports "corrupt" when it no longer matches (a
// file written by stock charm, with nothing recorded, is always hashed).
// A path with no file that a delete covers answers 404 with the delete's
// stamp in "deleted". The caller authenticates like any Charm client (a
// token this node's key signed for the cluster's public URL); the path is
// within the token subject's files.
func MetaHandler(store *filestore.Store, signer *token.Signer, issuer string) http.Handler {
	set := &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{signer.JWK()}}
	v := auth.NewVerifier(func(context.Context) (*jose.JSONWebKeySet, string, error) { return set, issuer, nil }, issuer)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The path as sent, escaped, as the file API stores it (fs.go).
		if r.Method != http.MethodGet || !strings.HasPrefix(r.URL.EscapedPath(), MetaPath) {
			reply(w, http.StatusNotFound, message{Message: "not found"})
			return
		}
		user, err := v.Verify(r.Context(), r.Header.Get("Authorization"))
		if err != nil {
			reply(w, http.StatusUnauthorized, message{Message: err.Error()})
			return
		}
		if user == "" || strings.ContainsAny(user, `/\`) || user == "." || user == ".." {
			reply(w, http.StatusBadRequest, message{Message: "bad subject"})
			return
		}
		p := strings.TrimPrefix(r.URL.EscapedPath(), MetaPath) // cleaned as rooted by the store
		m, err := fileMeta(store, user, p, r.URL.Query().Get("verify") == "1")
		if errors.Is(err, fs.ErrNotExist) {
			nf := message{Message: "file not found"}
			if t, ok, err := store.Deleted(user, p); err == nil && ok {
				nf.Deleted = t.String()
			}
			reply(w, http.StatusNotFound, nf)
			return
		}
		if err != nil {
			reply(w, http.StatusInternalServerError, message{Message: err.Error()})
			return
		}
		reply(w, http.StatusOK, m)
	})
}

func fileMeta(store *filestore.Store, user, p string, verify bool) (Meta, error) {
	e, err := store.Open(user, p)
	if err != nil {
		return Meta{}, err
	}
	if e.File == nil {
		return Meta{}, fs.ErrNotExist // a directory
	}
	defer e.File.Close()
	v := e.Version
	m := Meta{Size: e.Info.Size(), MTime: e.Info.ModTime(), SHA256: v.SHA256, Stamp: v.Stamp.String()}
	// A size that differs from the recorded one is rot too, found for free.
	if !verify && v.SHA256 != "" && (v.Size < 0 || v.Size == m.Size) {
		return m, nil
	}
	sum, n, err := filestore.Hash(e.File)
	if err != nil {
		return Meta{}, fmt.Errorf("hash %s: %w", p, err)
	}
	m.SHA256 = sum
	m.Corrupt = v.SHA256 != "" && (sum != v.SHA256 || v.Size >= 0 && n != v.Size)
	return m, nil
}
