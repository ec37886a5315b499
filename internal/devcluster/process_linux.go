package devcluster

import (
	"os/exec"
	"syscall"
)

// dieWithParent kills a node process if this process dies first.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
