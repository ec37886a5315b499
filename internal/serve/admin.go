package serve

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"

	"github.com/cring-dev/cring/internal/heal"
)

// The admin endpoint is for operators (docs/design.md, "bounded for every
// client"): it listens on loopback unless an admin token is set (config
// refuses otherwise), and with a token every route but the health checks
// and the aggregate /status needs it. User IDs and paths are shown only to
// a request carrying the token.

// openAdmin are the routes a load balancer or a probe may read without the
// token: health, and /status without anything that names a user.
var openAdmin = map[string]bool{"/healthz": true, "/readyz": true, "/status": true}

type adminAuthKey struct{}

// adminHandler checks the admin token in front of the admin routes.
func (s *Server) adminHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		authed, presented := s.adminAuthorized(r)
		if presented && !authed {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "wrong admin token"})
			return
		}
		if !authed && s.cfg.AdminToken != "" && !openAdmin[r.URL.Path] {
			w.Header().Set("WWW-Authenticate", `Bearer realm="cring admin"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "admin token required: send Authorization: Bearer <admin-token>"})
			return
		}
		s.admin.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), adminAuthKey{}, authed)))
	})
}

// adminAuthorized reports whether r carries the configured admin token,
// and whether it carries a bearer token at all.
func (s *Server) adminAuthorized(r *http.Request) (authed, presented bool) {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(r.Header.Get("Authorization")), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || s.cfg.AdminToken == "" {
		return false, false // no token configured: one sent changes nothing
	}
	// Hashes of equal length: the comparison takes the same time whatever
	// the token's length or contents.
	a, b := sha256.Sum256([]byte(strings.TrimSpace(tok))), sha256.Sum256([]byte(s.cfg.AdminToken))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1, true
}

// adminAuthed reports whether the request carried the admin token.
func adminAuthed(r *http.Request) bool {
	v, _ := r.Context().Value(adminAuthKey{}).(bool)
	return v
}

// aggregateHeal is the healer's status without what names a user: the last
// scan's fixes (user and path) and largest users, the scrub's position.
func aggregateHeal(st heal.Status) heal.Status {
	if st.LastScan != nil {
		r := *st.LastScan
		r.Fixes, r.UserUsage = nil, nil
		st.LastScan = &r
	}
	if st.Scrub != nil {
		sc := *st.Scrub
		sc.User = ""
		st.Scrub = &sc
	}
	return st
}
