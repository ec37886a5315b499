package bench

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// pinning splits this machine's CPUs: the last one for the proxy, the rest
// for this process (client and nodes), as if the proxy had a machine of its
// own. The proxy is started under taskset (util-linux), so its Go runtime
// sees one CPU from the start.
type pinning struct {
	bench []int
	proxy int
}

func newPinning() (*pinning, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, fmt.Errorf("read CPU affinity: %w", err)
	}
	var cpus []int
	for c := range 1024 {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	if len(cpus) < 2 {
		return nil, fmt.Errorf("pinning needs at least 2 CPUs, this process may use %d", len(cpus))
	}
	if _, err := exec.LookPath("taskset"); err != nil {
		return nil, fmt.Errorf("pinning needs taskset (util-linux): %w", err)
	}
	return &pinning{bench: cpus[:len(cpus)-1], proxy: cpus[len(cpus)-1]}, nil
}

func (p *pinning) String() string {
	return fmt.Sprintf("proxy on CPU %d, client and nodes on CPU %s", p.proxy, strings.Trim(fmt.Sprint(p.bench), "[]"))
}

// pinSelf moves every thread of this process onto the bench's CPUs; threads
// made later inherit it.
func (p *pinning) pinSelf() error {
	var set unix.CPUSet
	for _, c := range p.bench {
		set.Set(c)
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("list threads: %w", err)
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil && err != unix.ESRCH {
			return fmt.Errorf("pin thread %d: %w", tid, err)
		}
	}
	runtime.GOMAXPROCS(len(p.bench))
	return nil
}

// benchCommand runs a node process on the bench's CPUs.
func (p *pinning) benchCommand(name string, args []string) (string, []string) {
	cpus := make([]string, len(p.bench))
	for k, c := range p.bench {
		cpus[k] = strconv.Itoa(c)
	}
	return "taskset", append([]string{"-c", strings.Join(cpus, ","), name}, args...)
}

// command runs the proxy binary on its own CPU.
func (p *pinning) command(name string, args ...string) (string, []string) {
	return "taskset", append([]string{"-c", strconv.Itoa(p.proxy), name}, args...)
}

// setDeathSignal makes the proxy die with the bench, even if the bench is
// killed before it can stop it.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}

// cpuTime is the user+system CPU time process pid used so far (0: this
// process).
func cpuTime(pid int) (time.Duration, bool) {
	if pid == 0 {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			return 0, false
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// Fields after the command name (which may hold spaces), from field 3:
	// utime and stime are fields 14 and 15, in clock ticks (USER_HZ, 100).
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, false
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(ut+st) * (time.Second / 100), true
}

// unprivileged is the user nginx and HAProxy run as when the bench runs as
// root (nobody); drop is false otherwise: they run as the bench's own user.
func unprivileged() (uid, gid int, drop bool) {
	if os.Geteuid() != 0 {
		return 0, 0, false
	}
	uid, gid = 65534, 65534
	if u, err := user.Lookup("nobody"); err == nil {
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
	}
	return uid, gid, true
}

// runAs makes cmd run as uid and gid, with no supplementary groups.
func runAs(cmd *exec.Cmd, uid, gid int) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
}

// treeCPU is the CPU time of process pid and its descendants (nginx's
// master and workers), as cpuTime counts it.
func treeCPU(pid int) (time.Duration, bool) {
	total, ok := cpuTime(pid)
	if !ok {
		return 0, false
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, false
	}
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		if err != nil {
			continue
		}
		for _, c := range strings.Fields(string(b)) {
			if child, err := strconv.Atoi(c); err == nil {
				if d, ok := treeCPU(child); ok {
					total += d
				}
			}
		}
	}
	return total, true
}
