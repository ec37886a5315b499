package chaos

import (
	"os/exec"
	"syscall"
)

// dieWithParent kills a child if this process dies first, so an
// interrupted run leaves no nodes behind.
func dieWithParent(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// Set after any credential change (Go orders it so), which would
	// otherwise clear it.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}
