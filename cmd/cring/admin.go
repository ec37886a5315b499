package main

import (
	"net/http"

	"github.com/spf13/pflag"
)

// adminTokenFlag adds --admin-token (CRING_ADMIN_TOKEN) to a command that
// talks to a proxy's admin address.
func adminTokenFlag(fl *pflag.FlagSet, p *string) {
	fl.StringVar(p, "admin-token", "", "the proxy's admin token (cring serve --admin-token), sent as a bearer token; better in CRING_ADMIN_TOKEN than on a command line")
}

// withAdminToken sends token, if any, as the admin API wants it.
func withAdminToken(req *http.Request, token string) {
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
}

// adminTokenHint says what to do about an admin answer of 401.
const adminTokenHint = "the admin address wants its token: give --admin-token or CRING_ADMIN_TOKEN (cring serve's admin-token)"
