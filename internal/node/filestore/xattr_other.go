//go:build !linux

package filestore

import (
	"errors"
	"os"
)

// errNoXattr: cring node records versions in Linux user extended attributes.
var errNoXattr = errors.New("cring node's file store needs Linux user extended attributes")

func setXattr(*os.File, string, string) error          { return errNoXattr }
func fgetXattr(*os.File, string) (string, bool, error) { return "", false, errNoXattr }
func getXattr(string, string) (string, bool, error)    { return "", false, errNoXattr }
func unsupportedXattr(err error) bool                  { return errors.Is(err, errNoXattr) }
func sameFilesystem(string, string) (bool, error)      { return true, nil }
