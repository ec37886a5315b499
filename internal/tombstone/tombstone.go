// Package tombstone names the records that keep an acknowledged delete from
// coming back. A tombstone is a small file in the user's own namespace on the
// nodes, under a directory Charm clients can never create (their path
// segments are hex-encoded ciphertext), so it is replicated like any file and
// shared by every proxy. Its body holds the delete's stamp (package stamp):
// a copy of the path, or of anything under it, with an older stamp is dead.
// A node's modification time of the tombstone means nothing (a repair copy
// renews it), so it is never read. Version records (under Versions) name the
// stamp, size and SHA-256 of a path's newest write, for nodes that cannot
// keep stamps themselves (stock charm serve). See docs/design.md, "Versions".
package tombstone

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/cring-dev/cring/internal/stamp"
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

// Versions holds version records (stock nodes): a directory per path, a
// file per version, named by its stamp. Each record is written once and
// never changed, so no write reads another's record first.
const Versions = Root + "/versions"

// VersionDir is the directory of a user's path's version records.
func VersionDir(p string) string { return Versions + "/" + Name(p) }

// VersionPath is the record of one version of a path.
func VersionPath(p string, s stamp.Stamp) string { return VersionDir(p) + "/" + s.String() }

// PendingPath is the intent record of a streamed upload, written before its
// data (whose checksum is known only at the end) and superseded by the
// version record at VersionPath once the upload is stored: until then a
// copy matching no record may be that upload, not a torn or late one.
func PendingPath(p string, s stamp.Stamp) string { return VersionPath(p, s) + pendingSuffix }

const pendingSuffix = ".pending"

// IsPending reports whether a file name in a version directory is an
// intent record.
func IsPending(name string) bool { return strings.HasSuffix(name, pendingSuffix) }

// RecordName is the stamp a version directory's file name carries, and
// whether the file is an intent record.
func RecordName(name string) (s stamp.Stamp, pending bool, err error) {
	base, pending := strings.CutSuffix(name, pendingSuffix)
	s, err = stamp.Parse(base)
	return s, pending, err
}

// Record is a tombstone's content: the path deleted (with everything under
// it, when it was a directory) and the delete's stamp.
type Record struct {
	Path    string    `json:"path"`
	Stamp   string    `json:"stamp,omitempty"` // absent in tombstones written before stamps
	Deleted time.Time `json:"deleted"`         // the stamp's wall time, for operators
}

// Body encodes a tombstone for path deleted at stamp s.
func Body(p string, s stamp.Stamp) []byte {
	b, _ := json.Marshal(Record{Path: Clean(p), Stamp: s.String(), Deleted: s.Time().UTC()})
	return b
}

// ParseBody decodes a tombstone and returns its stamp. A tombstone from
// before stamps existed gets stamp.Legacy of its recorded deletion time.
func ParseBody(b []byte) (Record, stamp.Stamp, error) {
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return r, stamp.Stamp{}, fmt.Errorf("tombstone: %w", err)
	}
	if r.Stamp == "" {
		if r.Deleted.IsZero() {
			return r, stamp.Stamp{}, fmt.Errorf("tombstone for %q: no stamp and no time", r.Path)
		}
		return r, stamp.Legacy(r.Deleted), nil
	}
	s, err := stamp.Parse(r.Stamp)
	return r, s, err
}

// Version is a version record: what the newest write of a path stored.
type Version struct {
	Path   string `json:"path"`
	Stamp  string `json:"stamp"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// VersionBody encodes a version record.
func VersionBody(v Version) []byte {
	v.Path = Clean(v.Path)
	b, _ := json.Marshal(v)
	return b
}

// ParseVersion decodes a version record and its stamp.
func ParseVersion(b []byte) (Version, stamp.Stamp, error) {
	var v Version
	if err := json.Unmarshal(b, &v); err != nil {
		return v, stamp.Stamp{}, fmt.Errorf("version record: %w", err)
	}
	s, err := stamp.Parse(v.Stamp)
	if err == nil && s.IsZero() {
		err = fmt.Errorf("version record for %q: no stamp", v.Path)
	}
	return v, s, err
}

// Covering lists the paths whose tombstone covers p: p itself and every
// directory above it, nearest first. Deleting a directory deletes the tree.
func Covering(p string) []string {
	c := Clean(p)
	var out []string
	for c != "" && c != "." {
		out = append(out, c)
		i := strings.LastIndex(c, "/")
		if i < 0 {
			break
		}
		c = c[:i]
	}
	return out
}
