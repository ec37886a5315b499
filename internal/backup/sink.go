package backup

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"
)

// Sink is what the proxy hands every acknowledged write and delete to. In
// sync mode an op is applied before the call returns (the write is acked
// only once the backup holds it); in async mode it is durably queued.
type Sink struct {
	Queue  *Queue
	Target Target
	Sync   bool
}

// Spool returns a file for an upload's body, inside the queue's spool dir.
func (s *Sink) Spool() (*os.File, error) { return s.Queue.Spool() }

// Store backs up a spooled body of size bytes under key. It always takes
// the file: removed once stored (sync) or owned by the queue (async).
func (s *Sink) Store(ctx context.Context, key string, spool *os.File, size int64, mode fs.FileMode, mtime time.Time) error {
	name := spool.Name()
	if err := spool.Sync(); err != nil {
		spool.Close()
		os.Remove(name)
		return fmt.Errorf("backup %s: spool: %w", key, err)
	}
	spool.Close()
	op := Op{Kind: Put, Key: key, SpoolPath: name, Size: size, Meta: Meta{Mode: mode, ModTime: mtime}}
	if s.Sync {
		defer os.Remove(name)
		return s.Queue.Do(ctx, op)
	}
	if err := s.Queue.Enqueue(op); err != nil {
		os.Remove(name)
		return err
	}
	return nil
}

// Discard drops a spooled body whose write was not acknowledged.
func (s *Sink) Discard(spool *os.File) {
	spool.Close()
	os.Remove(spool.Name())
}

// Remove backs up a delete of key.
func (s *Sink) Remove(ctx context.Context, key string) error {
	op := Op{Kind: Delete, Key: key}
	if s.Sync {
		return s.Queue.Do(ctx, op)
	}
	return s.Queue.Enqueue(op)
}

// Open reads the current backup of key (read-only fallback).
func (s *Sink) Open(ctx context.Context, key string) (io.ReadCloser, Object, error) {
	return s.Target.Get(ctx, key)
}

// List lists one directory level under prefix (read-only fallback).
func (s *Sink) List(ctx context.Context, prefix string) ([]Object, error) {
	return s.Target.List(ctx, prefix, false)
}
