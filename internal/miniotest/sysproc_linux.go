package miniotest

import "syscall"

// dieWithParent kills the server if the test binary dies without cleanup.
func dieWithParent() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
