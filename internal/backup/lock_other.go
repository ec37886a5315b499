//go:build !unix

package backup

import "os"

// lockFile opens p; other systems go without the cross-process lock.
func lockFile(p string) (*os.File, error) {
	return os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o600)
}
