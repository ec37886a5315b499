// Package miniotest runs a real MinIO server (single drive, loopback) for
// tests. The binary comes from $CRING_MINIO_BIN, then .tools/bin/minio under
// the module root (scripts/install-minio puts it there), then $PATH.
package miniotest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/devcluster"
)

// Server is one MinIO process; Stop and Start take it down and bring it back
// on the same address and data directory.
type Server struct {
	Endpoint  string // http://127.0.0.1:port
	AccessKey string
	SecretKey string
	Dir       string // data directory

	t       testing.TB
	bin     string
	addr    string
	console string
	home    string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	out  *lockedWriter
}

// Start runs MinIO for the test and stops it in t.Cleanup. A missing binary
// fails the test: MinIO is part of the test suite, not optional.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	ports, err := devcluster.FreePorts("127.0.0.1", 2)
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	s := &Server{
		Endpoint:  fmt.Sprintf("http://127.0.0.1:%d", ports[0]),
		AccessKey: "cringtest",
		SecretKey: "cringtest-secret",
		Dir:       filepath.Join(tmp, "data"),
		t:         t,
		bin:       bin,
		addr:      fmt.Sprintf("127.0.0.1:%d", ports[0]),
		console:   fmt.Sprintf("127.0.0.1:%d", ports[1]),
		home:      tmp,
	}
	t.Cleanup(func() { s.stop() })
	s.Start()
	return s
}

// Binary finds the minio executable.
func Binary() (string, error) {
	if p := os.Getenv("CRING_MINIO_BIN"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("CRING_MINIO_BIN=%s: %w", p, err)
		}
		return p, nil
	}
	if root, err := moduleRoot(); err == nil {
		p := filepath.Join(root, ".tools", "bin", "minio")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("minio"); err == nil {
		return p, nil
	}
	return "", errors.New("MinIO not installed: run scripts/install-minio (scripts/test does)")
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// Start runs the server (again) and waits until it is live.
func (s *Server) Start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return
	}
	cmd := exec.Command(s.bin, "server", "--quiet", "--address", s.addr, "--console-address", s.console,
		"--certs-dir", filepath.Join(s.home, "certs"), s.Dir)
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+s.AccessKey,
		"MINIO_ROOT_PASSWORD="+s.SecretKey,
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
		"HOME="+s.home,
	)
	out := &lockedWriter{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = dieWithParent()
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start minio: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.cmd, s.done, s.out = cmd, done, out
	if err := waitLive(s.addr, done, 30*time.Second); err != nil {
		s.t.Fatalf("minio on %s: %v\n%s", s.addr, err, out.String())
	}
}

// Stop takes the server down (its data stays).
func (s *Server) Stop() {
	s.t.Helper()
	if err := s.stop(); err != nil {
		s.t.Fatal(err)
	}
}

func (s *Server) stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return nil
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
	// The port must be free before a Start reuses it.
	for range 100 {
		resp, err := http.Get("http://" + s.addr + "/minio/health/live")
		if err != nil {
			return nil
		}
		resp.Body.Close()
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("minio on %s still answers after stop", s.addr)
}

func waitLive(addr string, exited <-chan struct{}, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/minio/health/live", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-exited:
			return errors.New("exited before it was live")
		case <-ctx.Done():
			return fmt.Errorf("not live within %s", d)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// lockedWriter collects the server's output for failure messages.
type lockedWriter struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
