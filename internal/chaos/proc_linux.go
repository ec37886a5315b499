package chaos

import (
	"os/exec"
	"syscall"
)

// dieWithParent kills a child if this process dies first, so an
// interrupted run leaves no nodes behind.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
