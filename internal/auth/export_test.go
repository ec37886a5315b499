package auth

import "time"

// SetNow gives the external tests the verifier's clock: the key set's
// refetch interval is decided by it, and a test must not sleep through one.
func SetNow(v *Verifier, now func() time.Time) { v.now = now }
