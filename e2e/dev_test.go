package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/charmbracelet/charm/client"
	charmfs "github.com/charmbracelet/charm/fs"
	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/testwait"
)

// devProc is a running `cring dev` process.
type devProc struct {
	cmd    *exec.Cmd
	stdout *syncBuffer
	done   chan error
}

// syncBuffer collects a process's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startDev(t *testing.T, dir string, portsFrom int) *devProc {
	t.Helper()
	cmd := exec.Command(cringBinary(t), "dev", "--dir", dir, "--ports-from", fmt.Sprint(portsFrom), "--nodes", "3")
	out := &syncBuffer{}
	cmd.Stdout = out
	cmd.Stderr = testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &devProc{cmd: cmd, stdout: out, done: make(chan error, 1)}
	go func() { d.done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-d.done })
	admin := fmt.Sprintf("127.0.0.1:%d", portsFrom+3)
	testwait.For(t, 20*time.Second, "the condition", func() bool {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return d
}

// stop sends Ctrl-C and waits for a clean exit.
func (d *devProc) stop(t *testing.T) {
	t.Helper()
	_ = d.cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-d.done:
		d.done <- err // for the cleanup
		if err != nil {
			t.Fatalf("cring dev exited with %v after Ctrl-C", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("cring dev did not stop within 15s of Ctrl-C")
	}
}

// TestDevSmoke: `cring dev` gives a working replicated cluster to charm's
// client libraries; a node stopped through the control surface doesn't stop
// reads; data survives a restart with the same --dir.
func TestDevSmoke(t *testing.T) {
	// SSH, HTTP, (stats), admin on four consecutive ports.
	base, err := devcluster.FreePortRange("127.0.0.1", 4)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	d := startDev(t, dir, base)
	wantExport := fmt.Sprintf("export CHARM_HOST=127.0.0.1 CHARM_SSH_PORT=%d CHARM_HTTP_PORT=%d\n", base, base+1)
	testwait.For(t, 5*time.Second, "the condition", func() bool { return strings.Contains(d.stdout.String(), wantExport) })

	dataDir := t.TempDir()
	env := map[string]string{
		"CHARM_HOST": "127.0.0.1", "CHARM_SSH_PORT": fmt.Sprint(base), "CHARM_HTTP_PORT": fmt.Sprint(base + 1), "CHARM_DATA_DIR": dataDir,
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	u := devUser(t)
	u.put(t, "notes/today.md", []byte("# ring"))
	if got := string(u.get(t, "notes/today.md")); got != "# ring" {
		t.Fatalf("cat = %q", got)
	}
	if got := u.ls(t, "notes"); len(got) != 1 || got[0] != "today.md" {
		t.Fatalf("ls = %v", got)
	}
	kvSet(t, u, "dev", "k", "v")

	// Stop a node through the control surface, as a user would.
	admin := fmt.Sprintf("127.0.0.1:%d", base+3)
	if out, err := exec.Command(cringBinary(t), "dev", "node", "stop", "node1", "--admin", admin).CombinedOutput(); err != nil || !strings.Contains(string(out), "stopped") {
		t.Fatalf("cring dev node stop: %v\n%s", err, out)
	}
	if got := string(u.get(t, "notes/today.md")); got != "# ring" {
		t.Fatalf("cat with node1 stopped = %q", got)
	}
	if got := kvResetGet(t, u, "dev", "k"); got != "v" {
		t.Fatalf("kv with node1 stopped = %q", got)
	}
	u.put(t, "notes/later.md", []byte("still writing"))

	d.stop(t)
	d2 := startDev(t, dir, base)
	u2 := devUser(t) // a fresh client process, same key
	if got := string(u2.get(t, "notes/later.md")); got != "still writing" {
		t.Fatalf("after restart = %q", got)
	}
	if got := u2.ls(t, "notes"); len(got) != 2 {
		t.Fatalf("ls after restart = %v", got)
	}
	if got := kvResetGet(t, u2, "dev", "k"); got != "v" {
		t.Fatalf("kv after restart = %q", got)
	}
	d2.stop(t)
}

// devUser is a charm client configured from CHARM_* (no seeding: cring dev
// shares one account store, so any node knows every user).
func devUser(t *testing.T) *user {
	t.Helper()
	cc, err := client.NewClientWithDefaults()
	if err != nil {
		t.Fatal(err)
	}
	cfs, err := charmfs.NewFSWithClient(cc)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, k := range []string{"CHARM_HOST", "CHARM_SSH_PORT", "CHARM_HTTP_PORT", "CHARM_DATA_DIR"} {
		env[k] = os.Getenv(k)
	}
	return &user{cc: cc, fs: cfs, env: env}
}
