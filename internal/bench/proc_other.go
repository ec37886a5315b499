//go:build !linux

package bench

import (
	"errors"
	"os/exec"
	"time"
)

type pinning struct{}

func newPinning() (*pinning, error) { return nil, errors.New("pinning is only supported on Linux") }

func (*pinning) pinSelf() error { return nil }

func (*pinning) String() string { return "" }

func (*pinning) command(name string, args ...string) (string, []string) { return name, args }

func (*pinning) benchCommand(name string, args []string) (string, []string) { return name, args }

func setDeathSignal(*exec.Cmd) {}

func cpuTime(int) (time.Duration, bool) { return 0, false }

func unprivileged() (uid, gid int, drop bool) { return 0, 0, false }

func runAs(*exec.Cmd, int, int) {}

func treeCPU(int) (time.Duration, bool) { return 0, false }
