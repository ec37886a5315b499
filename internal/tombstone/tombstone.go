// Package tombstone names the records that keep an acknowledged delete from
// coming back. A tombstone is a small file in the user's own namespace on the
// nodes, under a directory Charm clients can never create (their path
// segments are hex-encoded ciphertext), so it is replicated like any file and
// shared by every proxy. Its modification time on a node is the delete's
// time; a copy of the file no newer than that is dead.
package tombstone

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"path"
	"strings"
	"time"
)

// Root is cring's reserved directory in every user's namespace.
const Root = ".cring"

// Dir holds one tombstone per deleted path.
const Dir = Root + "/tombstones"

// Mode is the file mode tombstones are stored with.
const Mode = 0o600

// Path is the tombstone file for a user's path (cleaned, no leading slash).
func Path(p string) string { return Dir + "/" + Name(p) }

// Name is the tombstone's file name for a path.
func Name(p string) string {
	sum := sha256.Sum256([]byte(Clean(p)))
	return hex.EncodeToString(sum[:])
}

// Clean normalizes a path the way placement keys do.
func Clean(p string) string { return strings.TrimPrefix(path.Clean("/"+p), "/") }

// Reserved reports whether a path is cring's own (clients may not touch it).
func Reserved(p string) bool {
	c := Clean(p)
	return c == Root || strings.HasPrefix(c, Root+"/")
}

// Record is a tombstone's content, for operators and garbage collection.
type Record struct {
	Path    string    `json:"path"`
	Deleted time.Time `json:"deleted"`
}

// Body encodes a tombstone for path deleted at t.
func Body(p string, t time.Time) []byte {
	b, _ := json.Marshal(Record{Path: Clean(p), Deleted: t.UTC()})
	return b
}
