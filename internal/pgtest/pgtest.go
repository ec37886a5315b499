// Package pgtest runs a real, throwaway PostgreSQL server for tests: initdb
// and pg_ctl as the postgres OS user (PostgreSQL refuses to run as root) in a
// temporary directory, on a free loopback port. One server serves a whole
// test binary; every Start gets a fresh database, dropped in t.Cleanup.
//
// A watchdog process holds the server's life to the test binary's: it waits
// on a pipe only this process writes to, and when the binary exits, however
// it exits, it stops the server and removes the directory.
package pgtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/pgbin"
	"github.com/jackc/pgx/v5"
)

type server struct {
	port     int
	watchdog *exec.Cmd
	alive    *os.File // write end of the watchdog's pipe: closing it stops the server
}

var (
	once     sync.Once
	shared   *server
	startErr error
	dbSeq    atomic.Int64
)

// Start returns the URL of a new, empty database on the shared test server
// (postgres://postgres@127.0.0.1:PORT/NAME?sslmode=disable). The database is
// dropped when the test ends. It fails the test if PostgreSQL is not installed.
func Start(t testing.TB) string {
	t.Helper()
	once.Do(func() { shared, startErr = startServer() })
	if startErr != nil {
		t.Fatal(startErr)
	}
	name := fmt.Sprintf("t_%d_%d", os.Getpid(), dbSeq.Add(1))
	if err := shared.admin(fmt.Sprintf("CREATE DATABASE %s", name)); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		// FORCE ends connections a test left open (a crashed node's pool).
		if err := shared.admin(fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", name)); err != nil {
			t.Errorf("pgtest: drop database: %v", err)
		}
	})
	return shared.url(name)
}

func (s *server) url(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, db)
}

func (s *server) admin(sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.url("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

func startServer() (*server, error) {
	bin, err := pgbin.Dir()
	if err != nil {
		return nil, err
	}
	cred, err := pgbin.Credential()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "cring-pgtest-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("pgtest: chown %s: %w", dir, err)
		}
	}
	data := filepath.Join(dir, "data")
	pgCtl := filepath.Join(bin, "pg_ctl")

	s := &server{}
	if err := s.startWatchdog(cred, pgCtl, data, dir); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	fail := func(err error) (*server, error) {
		s.stop()
		return nil, err
	}
	if out, err := run(cred, filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres",
		"--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"); err != nil {
		return fail(fmt.Errorf("pgtest: initdb: %v\n%s", err, out))
	}
	// A port can be taken between FreePorts and the listen: try a few.
	var last error
	for range 5 {
		ports, err := devcluster.FreePorts("127.0.0.1", 1)
		if err != nil {
			return fail(err)
		}
		opts := strings.Join([]string{
			"-c listen_addresses=127.0.0.1",
			"-p " + strconv.Itoa(ports[0]),
			"-k " + dir, // unix socket here, not /var/run/postgresql
			"-c max_connections=300",
			"-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
		}, " ")
		out, err := run(cred, pgCtl, "-D", data, "-l", filepath.Join(dir, "log"), "-w", "-t", "60", "-o", opts, "start")
		if err == nil {
			s.port = ports[0]
			return s, nil
		}
		log, _ := os.ReadFile(filepath.Join(dir, "log"))
		last = fmt.Errorf("pgtest: pg_ctl start: %v\n%s\n%s", err, out, log)
	}
	return fail(last)
}

// startWatchdog starts the process that stops the server and removes dir
// once this process's end of its pipe closes.
func (s *server) startWatchdog(cred *syscall.Credential, pgCtl, data, dir string) error {
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("pgtest: watchdog pipe: %w", err)
	}
	defer r.Close()
	cmd := exec.Command("/bin/sh", "-c",
		`cat >/dev/null; "$0" -D "$1" -m immediate -w -t 20 stop >/dev/null 2>&1; rm -rf "$2"`,
		pgCtl, data, dir)
	cmd.Stdin = r
	// Its own process group: a Ctrl-C to the test must not kill it first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cred}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("pgtest: start watchdog: %w", err)
	}
	s.watchdog, s.alive = cmd, w
	return nil
}

// stop stops the server and removes its directory now.
func (s *server) stop() {
	s.alive.Close()
	_ = s.watchdog.Wait()
}

func run(cred *syscall.Credential, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cred}
	cmd.Dir = os.TempDir() // the postgres user may not read our working directory
	return cmd.CombinedOutput()
}
