package accounts

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// Administration of a closed server (cring node --closed), where only an
// administrator creates accounts: the types every store's add, list and
// remove share.

// Account is one account as an administrator sees it.
type Account struct {
	CharmID   string       `json:"charm_id"`
	Name      string       `json:"name,omitempty"`
	CreatedAt *time.Time   `json:"created_at,omitempty"`
	Keys      []AccountKey `json:"keys"`
	// Bytes stored under the charm ID, when known (-1: unknown).
	Bytes int64 `json:"bytes"`
}

// AccountKey is one public key of an account.
type AccountKey struct {
	Key         string     `json:"key"`         // charm's form: "<type> <base64>"
	Fingerprint string     `json:"fingerprint"` // SHA256:…, as ssh-keygen -l prints it
	CreatedAt   *time.Time `json:"created_at,omitempty"`
}

// NewAccount asks for an account with Keys: a new one (a fresh charm ID)
// unless CharmID names an existing account to add them to.
type NewAccount struct {
	CharmID string
	Name    string
	Keys    []string // charm's form, see ParseKeys
}

// AddResult is what adding did.
type AddResult struct {
	CharmID string   `json:"charm_id"`
	Created bool     `json:"created"`           // a new account
	Added   []string `json:"added,omitempty"`   // fingerprints of keys added
	Already []string `json:"already,omitempty"` // fingerprints it already had
	Named   bool     `json:"named,omitempty"`   // the name was set
	Store   string   `json:"store,omitempty"`
}

// Errors of the administration calls, for exit statuses and messages.
var (
	ErrNoAccount = errors.New("no such account")
	ErrNoKey     = errors.New("no account has this key")
	ErrLastKey   = errors.New("it is the account's last key")
)

// ParseKeys reads public keys in authorized_keys form (what `ssh-keygen`
// writes to a .pub file; several lines, comments and options allowed) and
// returns them in charm's stored form, "<type> <base64>", which is what a
// key is looked up by when it logs in.
func ParseKeys(r io.Reader, source string) ([]string, error) {
	var keys []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 || b[0] == '#' {
			continue
		}
		pk, _, _, _, err := gossh.ParseAuthorizedKey(b)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: not a public key: %w", source, line, err)
		}
		keys = append(keys, FormatKey(pk))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s: no public key in it", source)
	}
	return keys, nil
}

// FormatKey is a key in charm's stored form: type, space, base64; no comment.
func FormatKey(pk gossh.PublicKey) string {
	b := gossh.MarshalAuthorizedKey(pk)
	return strings.TrimSuffix(string(b), "\n")
}

// Fingerprint is a stored key's SHA256 fingerprint, or the key's start
// when it does not parse.
func Fingerprint(key string) string {
	pk, _, _, _, err := gossh.ParseAuthorizedKey([]byte(key))
	if err != nil {
		return keyShort(key)
	}
	return gossh.FingerprintSHA256(pk)
}

// MatchKey reports whether a stored key is the one an administrator named:
// the key itself (charm's form) or its SHA256 fingerprint.
func MatchKey(stored, named string) bool {
	if strings.HasPrefix(named, "SHA256:") {
		return Fingerprint(stored) == named
	}
	return stored == named
}

// KeyShort is a key's type and end, to recognize it by eye.
func KeyShort(key string) string { return keyShort(key) }

// SameName compares names as charm does (ignoring ASCII case).
func SameName(a, b string) bool { return foldName(a) == foldName(b) }
