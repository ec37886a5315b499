package e2e

import (
	"fmt"
	"os"
	"testing"
)

// TestMain gives the tests, the in-process Charm nodes and every process they
// start a temporary directory of their own, removed at the end: charm parses
// uploads larger than 32 MiB into temporary files it never removes, so each
// run would otherwise leave gigabytes in /tmp.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cring-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e temp dir:", err)
		os.Exit(1)
	}
	// Like /tmp: the PostgreSQL the tests start runs as another user.
	if err := os.Chmod(dir, 0o1777); err != nil {
		fmt.Fprintln(os.Stderr, "e2e temp dir:", err)
		os.Exit(1)
	}
	os.Setenv("TMPDIR", dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
