package proxy

import (
	"bytes"
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

// backupTee is the upload's file as the proxy itself keeps it: a spool file
// for the backup and its SHA-256 for version records. It is one more target
// of the replication: a streamed body reaches it as it reaches the nodes
// (replication.stream), a small one from the buffer the nodes get.
type backupTee struct {
	spool *os.File  // nil without backups
	sum   hash.Hash // nil without version records
	ctype string    // the upload's multipart content type
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

// newBackupTee is the proxy's own copy of r's upload: nil when backups
// don't apply and no checksum is needed.
func (p *Proxy) newBackupTee(r *http.Request, ref fileRef, sum bool) (*backupTee, error) {
	if (p.backup == nil && !sum) || r.Method != http.MethodPost || tombstone.Reserved(ref.path) {
		return nil, nil
	}
	t := &backupTee{ctype: r.Header.Get("Content-Type")}
	if p.backup != nil {
		spool, err := p.backup.Spool()
		if err != nil {
			return nil, err
		}
		t.spool = spool
	}
	if sum {
		t.sum = sha256.New()
	}
	return t, nil
}

// to is where the upload's file bytes go.
func (t *backupTee) to() io.Writer {
	var to []io.Writer
	if t.spool != nil {
		to = append(to, t.spool)
	}
	if t.sum != nil {
		to = append(to, t.sum)
	}
	return io.MultiWriter(to...)
}

// take copies a small upload's file from its whole body.
func (t *backupTee) take(body []byte) {
	t.n, t.err = backup.ExtractUpload(bytes.NewReader(body), t.ctype, t.to())
}

// follow returns src teed into the copy as it is read; finish ends it.
func (t *backupTee) follow(src io.Reader) io.Reader {
	pr, pw := io.Pipe()
	t.pw, t.done = pw, make(chan struct{})
	go func() {
		defer close(t.done)
		t.n, t.err = backup.ExtractUpload(pr, t.ctype, t.to())
		pr.Close()
	}()
	return io.TeeReader(src, pw)
}

// finish waits for a followed body's copy to be complete.
func (t *backupTee) finish(bodyErr error) error {
	if t.pw != nil {
		t.pw.CloseWithError(bodyErr)
		<-t.done
	}
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
