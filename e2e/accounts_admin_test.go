package e2e

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/charmbracelet/keygen"
	"github.com/cring-dev/cring/internal/pgtest"
)

// TestAccountsAdminCLIErrors: `cring accounts add/list/remove` refuse bad
// input with one clear line and exit status 2, and change nothing.
func TestAccountsAdminCLIErrors(t *testing.T) {
	pg := pgtest.Start(t)
	dir := t.TempDir()
	pub := func(name string) string {
		if _, err := keygen.New(filepath.Join(dir, name), keygen.WithKeyType(keygen.Ed25519), keygen.WithWrite()); err != nil {
			t.Fatal(err)
		}
		return filepath.Join(dir, name+".pub")
	}
	alice, bob := pub("alice"), pub("bob")
	if out, errOut, code := runCring(t, "accounts", "add", alice, "--name", "alice", "--accounts", pg); code != 0 {
		t.Fatalf("add alice: %d %s %s", code, out, errOut)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string // in stderr
	}{
		{"no store", []string{"accounts", "add", bob}, "need --accounts postgres://"},
		{"not postgres", []string{"accounts", "list", "--accounts", "mysql://x"}, "want a postgres:// URL"},
		{"bad name", []string{"accounts", "add", bob, "--name", "bob smith", "--accounts", pg}, "1 to 50 letters and digits"},
		{"not a key", []string{"accounts", "add", filepath.Join(dir, "alice"), "--accounts", pg}, "not a public key"},
		{"name taken", []string{"accounts", "add", bob, "--name", "ALICE", "--accounts", pg}, `name "ALICE" is taken by 2 charm IDs`},
		{"alice's key for a new account", []string{"accounts", "add", bob, alice, "--accounts", pg}, "refusing to add: 1 conflict, nothing changed"},
		{"unknown account", []string{"accounts", "add", bob, "--id", "nope", "--accounts", pg}, "no such account: nope"},
		{"unknown key", []string{"accounts", "remove", bob, "--accounts", pg}, "no account has the charm ID or key"},
		{"the last key", []string{"accounts", "remove", alice, "--accounts", pg}, "is the last key of"},
		{"purge without all-keys", []string{"accounts", "remove", alice, "--purge", "--accounts", pg}, "--purge deletes an account's files: it needs --all-keys"},
		{"purge without proxy", []string{"accounts", "remove", alice, "--all-keys", "--purge", "--accounts", pg}, "need --proxy URL and --server-key PATH"},
		{"dry run on postgres", []string{"accounts", "add", bob, "--dry-run", "--accounts", pg}, "--dry-run is for --sqlite"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runCring(t, tc.args...)
			if code != 2 || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d, stderr %q (stdout %q); want 2 and %q", code, errOut, out, tc.want)
			}
		})
	}
	// Nothing changed: alice alone, with her one key.
	out, _, code := runCring(t, "accounts", "list", "--accounts", pg)
	if code != 0 || !strings.Contains(out, "1 account") || !strings.Contains(out, "alice") {
		t.Fatalf("list after the refusals: %d %s", code, out)
	}
	// An account named by its charm ID needs --all-keys.
	id := strings.Fields(strings.SplitN(out, "\n", 3)[2])[0]
	if _, errOut, code := runCring(t, "accounts", "remove", id, "--accounts", pg); code != 2 || !strings.Contains(errOut, "pass --all-keys to remove the whole account") {
		t.Fatalf("remove by charm ID without --all-keys: %d %s", code, errOut)
	}
}
