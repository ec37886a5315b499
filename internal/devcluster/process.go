package devcluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
)

// process is a node running as `<binary> node`.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// kill ends it like a crash and waits for it.
func (p *process) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Pid is the node's process id; 0 for an in-process node or one not running.
func (n *Node) Pid() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc == nil {
		return 0
	}
	return n.proc.cmd.Process.Pid
}

// startProcess runs node n as its own process with the cluster's key in its
// data directory and waits until its health port answers. n.mu is held.
func (c *Cluster) startProcess(ctx context.Context, n *Node) error {
	ssh := filepath.Join(n.DataDir, ".ssh")
	if err := os.MkdirAll(ssh, 0o700); err != nil {
		return fmt.Errorf("start %s: %w", n.Name, err)
	}
	for name, b := range map[string][]byte{"charm_server_ed25519": c.PrivateKey, "charm_server_ed25519.pub": c.PublicKey} {
		if err := os.WriteFile(filepath.Join(ssh, name), b, 0o600); err != nil {
			return fmt.Errorf("start %s: server key: %w", n.Name, err)
		}
	}
	name, args := c.binary, []string{"node",
		"--data-dir", n.DataDir,
		"--http-port", strconv.Itoa(n.HTTPPort),
		"--ssh-port", strconv.Itoa(n.SSHPort),
		"--health-port", strconv.Itoa(n.HealthPort),
		"--stats-port", strconv.Itoa(n.StatsPort),
		"--meta-port", "0",
		"--shutdown-timeout", "1s",
	}
	if c.wrap != nil {
		name, args = c.wrap(name, args)
	}
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(),
		"CHARM_SERVER_BIND_ADDRESS="+n.Host,
		"CHARM_SERVER_HOST="+n.Host,
		"CHARM_SERVER_PUBLIC_URL="+c.PublicURL,
	)
	// Charm logs every request; nobody reads it here (stdout and stderr
	// go to the null device).
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", n.Name, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-p.done:
			cancel() // exited while starting
		case <-wctx.Done():
		}
	}()
	if err := waitHTTP(wctx, n.HealthURL()); err != nil {
		p.kill()
		return fmt.Errorf("start %s (%s node): %w", n.Name, c.binary, err)
	}
	n.proc = p
	return nil
}
