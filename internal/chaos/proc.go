package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one node or proxy process that the schedule kills, stops and
// restarts. An exit nobody asked for is a crash.
type proc struct {
	name    string
	logPath string
	command func() *exec.Cmd // a fresh command line for every start
	ready   string           // URL that answers (any status) once it serves
	// probe, when set, says whether it serves instead of ready (a server
	// that does not speak HTTP).
	probe   func(ctx context.Context) bool
	crashed func(Finding)
	client  *http.Client // asks ready (nil: one of its own, from this namespace)

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	expect  bool // the next exit is ours (kill or shutdown)
	stopped bool // SIGSTOPped
}

// start runs the process and waits until ready answers.
func (p *proc) start(ctx context.Context) error {
	p.mu.Lock()
	if p.cmd != nil {
		p.mu.Unlock()
		return nil
	}
	log, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		p.mu.Unlock()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	fmt.Fprintf(log, "=== chaos: %s starts at %s\n", p.name, time.Now().Format(time.RFC3339Nano))
	cmd := p.command()
	cmd.Stdout, cmd.Stderr = log, log
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		p.mu.Unlock()
		log.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done, p.expect, p.stopped = cmd, done, false, false
	p.mu.Unlock()
	go p.wait(cmd, done, log)
	return p.waitReady(ctx, done)
}

// wait reaps the process and records a crash when nobody killed it.
func (p *proc) wait(cmd *exec.Cmd, done chan struct{}, log *os.File) {
	err := cmd.Wait()
	log.Close()
	p.mu.Lock()
	expected := p.expect
	if p.cmd == cmd {
		p.cmd = nil
	}
	p.mu.Unlock()
	close(done)
	if !expected && p.crashed != nil {
		p.crashed(Finding{Class: Crash, Key: p.name,
			Detail: fmt.Sprintf("%s exited unexpectedly at %s: %v; log tail:\n%s", p.name, time.Now().Format("15:04:05.000"), err, tail(p.logPath, 15))})
	}
}

// waitReady polls the ready URL until it answers or the process exits.
func (p *proc) waitReady(ctx context.Context, done chan struct{}) error {
	c := p.client
	if c == nil {
		c = &http.Client{Timeout: time.Second}
	}
	err := poll(ctx, 30*time.Second, 50*time.Millisecond, func(ctx context.Context) (bool, error) {
		select {
		case <-done:
			return false, fmt.Errorf("%s exited while starting; log tail:\n%s", p.name, tail(p.logPath, 15))
		default:
		}
		if p.probe != nil {
			return p.probe(ctx), nil
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.ready, nil)
		if err != nil {
			return false, err
		}
		resp, err := c.Do(req)
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	return nil
}

// kill ends the process with SIGKILL (a crash the schedule asked for) and
// waits for it.
func (p *proc) kill() {
	if done := p.end(syscall.SIGKILL); done != nil {
		<-done
	}
}

// end sends sig to the process as an expected end and returns what closes
// when it has exited (nil: it isn't running).
func (p *proc) end(sig syscall.Signal) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return nil
	}
	p.expect = true
	if sig == syscall.SIGKILL {
		p.stopped = false
	}
	_ = p.cmd.Process.Signal(sig)
	return p.done
}

// shutdown asks the process to end with sig and waits up to grace for it,
// then kills it: for a server that must clean up after itself
// (PostgreSQL's shared memory).
func (p *proc) shutdown(sig syscall.Signal, grace time.Duration) {
	done := p.end(sig)
	if done == nil {
		return
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		p.kill()
	}
}

// signal sends SIGSTOP or SIGCONT.
func (p *proc) signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return fmt.Errorf("%s is not running", p.name)
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("%s: %v: %w", p.name, sig, err)
	}
	p.stopped = sig == syscall.SIGSTOP
	return nil
}

// running reports whether the process runs (stopped or not).
func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil
}

// heal makes the process run and not stopped.
func (p *proc) heal(ctx context.Context) error {
	p.mu.Lock()
	stopped, runs := p.stopped, p.cmd != nil
	p.mu.Unlock()
	if stopped {
		if err := p.signal(syscall.SIGCONT); err != nil {
			return err
		}
	}
	if !runs {
		return p.start(ctx)
	}
	return nil
}

// tail is the last n lines of a log file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	lines = lines[max(0, len(lines)-n):]
	return "  " + strings.ReplaceAll(string(bytes.Join(lines, []byte("\n"))), "\n", "\n  ")
}

// poll calls cond every interval until it is true, returns an error, the
// deadline passes or ctx ends: the one wait helper of this package (no
// sleep that hopes).
func poll(ctx context.Context, deadline, interval time.Duration, cond func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		ok, err := cond(ctx)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("not within %s", deadline)
			}
			return ctx.Err()
		case <-t.C:
		}
	}
}

// isStopped reports whether the process is SIGSTOPped.
func (p *proc) isStopped() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stopped
}
