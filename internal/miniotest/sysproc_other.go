//go:build !linux

package miniotest

import "syscall"

func dieWithParent() *syscall.SysProcAttr { return nil }
