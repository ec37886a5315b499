package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Object metadata names (sent as X-Amz-Meta-Cring-Mode/-Mtime).
const (
	metaMode  = "Cring-Mode"
	metaMtime = "Cring-Mtime"
)

// s3Target is a bucket on an S3-compatible server.
type s3Target struct {
	c      *minio.Client
	bucket string
	name   string
}

func openS3(ctx context.Context, u *url.URL, cfg Config) (Target, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("backup-bucket is required when backup-url is an S3 endpoint")
	}
	if u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return nil, fmt.Errorf("backup-url %q: want an S3 endpoint like https://s3.example.com or http://127.0.0.1:9000 (no path; the bucket goes in --backup-bucket)", cfg.URL)
	}
	if err := cfg.credentials(); err != nil {
		return nil, err
	}
	region := cfg.Region
	if region == "" {
		region = DefaultRegion
	}
	lookup := minio.BucketLookupAuto
	if cfg.PathStyle || hostIsLocal(u.Hostname()) {
		lookup = minio.BucketLookupPath
	}
	secure := u.Scheme == "https"
	name := fmt.Sprintf("%s://%s/%s", u.Scheme, u.Host, cfg.Bucket)
	c, err := minio.New(u.Host, &minio.Options{
		Creds:        credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
		Secure:       secure,
		Region:       region,
		BucketLookup: lookup,
		Transport:    s3Transport(),
	})
	if err != nil {
		return nil, fmt.Errorf("backup target %s: %w", name, err)
	}
	t := &s3Target{c: c, bucket: cfg.Bucket, name: name}
	if err := t.probe(ctx, u, region, cfg.ProbeTimeout); err != nil {
		if errors.Is(err, ErrUnreachable) {
			return t, err // a caller with a durable queue may start anyway
		}
		return nil, err
	}
	return t, nil
}

// s3Transport bounds connecting and waiting for an answer; bodies may take
// as long as they need (callers pass a deadline for those).
func s3Transport() *http.Transport {
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := d.DialContext(ctx, network, addr)
			if err != nil {
				if abort, ok := ctx.Value(abortKey{}).(context.CancelCauseFunc); ok {
					abort(err)
				}
			}
			return conn, err
		},
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 2 * time.Minute,
		ExpectContinueTimeout: time.Second,
		// S3 sizes and checksums are of the stored bytes: never let the
		// transport decompress them.
		DisableCompression: true,
	}
}

// abortKey carries the cancel function of one target call to the dialer.
// minio-go retries a failed request about ten times over several seconds
// and stops early only when its context ends; when the endpoint cannot even
// be dialed the call is cancelled with that error instead, so a down target
// fails a call at once (the queue has its own backoff, and sync writes
// should not hang).
type abortKey struct{}

// call runs f with a context the dialer can abort, and reports the dial
// error rather than the cancellation it caused.
func call(ctx context.Context, f func(context.Context) error) error {
	cctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	err := f(context.WithValue(cctx, abortKey{}, cancel))
	return dialCause(ctx, cctx, err)
}

func dialCause(parent, cctx context.Context, err error) error {
	if err != nil && parent.Err() == nil {
		if cause := context.Cause(cctx); cause != nil && cause != context.Canceled {
			return cause
		}
	}
	return err
}

func hostIsLocal(h string) bool {
	return h == "localhost" || net.ParseIP(h) != nil
}

// probe fails fast and clearly: a TCP dial first (minio-go would retry a
// refused connection for seconds), then one cheap authenticated call, then
// the bucket is created when missing.
func (t *s3Target) probe(ctx context.Context, u *url.URL, region string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	addr := u.Host
	if u.Port() == "" {
		port := "80"
		if u.Scheme == "https" {
			port = "443"
		}
		addr = net.JoinHostPort(u.Hostname(), port)
	}
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("backup target %s: cannot connect: %w (%w)", t.name, unwrapNet(err), ErrUnreachable)
	}
	conn.Close()
	var ok bool
	err = call(ctx, func(ctx context.Context) (err error) {
		ok, err = t.c.BucketExists(ctx, t.bucket)
		return err
	})
	if err != nil {
		return fmt.Errorf("backup target %s: %s", t.name, describeS3Error(err))
	}
	if ok {
		return nil
	}
	err = call(ctx, func(ctx context.Context) error {
		return t.c.MakeBucket(ctx, t.bucket, minio.MakeBucketOptions{Region: region})
	})
	if err != nil {
		code := minio.ToErrorResponse(err).Code
		if code == "BucketAlreadyOwnedByYou" || code == "BucketAlreadyExists" && t.exists(ctx) {
			return nil
		}
		return fmt.Errorf("backup target %s: create bucket: %s", t.name, describeS3Error(err))
	}
	return nil
}

func (t *s3Target) exists(ctx context.Context) bool {
	ok, err := t.c.BucketExists(ctx, t.bucket)
	return err == nil && ok
}

// unwrapNet drops the *net.OpError framing ("dial tcp 127.0.0.1:1: connect:")
// down to the part an operator acts on, keeping the address.
func unwrapNet(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Addr != nil {
		inner := oe.Err
		var se interface{ Unwrap() error }
		if errors.As(inner, &se) && se.Unwrap() != nil {
			inner = se.Unwrap()
		}
		return fmt.Errorf("%s: %w", oe.Addr, inner)
	}
	return err
}

// describeS3Error turns the usual failures into one actionable line.
func describeS3Error(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return "cannot reach the endpoint: " + unwrapNet(ue.Err).Error()
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return "cannot reach the endpoint: " + unwrapNet(oe).Error()
	}
	r := minio.ToErrorResponse(err)
	switch r.Code {
	case "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken":
		return fmt.Sprintf("credentials rejected (%s: %s); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", r.Code, r.Message)
	case "":
		return err.Error()
	}
	if r.Message != "" {
		return r.Code + ": " + r.Message
	}
	return r.Code
}

func (t *s3Target) String() string { return t.name }

func (t *s3Target) Put(ctx context.Context, key string, r io.Reader, size int64, meta Meta) error {
	if err := checkKey(key); err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("backup: put %s: size must be known (got %d)", key, size)
	}
	err := call(ctx, func(ctx context.Context) error {
		_, err := t.c.PutObject(ctx, t.bucket, key, r, size, minio.PutObjectOptions{
			ContentType:  "application/octet-stream",
			UserMetadata: encodeMeta(meta),
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("put %s to %s: %s", key, t.name, describeS3Error(err))
	}
	return nil
}

func encodeMeta(m Meta) map[string]string {
	out := map[string]string{metaMode: strconv.FormatUint(uint64(m.Mode), 10)}
	if !m.ModTime.IsZero() {
		out[metaMtime] = m.ModTime.UTC().Format(time.RFC3339Nano)
	}
	return out
}

// objectFromInfo reads our metadata back; user metadata keys come back
// canonicalised but servers differ in case, so match loosely.
func objectFromInfo(info minio.ObjectInfo) Object {
	o := Object{Key: info.Key, Size: info.Size, ModTime: info.LastModified, Stored: info.LastModified, VersionID: info.VersionID}
	for k, v := range info.UserMetadata {
		switch {
		case strings.EqualFold(k, metaMode):
			if m, err := strconv.ParseUint(v, 10, 32); err == nil {
				o.Mode = fs.FileMode(m)
			}
		case strings.EqualFold(k, metaMtime):
			if mt, err := time.Parse(time.RFC3339Nano, v); err == nil {
				o.ModTime = mt
			}
		}
	}
	return o
}

func isNotFound(err error) bool {
	switch minio.ToErrorResponse(err).Code {
	case "NoSuchKey", "NoSuchVersion", "NotFound":
		return true
	}
	return false
}

func (t *s3Target) Stat(ctx context.Context, key string) (Object, error) {
	return t.stat(ctx, key, "")
}

func (t *s3Target) stat(ctx context.Context, key, version string) (Object, error) {
	if err := checkKey(key); err != nil {
		return Object{}, err
	}
	var info minio.ObjectInfo
	err := call(ctx, func(ctx context.Context) (err error) {
		info, err = t.c.StatObject(ctx, t.bucket, key, minio.StatObjectOptions{VersionID: version})
		return err
	})
	if err != nil {
		if isNotFound(err) || minio.ToErrorResponse(err).StatusCode == http.StatusNotFound {
			return Object{}, fmt.Errorf("stat %s: %w", key, ErrNotFound)
		}
		return Object{}, fmt.Errorf("stat %s on %s: %s", key, t.name, describeS3Error(err))
	}
	if info.IsDeleteMarker {
		return Object{}, fmt.Errorf("stat %s: %w", key, ErrNotFound)
	}
	return objectFromInfo(info), nil
}

func (t *s3Target) Get(ctx context.Context, key string) (io.ReadCloser, Object, error) {
	return t.get(ctx, key, "")
}

func (t *s3Target) GetVersion(ctx context.Context, key, versionID string) (io.ReadCloser, Object, error) {
	if versionID == "" {
		return nil, Object{}, fmt.Errorf("get %s: empty version id", key)
	}
	return t.get(ctx, key, versionID)
}

// get opens the object and checks it exists before returning: minio-go's
// GetObject is lazy and would report a missing key on the first Read.
func (t *s3Target) get(ctx context.Context, key, version string) (io.ReadCloser, Object, error) {
	if err := checkKey(key); err != nil {
		return nil, Object{}, err
	}
	parent := ctx
	cctx, cancel := context.WithCancelCause(ctx)
	ctx = context.WithValue(cctx, abortKey{}, cancel)
	obj, err := t.c.GetObject(ctx, t.bucket, key, minio.GetObjectOptions{VersionID: version})
	if err != nil {
		cancel(nil)
		return nil, Object{}, fmt.Errorf("get %s from %s: %s", key, t.name, describeS3Error(dialCause(parent, cctx, err)))
	}
	info, err := obj.Stat()
	if err != nil {
		obj.Close()
		err = dialCause(parent, cctx, err)
		cancel(nil)
		if isNotFound(err) || minio.ToErrorResponse(err).StatusCode == http.StatusNotFound {
			return nil, Object{}, fmt.Errorf("get %s: %w", key, ErrNotFound)
		}
		return nil, Object{}, fmt.Errorf("get %s from %s: %s", key, t.name, describeS3Error(err))
	}
	info.Key = key
	return &cancelOnClose{obj, cancel}, objectFromInfo(info), nil
}

// cancelOnClose ends a Get's call context with its body.
type cancelOnClose struct {
	*minio.Object
	cancel context.CancelCauseFunc
}

func (c *cancelOnClose) Close() error {
	err := c.Object.Close()
	c.cancel(nil)
	return err
}

func (t *s3Target) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	err := call(ctx, func(ctx context.Context) error {
		return t.c.RemoveObject(ctx, t.bucket, key, minio.RemoveObjectOptions{})
	})
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("delete %s from %s: %s", key, t.name, describeS3Error(err))
	}
	// A Charm DELETE of a directory removes its whole tree.
	below, err := t.List(ctx, key+"/", true)
	if err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	if len(below) == 0 {
		return nil
	}
	ch := make(chan minio.ObjectInfo)
	go func() {
		defer close(ch)
		for _, o := range below {
			select {
			case ch <- minio.ObjectInfo{Key: o.Key}:
			case <-ctx.Done():
				return
			}
		}
	}()
	var errs []error
	err = call(ctx, func(ctx context.Context) error {
		for e := range t.c.RemoveObjects(ctx, t.bucket, ch, minio.RemoveObjectsOptions{}) {
			if !isNotFound(e.Err) {
				errs = append(errs, fmt.Errorf("%s: %s", e.ObjectName, describeS3Error(e.Err)))
			}
		}
		return errors.Join(errs...)
	})
	if err != nil {
		return fmt.Errorf("delete %s/ from %s: %w", key, t.name, err)
	}
	return ctx.Err()
}

func (t *s3Target) List(ctx context.Context, prefix string, recursive bool) ([]Object, error) {
	var out []Object
	err := call(ctx, func(ctx context.Context) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		for info := range t.c.ListObjects(ctx, t.bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: recursive}) {
			if info.Err != nil {
				return info.Err
			}
			if strings.HasSuffix(info.Key, "/") {
				if recursive {
					continue // a "folder" marker some tools create: not a file
				}
				out = append(out, Object{Key: strings.TrimSuffix(info.Key, "/"), IsDir: true})
				continue
			}
			out = append(out, objectFromInfo(info))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %q on %s: %s", prefix, t.name, describeS3Error(err))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

func (t *s3Target) EnableVersioning(ctx context.Context) error {
	err := call(ctx, func(ctx context.Context) error { return t.c.EnableVersioning(ctx, t.bucket) })
	if err != nil {
		return fmt.Errorf("enable versioning on %s: %s", t.name, describeS3Error(err))
	}
	return nil
}

func (t *s3Target) ListAsOf(ctx context.Context, prefix string, at time.Time) ([]Object, error) {
	var vc minio.BucketVersioningConfiguration
	err := call(ctx, func(ctx context.Context) (err error) {
		vc, err = t.c.GetBucketVersioning(ctx, t.bucket)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("versioning of %s: %s", t.name, describeS3Error(err))
	}
	if !vc.Enabled() && !vc.Suspended() {
		return nil, fmt.Errorf("%s: %w", t.name, ErrNotVersioned)
	}
	// Per key, the newest version stored at or before at decides: an
	// object, or a delete marker (gone at that time). Versions of a key
	// come newest first, so on equal times the first seen wins.
	best := map[string]minio.ObjectInfo{}
	err = call(ctx, func(ctx context.Context) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		for info := range t.c.ListObjects(ctx, t.bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true, WithVersions: true}) {
			if info.Err != nil {
				return info.Err
			}
			if strings.HasSuffix(info.Key, "/") || info.LastModified.After(at) {
				continue
			}
			cur, ok := best[info.Key]
			if !ok || info.LastModified.After(cur.LastModified) {
				best[info.Key] = info
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list versions %q on %s: %s", prefix, t.name, describeS3Error(err))
	}
	out := make([]Object, 0, len(best))
	for _, info := range best {
		if info.IsDeleteMarker {
			continue
		}
		out = append(out, objectFromInfo(info))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}
