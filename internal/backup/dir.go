package backup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// A file:// target mirrors a node's files directory: <dir>/<charmID>/<path>
// holds the bytes, so an operator can read it with ordinary tools. Metadata
// lives in a parallel tree under <dir>/.cring-meta and writes go through
// <dir>/.cring-tmp; neither can clash with a key, which starts with a charm ID.
const (
	dirMeta = ".cring-meta"
	dirTmp  = ".cring-tmp"
)

type dirTarget struct {
	root string
}

type dirMetaFile struct {
	Mode    fs.FileMode `json:"mode"`
	ModTime time.Time   `json:"modtime"`
}

func openDir(root string) (Target, error) {
	if root == "" || !filepath.IsAbs(root) {
		return nil, fmt.Errorf("backup-url file://%s: want an absolute directory, file:///path/to/dir", root)
	}
	root = filepath.Clean(root)
	for _, d := range []string{root, filepath.Join(root, dirMeta), filepath.Join(root, dirTmp)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("backup directory: %w", err)
		}
	}
	// Prove we can write there now rather than on the first upload.
	f, err := os.CreateTemp(filepath.Join(root, dirTmp), "probe-*")
	if err != nil {
		return nil, fmt.Errorf("backup directory %s is not writable: %w", root, err)
	}
	f.Close()
	os.Remove(f.Name())
	return &dirTarget{root: root}, nil
}

func (d *dirTarget) String() string { return "file://" + d.root }

func (d *dirTarget) dataPath(key string) string {
	return filepath.Join(d.root, filepath.FromSlash(key))
}
func (d *dirTarget) metaPath(key string) string {
	return filepath.Join(d.root, dirMeta, filepath.FromSlash(key)) + ".json"
}

func (d *dirTarget) Put(ctx context.Context, key string, r io.Reader, size int64, meta Meta) error {
	if err := checkKey(key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	dst := d.dataPath(key)
	if meta.Mode.IsDir() {
		if err := os.MkdirAll(dst, 0o700); err != nil {
			return fmt.Errorf("put %s: %w", key, err)
		}
	} else {
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return fmt.Errorf("put %s: %w", key, err)
		}
		if err := d.writeAtomic(ctx, dst, r, size); err != nil {
			return fmt.Errorf("put %s: %w", key, err)
		}
	}
	if !meta.ModTime.IsZero() {
		_ = os.Chtimes(dst, meta.ModTime, meta.ModTime) // for humans; the sidecar is authoritative
	}
	b, _ := json.Marshal(dirMetaFile{Mode: meta.Mode, ModTime: meta.ModTime.UTC()})
	mp := d.metaPath(key)
	if err := os.MkdirAll(filepath.Dir(mp), 0o700); err != nil {
		return fmt.Errorf("put %s metadata: %w", key, err)
	}
	if err := d.writeAtomic(ctx, mp, strings.NewReader(string(b)), int64(len(b))); err != nil {
		return fmt.Errorf("put %s metadata: %w", key, err)
	}
	return nil
}

// writeAtomic writes exactly size bytes to a temp file, syncs it and renames
// it over dst: a reader never sees half a file, a crash leaves the old one.
func (d *dirTarget) writeAtomic(ctx context.Context, dst string, r io.Reader, size int64) error {
	f, err := os.CreateTemp(filepath.Join(d.root, dirTmp), "put-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	n, err := io.Copy(f, ctxReader{ctx, r})
	if err == nil && size >= 0 && n != size {
		err = fmt.Errorf("got %d bytes, want %d", n, size)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	return syncDir(filepath.Dir(dst))
}

// ctxReader stops a long copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

func (d *dirTarget) Stat(ctx context.Context, key string) (Object, error) {
	if err := checkKey(key); err != nil {
		return Object{}, err
	}
	fi, err := os.Stat(d.dataPath(key))
	if errors.Is(err, fs.ErrNotExist) {
		return Object{}, fmt.Errorf("stat %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return Object{}, fmt.Errorf("stat %s: %w", key, err)
	}
	if fi.IsDir() {
		// A directory is not an object (S3 has none either) unless it was
		// put as one.
		if m, ok := d.readMeta(key); ok && m.Mode.IsDir() {
			return Object{Key: key, Mode: m.Mode, ModTime: m.ModTime, Stored: fi.ModTime()}, nil
		}
		return Object{}, fmt.Errorf("stat %s: %w", key, ErrNotFound)
	}
	return d.object(key, fi), nil
}

func (d *dirTarget) readMeta(key string) (dirMetaFile, bool) {
	b, err := os.ReadFile(d.metaPath(key))
	if err != nil {
		return dirMetaFile{}, false
	}
	var m dirMetaFile
	if json.Unmarshal(b, &m) != nil {
		return dirMetaFile{}, false
	}
	return m, true
}

func (d *dirTarget) object(key string, fi fs.FileInfo) Object {
	o := Object{Key: key, Size: fi.Size(), ModTime: fi.ModTime(), Stored: fi.ModTime()}
	if m, ok := d.readMeta(key); ok {
		o.Mode = m.Mode
		if !m.ModTime.IsZero() {
			o.ModTime = m.ModTime
		}
	}
	return o
}

func (d *dirTarget) Get(ctx context.Context, key string) (io.ReadCloser, Object, error) {
	o, err := d.Stat(ctx, key)
	if err != nil {
		return nil, Object{}, err
	}
	if o.Mode.IsDir() {
		return io.NopCloser(strings.NewReader("")), o, nil
	}
	f, err := os.Open(d.dataPath(key))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, Object{}, fmt.Errorf("get %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return nil, Object{}, fmt.Errorf("get %s: %w", key, err)
	}
	// Size from the open file: a concurrent Put renames a new file in, this
	// descriptor keeps reading the old one whole.
	if fi, err := f.Stat(); err == nil {
		o.Size = fi.Size()
	}
	return f, o, nil
}

func (d *dirTarget) GetVersion(ctx context.Context, key, versionID string) (io.ReadCloser, Object, error) {
	return nil, Object{}, ErrVersioningUnsupported
}

func (d *dirTarget) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	mp := d.metaPath(key)
	for _, p := range []string{d.dataPath(key), mp, strings.TrimSuffix(mp, ".json")} {
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("delete %s: %w", key, err)
		}
	}
	// Like S3, a directory exists only while something is in it.
	d.prune(filepath.Dir(d.dataPath(key)), d.root)
	d.prune(filepath.Dir(mp), filepath.Join(d.root, dirMeta))
	return nil
}

// prune removes empty directories from dir up to (not including) stop.
func (d *dirTarget) prune(dir, stop string) {
	for dir != stop && strings.HasPrefix(dir, stop+string(filepath.Separator)) {
		if os.Remove(dir) != nil {
			return
		}
		dir = filepath.Dir(dir)
	}
}

func (d *dirTarget) List(ctx context.Context, prefix string, recursive bool) ([]Object, error) {
	// Walk only the directory the prefix lies in.
	base := ""
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		base = prefix[:i]
	}
	start := d.root
	if base != "" {
		if err := checkKey(path.Clean(base)); err != nil {
			return nil, fmt.Errorf("list %q: %w", prefix, err)
		}
		start = d.dataPath(path.Clean(base))
	}
	var out []Object
	dirs := map[string]bool{}
	err := filepath.WalkDir(start, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, _ := filepath.Rel(d.root, p)
		key := filepath.ToSlash(rel)
		if p == d.root {
			return nil
		}
		if de.IsDir() && (key == dirMeta || key == dirTmp) {
			return filepath.SkipDir
		}
		if !strings.HasPrefix(key, prefix) && !strings.HasPrefix(prefix, key+"/") {
			if de.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasPrefix(key, prefix) {
			return nil // an ancestor directory of the prefix
		}
		if !recursive {
			if i := strings.Index(key[len(prefix):], "/"); i >= 0 {
				dirs[key[:len(prefix)+i]] = true
				if de.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
		}
		if de.IsDir() {
			if m, ok := d.readMeta(key); ok && m.Mode.IsDir() && recursive {
				out = append(out, Object{Key: key, Mode: m.Mode, ModTime: m.ModTime})
			}
			if !recursive {
				dirs[key] = true
				return filepath.SkipDir
			}
			return nil
		}
		fi, err := de.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		out = append(out, d.object(key, fi))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %q in %s: %w", prefix, d, err)
	}
	for k := range dirs {
		out = append(out, Object{Key: k, IsDir: true})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

func (d *dirTarget) EnableVersioning(ctx context.Context) error { return ErrVersioningUnsupported }

func (d *dirTarget) ListAsOf(ctx context.Context, prefix string, at time.Time) ([]Object, error) {
	return nil, ErrVersioningUnsupported
}

// syncDir makes a rename or removal in dir durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return err
	}
	return nil
}
