//go:build !linux

package bench

import (
	"os/exec"
	"time"
)

func setDeathSignal(*exec.Cmd) {}

func cpuTime(int) (time.Duration, bool) { return 0, false }
