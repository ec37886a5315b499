// Package backup keeps a copy of every file a cring cluster stores in a
// backup target: an S3-compatible bucket (MinIO, AWS S3, Garage… through
// minio-go) or a local directory (file:///dir).
//
// Object keys are the proxy's placement keys, "<charmID>/<path>", and the
// bytes are exactly what the nodes store: the client-side encrypted file,
// never plaintext. A file's mode and modification time travel as object
// metadata (S3) or a sidecar (file://).
//
// The package also holds the pieces the proxy's write path needs:
// ExtractUpload pulls the file out of a Charm upload as it streams by, and
// Queue is the durable local queue that carries uploads and deletes to the
// target while it is slow or down.
package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path"
	"strings"
	"time"
)

// Errors callers tell apart with errors.Is.
var (
	// ErrNotFound: no object at that key (or version).
	ErrNotFound = errors.New("backup: object not found")
	// ErrVersioningUnsupported: the target cannot keep history (file://).
	ErrVersioningUnsupported = errors.New("versioning needs an S3 bucket: a file:// target keeps only the latest copy")
	// ErrNotVersioned: the bucket has never had versioning enabled, so it
	// holds no history to restore from.
	// ErrUnreachable: the endpoint could not be reached at all. Open then
	// returns the target along with the error, so a caller with a durable
	// queue can start and catch up later.
	ErrUnreachable  = errors.New("unreachable")
	ErrNotVersioned = errors.New("bucket versioning is not enabled (run `cring backup init`); it holds no history to restore from")
)

// Config says where backups go.
type Config struct {
	// URL is file:///abs/dir or an S3 endpoint, http(s)://host[:port].
	URL string
	// Bucket is required for S3 endpoints; ignored for file://.
	Bucket string
	// Region of the bucket (S3); default us-east-1.
	Region string
	// AccessKey and SecretKey default to AWS_ACCESS_KEY_ID and
	// AWS_SECRET_ACCESS_KEY, as in the prototype.
	AccessKey, SecretKey string
	// PathStyle forces path-style bucket lookup (http://host/bucket/key).
	// It is also used when the endpoint host is an IP address or localhost.
	PathStyle bool
	// ProbeTimeout bounds the checks Open makes; default 10s.
	ProbeTimeout time.Duration
}

// DefaultRegion is used when Config.Region is empty.
const DefaultRegion = "us-east-1"

// Meta travels with an object.
type Meta struct {
	Mode    fs.FileMode // the ?mode= of the upload
	ModTime time.Time   // when the write was accepted
}

// Object describes a stored object (or, in a non-recursive listing, a
// directory).
type Object struct {
	Key     string      // <charmID>/<path>, never with a trailing slash
	Size    int64       // bytes
	ModTime time.Time   // Meta.ModTime when known, else when it was stored
	Mode    fs.FileMode // Meta.Mode; 0 when unknown (S3 listings don't carry metadata)
	IsDir   bool        // a common prefix in a non-recursive listing
	// VersionID identifies the version in a versioned bucket (ListAsOf,
	// GetVersion); empty otherwise.
	VersionID string
	// Stored is when the target stored it (S3 LastModified, file mtime).
	Stored time.Time
}

// Name is the last element of the key, as a Charm directory listing shows it.
func (o Object) Name() string { return path.Base(o.Key) }

// Target is where backups are kept. Keys are "<charmID>/<path>" with no
// leading or trailing slash. Every method honours ctx.
type Target interface {
	// Put stores size bytes from r under key. size must be exact: S3
	// buffers a whole part in memory when it isn't known. Pass an *os.File
	// (an io.ReaderAt) to keep memory flat for large objects.
	Put(ctx context.Context, key string, r io.Reader, size int64, meta Meta) error
	// Get opens the current object at key; errors.Is(err, ErrNotFound)
	// when there is none. The caller closes the reader.
	Get(ctx context.Context, key string) (io.ReadCloser, Object, error)
	// Stat describes the current object at key without its bytes.
	Stat(ctx context.Context, key string) (Object, error)
	// Delete removes key and, like a Charm DELETE of a directory,
	// everything under key + "/". Deleting nothing is not an error.
	Delete(ctx context.Context, key string) error
	// List returns the objects whose keys start with prefix (a raw key
	// prefix, as in S3), sorted by key. With recursive false it lists one
	// level like a directory listing: keys are cut at the next "/" after
	// the prefix, which become IsDir entries. Pass "<charmID>/<dir>/" to
	// list a directory.
	List(ctx context.Context, prefix string, recursive bool) ([]Object, error)
	// EnableVersioning turns on bucket versioning so deletes and
	// overwrites keep history.
	EnableVersioning(ctx context.Context) error
	// ListAsOf returns, recursively under prefix, the version of every key
	// that was current at time at (deleted keys left out), with VersionID
	// set for GetVersion. ErrNotVersioned or ErrVersioningUnsupported when
	// the target keeps no history.
	ListAsOf(ctx context.Context, prefix string, at time.Time) ([]Object, error)
	// GetVersion opens one version of key.
	GetVersion(ctx context.Context, key, versionID string) (io.ReadCloser, Object, error)
	// String names the target for messages and logs (no credentials).
	String() string
}

// Open connects to the target cfg describes and checks it: a missing bucket
// (or directory) is created, and an unreachable endpoint or rejected
// credentials fail here with a one-line message.
func Open(ctx context.Context, cfg Config) (Target, error) {
	if cfg.URL == "" {
		return nil, errors.New("no backup target: give --backup-url (file:///dir or http(s)://host:port)")
	}
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("backup-url %q: %w", cfg.URL, err)
	}
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = 10 * time.Second
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("backup-url %q: want file:///absolute/dir (three slashes)", cfg.URL)
		}
		return openDir(u.Path)
	case "http", "https":
		return openS3(ctx, u, cfg)
	default:
		return nil, fmt.Errorf("backup-url %q: want file:///dir or an http(s):// S3 endpoint", cfg.URL)
	}
}

// credentials fills keys from the environment, as the prototype did.
func (c *Config) credentials() error {
	if c.AccessKey == "" {
		c.AccessKey = os.Getenv("AWS_ACCESS_KEY_ID")
	}
	if c.SecretKey == "" {
		c.SecretKey = os.Getenv("AWS_SECRET_ACCESS_KEY")
	}
	if c.AccessKey == "" || c.SecretKey == "" {
		return errors.New("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
	}
	return nil
}

// checkKey refuses keys that could escape a directory or that no node would
// store: backups hold "<charmID>/<cleaned path>" only.
func checkKey(key string) error {
	if key == "" || strings.HasPrefix(key, "/") || strings.HasSuffix(key, "/") || path.Clean(key) != key ||
		key == ".." || strings.HasPrefix(key, "../") {
		return fmt.Errorf("backup: invalid key %q", key)
	}
	return nil
}

// under reports whether key is prefix itself or inside it as a directory.
func under(key, dir string) bool {
	return key == dir || strings.HasPrefix(key, dir+"/")
}
