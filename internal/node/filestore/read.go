package filestore

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	charmfs "github.com/charmbracelet/charm/fs"
	charm "github.com/charmbracelet/charm/proto"
	"github.com/charmbracelet/charm/server/storage"

	"github.com/cring-dev/cring/internal/stamp"
)

// Listing is charm's directory listing (proto.FileInfo with its files)
// plus each file's stamp, which charm clients ignore. Without stamps it
// encodes to exactly the bytes charm's local store serves.
type Listing struct {
	Name    string      `json:"name"`
	IsDir   bool        `json:"is_dir"`
	Size    int64       `json:"size"`
	ModTime time.Time   `json:"modtime"`
	Mode    fs.FileMode `json:"mode"`
	Files   []Listing   `json:"files,omitempty"`
	Stamp   string      `json:"stamp,omitempty"`
}

// Entry is what a path holds: an open file with its recorded version, or
// a directory's listing.
type Entry struct {
	Info    fs.FileInfo
	File    *os.File // nil for a directory; the caller closes it
	Version Version  // files only
	Listing *Listing // directories only
}

// Open looks charmID's path p up. A missing path is fs.ErrNotExist. No
// lock is needed: a name always holds one whole version.
func (s *Store) Open(charmID, p string) (*Entry, error) {
	_, fp, err := s.locate(charmID, p)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(fp)
	if err != nil {
		return nil, err
	}
	info, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if info.IsDir() {
		l, err := list(f, info)
		f.Close()
		if err != nil {
			return nil, err
		}
		return &Entry{Info: info, Listing: l}, nil
	}
	v, err := ReadVersion(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Entry{Info: info, File: f, Version: v}, nil
}

// list reads an open directory as charm's local store does (same order,
// same fields), adding stamps.
func list(dir *os.File, info fs.FileInfo) (*Listing, error) {
	des, err := dir.ReadDir(0)
	if err != nil {
		return nil, err
	}
	files := make([]Listing, 0, len(des))
	for _, de := range des {
		fi, err := de.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted since the directory was read
		}
		if err != nil {
			return nil, err
		}
		e := Listing{Name: de.Name(), IsDir: fi.IsDir(), Size: fi.Size(), ModTime: fi.ModTime(), Mode: fi.Mode()}
		if fi.Mode().IsRegular() {
			e.Stamp = stampAt(filepath.Join(dir.Name(), de.Name())).String()
		}
		files = append(files, e)
	}
	return &Listing{Name: info.Name(), IsDir: true, ModTime: info.ModTime(), Mode: info.Mode(), Files: files}, nil
}

// Encode writes the listing as charm's JSON (with a trailing newline, as
// charm's encoder does).
func (l *Listing) Encode(w io.Writer) error { return json.NewEncoder(w).Encode(l) }

// Usage is the total size of charmID's files (0 for a user with none),
// what charm counts against its user storage limit.
func (s *Store) Usage(charmID string) (int64, error) {
	info, err := s.Stat(charmID, "")
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return info.Size(), nil
}

// The rest is charm's storage.FileStore, for charm's own HTTP handler:
// unstamped writes and deletes, like stock charm.
var _ storage.FileStore = (*Store)(nil)

// Stat is charm's: a file's info, or a directory's with the total size of
// the files under it.
func (s *Store) Stat(charmID, p string) (fs.FileInfo, error) {
	_, fp, err := s.locate(charmID, p)
	if err != nil {
		return nil, err
	}
	i, err := os.Stat(fp)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fs.ErrNotExist
	}
	if err != nil {
		return nil, err
	}
	in := &charmfs.FileInfo{FileInfo: charm.FileInfo{Name: i.Name(), IsDir: i.IsDir(), Size: i.Size(), ModTime: i.ModTime(), Mode: i.Mode()}}
	if !i.IsDir() {
		return in, nil
	}
	in.FileInfo.Size = 0
	err = filepath.WalkDir(fp, func(_ string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed while walking
		}
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		in.FileInfo.Size += fi.Size()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("stat %s: %w", fp, err)
	}
	return in, nil
}

// Get is charm's: the open file, or a directory's JSON listing.
func (s *Store) Get(charmID, p string) (fs.File, error) {
	e, err := s.Open(charmID, p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fs.ErrNotExist
	}
	if err != nil {
		return nil, err
	}
	if e.File != nil {
		return e.File, nil
	}
	buf := &bytes.Buffer{}
	if err := e.Listing.Encode(buf); err != nil {
		return nil, err
	}
	return &charmfs.DirFile{Buffer: buf, FileInfo: e.Info}, nil
}

// Put is charm's: an unstamped write.
func (s *Store) Put(charmID, p string, r io.Reader, mode fs.FileMode) error {
	_, _, err := s.Write(charmID, p, stamp.Stamp{}, mode, r)
	return err
}

// Delete is charm's: an unstamped delete of everything at p.
func (s *Store) Delete(charmID, p string) error {
	return s.Remove(charmID, p, stamp.Stamp{})
}
