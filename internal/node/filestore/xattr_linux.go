//go:build linux

package filestore

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// setXattr records one attribute on an open file.
func setXattr(f *os.File, name, value string) error {
	if err := unix.Fsetxattr(int(f.Fd()), name, []byte(value), 0); err != nil {
		return &os.PathError{Op: "setxattr " + name, Path: f.Name(), Err: err}
	}
	return nil
}

// fgetXattr reads one attribute of an open file; ok is false when the file
// has none by that name (written before cring node, or unstamped).
func fgetXattr(f *os.File, name string) (value string, ok bool, err error) {
	var buf [128]byte // every value cring writes is shorter (a stamp is at most 59 bytes)
	n, err := unix.Fgetxattr(int(f.Fd()), name, buf[:])
	return xattrResult(f.Name(), name, buf[:], n, err)
}

// getXattr is fgetXattr by path (following symlinks).
func getXattr(path, name string) (value string, ok bool, err error) {
	var buf [128]byte
	n, err := unix.Getxattr(path, name, buf[:])
	return xattrResult(path, name, buf[:], n, err)
}

func xattrResult(path, name string, buf []byte, n int, err error) (string, bool, error) {
	switch {
	case errors.Is(err, unix.ENODATA):
		return "", false, nil
	case err != nil:
		return "", false, &os.PathError{Op: "getxattr " + name, Path: path, Err: err}
	}
	return string(buf[:n]), true, nil
}

// unsupportedXattr reports whether err means the filesystem has no user
// extended attributes.
func unsupportedXattr(err error) bool {
	return errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP)
}

// sameFilesystem reports whether a and b live on one filesystem, where a
// rename from one to the other is atomic.
func sameFilesystem(a, b string) (bool, error) {
	var sa, sb syscall.Stat_t
	if err := syscall.Stat(a, &sa); err != nil {
		return false, fmt.Errorf("stat %s: %w", a, err)
	}
	if err := syscall.Stat(b, &sb); err != nil {
		return false, fmt.Errorf("stat %s: %w", b, err)
	}
	return sa.Dev == sb.Dev, nil
}
