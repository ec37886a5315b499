package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path"
	"strings"
	"time"

	charm "github.com/charmbracelet/charm/proto"

	"github.com/cring-dev/cring/internal/backup"
	"github.com/cring-dev/cring/internal/tombstone"
)

// Backup receives every acknowledged write and delete, and serves reads
// when no node can (backup.Sink implements it).
type Backup interface {
	Spool() (*os.File, error)
	Store(ctx context.Context, key string, spool *os.File, size int64, mode fs.FileMode, mtime time.Time) error
	Discard(spool *os.File)
	Remove(ctx context.Context, key string) error
	Open(ctx context.Context, key string) (io.ReadCloser, backup.Object, error)
	List(ctx context.Context, prefix string) ([]backup.Object, error)
}

// backupTee copies the file part of an upload to a spool file (backups)
// and its SHA-256 (version records) while the body streams to the replicas.
type backupTee struct {
	spool *os.File  // nil without backups
	sum   hash.Hash // nil without version records
	pw    *io.PipeWriter
	done  chan struct{}
	n     int64
	err   error
}

func (t *backupTee) errOrNil() error {
	if t == nil {
		return errors.New("not read")
	}
	return t.err
}

// startBackupTee wraps body (r's) so the upload's file bytes also land in a
// spool file; nil when backups don't apply to this request.
func (p *Proxy) startBackupTee(r *http.Request, body io.Reader, ref fileRef, sum bool) (*backupTee, io.Reader, error) {
	if (p.backup == nil && !sum) || r.Method != http.MethodPost || tombstone.Reserved(ref.path) {
		return nil, body, nil
	}
	pr, pw := io.Pipe()
	t := &backupTee{pw: pw, done: make(chan struct{})}
	var to []io.Writer
	if p.backup != nil {
		spool, err := p.backup.Spool()
		if err != nil {
			return nil, nil, err
		}
		t.spool = spool
		to = append(to, spool)
	}
	if sum {
		t.sum = sha256.New()
		to = append(to, t.sum)
	}
	go func() {
		defer close(t.done)
		t.n, t.err = backup.ExtractUpload(pr, r.Header.Get("Content-Type"), io.MultiWriter(to...))
		pr.Close()
	}()
	return t, io.TeeReader(body, pw), nil
}

// finish waits for the spool to be complete.
func (t *backupTee) finish(bodyErr error) error {
	t.pw.CloseWithError(bodyErr)
	<-t.done
	return t.err
}

// backupAck carries an acknowledged write or delete to the backup. An error
// means the write must not be acknowledged (sync mode, or a queue that
// could not take it).
func (p *Proxy) backupAck(ctx context.Context, r *http.Request, ref fileRef, tee *backupTee) error {
	if p.backup == nil || tombstone.Reserved(ref.path) {
		return nil
	}
	if r.Method == http.MethodDelete {
		return p.backup.Remove(ctx, ref.key())
	}
	if tee == nil {
		return nil
	}
	if tee.spool == nil {
		return fmt.Errorf("the upload could not be backed up: %w", tee.err)
	}
	var mode fs.FileMode
	fmt.Sscan(r.URL.Query().Get("mode"), &mode)
	return p.backup.Store(ctx, ref.key(), tee.spool, tee.n, mode, time.Now())
}

// fromBackup answers a read no node could: the file, or a directory listing,
// from the backup (the cluster is read-only until a node returns).
func (p *Proxy) fromBackup(w http.ResponseWriter, r *http.Request, ref fileRef) {
	ctx := r.Context()
	// The user's root is a directory only: there is no object to open.
	var (
		rc  io.ReadCloser
		obj backup.Object
		err = backup.ErrNotFound
	)
	if tombstone.Clean(ref.path) != "" {
		rc, obj, err = p.backup.Open(ctx, ref.key())
	}
	if err == nil {
		defer rc.Close()
		h := w.Header()
		h.Set("Content-Type", "application/octet-stream")
		h.Set("X-File-Mode", fmt.Sprint(uint32(obj.Mode)))
		h.Set("Last-Modified", obj.ModTime.UTC().Format(http.TimeFormat))
		h.Set("X-Cring-Source", "backup")
		w.WriteHeader(http.StatusOK)
		bp := p.bufs.Get().(*[]byte)
		defer p.bufs.Put(bp)
		_, _ = io.CopyBuffer(w, rc, *bp)
		return
	}
	if !errors.Is(err, backup.ErrNotFound) {
		writeError(w, http.StatusServiceUnavailable, "no node is reachable and the backup failed: "+err.Error())
		return
	}
	prefix := strings.TrimSuffix(ref.key(), "/") + "/"
	objs, err := p.backup.List(ctx, prefix)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "no node is reachable and the backup failed: "+err.Error())
		return
	}
	if len(objs) == 0 {
		writeError(w, http.StatusNotFound, "file not found")
		return
	}
	dir := charm.FileInfo{Name: path.Base("/" + ref.path), IsDir: true, Mode: fs.ModeDir | 0o700}
	for _, o := range objs {
		if tombstone.Reserved(strings.TrimPrefix(o.Key, ref.user+"/")) {
			continue // cring's own files are never listed to clients
		}
		fi := charm.FileInfo{Name: o.Name(), IsDir: o.IsDir, Size: o.Size, ModTime: o.ModTime, Mode: o.Mode}
		if o.IsDir {
			fi.Mode = fs.ModeDir | 0o700
		}
		if fi.ModTime.After(dir.ModTime) {
			dir.ModTime = fi.ModTime
		}
		dir.Files = append(dir.Files, fi)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-File-Mode", fmt.Sprint(uint32(dir.Mode)))
	w.Header().Set("X-Cring-Source", "backup")
	_ = json.NewEncoder(w).Encode(dir)
}
