package chaos

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cring-dev/cring/internal/pgbin"
	"github.com/jackc/pgx/v5"
)

// pgState is the PostgreSQL every proxy shares its state in
// (Options.State): a throwaway server of this run, started as
// internal/pgtest starts one for tests (initdb, then the server as the
// postgres user when we are root: it refuses to run as root), on the
// state host with test hosts, else on loopback.
type pgState struct {
	url  string // what the proxies get as --state
	proc *proc
}

// startState initialises a database cluster in the private dir and runs
// PostgreSQL on addr (host:port) until the run ends.
func (c *cluster) startState(ctx context.Context, addr string) error {
	bin, err := pgbin.Dir()
	if err != nil {
		return err
	}
	cred, err := pgbin.Credential()
	if err != nil {
		return err
	}
	dir := filepath.Join(c.tmp, "pg")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	if cred != nil {
		// The server runs as postgres: it owns its directory, and the
		// private dir above must let it through.
		for _, d := range []string{c.tmp, dir} {
			if err := os.Chown(d, int(cred.Uid), int(cred.Gid)); err != nil {
				return fmt.Errorf("state: chown %s: %w", d, err)
			}
		}
	}
	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres",
		"--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	initdb.Dir = dir // the postgres user may not read our working directory
	if out, err := initdb.CombinedOutput(); err != nil {
		return fmt.Errorf("state: initdb: %w\n%s", err, out)
	}
	// initdb trusts loopback only; the proxies come from their hosts, on
	// the run's own bridge (samenet: the server's directly attached
	// subnet, nothing routed).
	hba, err := os.OpenFile(filepath.Join(data, "pg_hba.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("state: %w", err)
	}
	_, werr := fmt.Fprintln(hba, "host all all samenet trust")
	if err := errors.Join(werr, hba.Close()); err != nil {
		return fmt.Errorf("state: pg_hba.conf: %w", err)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("state: %w", err)
	}
	args := []string{"-D", data, "-c", "listen_addresses=" + host, "-p", port,
		"-k", dir, // its unix socket here, not in /var/run/postgresql
		"-c", "max_connections=300",
		// Throwaway data: durability costs the machine's time for nothing.
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"}
	s := &pgState{url: fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", addr)}
	s.proc = &proc{name: "state", logPath: filepath.Join(c.dir, "logs", "state.log"), crashed: c.crashed,
		command: func() *exec.Cmd {
			var cmd *exec.Cmd
			switch {
			case c.hosts != nil:
				// ip netns exec needs root; setpriv then drops to postgres
				// and sets the parent-death signal again (a change of user
				// clears it), so the server still dies with this process.
				cmd = c.hosts.state.Command("setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
					"--pdeathsig=KILL", filepath.Join(bin, "postgres"))
				cmd.Args = append(cmd.Args, args...)
			default:
				cmd = exec.Command(filepath.Join(bin, "postgres"), args...)
				cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
			}
			cmd.Dir = dir
			cmd.Env = childEnv()
			return cmd
		},
		probe: func(ctx context.Context) bool { return s.ping(ctx, c.hosts) == nil },
	}
	c.o.logf("starting the shared state: PostgreSQL on %s", addr)
	if err := s.proc.start(ctx); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	c.state = s
	return nil
}

// ping connects to the server (from the clients' host with test hosts)
// and asks it a question: it answers once it accepts sessions.
func (s *pgState) ping(ctx context.Context, hosts *hostNet) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := s.connect(ctx, hosts)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.Ping(ctx)
}

// connect opens a session, from the clients' host with test hosts.
func (s *pgState) connect(ctx context.Context, hosts *hostNet) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(s.url)
	if err != nil {
		return nil, err
	}
	if hosts != nil {
		cfg.DialFunc = hosts.dial
	}
	return pgx.ConnectConfig(ctx, cfg)
}

// dump writes every cring_ table as it is at the end of a kept run
// (logs/state.<table>.tsv): which hints are still owed, who holds their
// leases, the proxies' last heartbeats.
func (s *pgState) dump(ctx context.Context, hosts *hostNet, dir string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := s.connect(ctx, hosts)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, `SELECT table_name FROM information_schema.tables
		WHERE table_schema = 'public' AND table_name LIKE 'cring\_%' ORDER BY table_name`)
	if err != nil {
		return err
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	var errs []error
	for _, t := range tables {
		errs = append(errs, dumpTable(ctx, conn, t, filepath.Join(dir, "state."+t+".tsv")))
	}
	return errors.Join(errs...)
}

func dumpTable(ctx context.Context, conn *pgx.Conn, table, path string) error {
	rows, err := conn.Query(ctx, "SELECT * FROM "+pgx.Identifier{table}.Sanitize())
	if err != nil {
		return fmt.Errorf("%s: %w", table, err)
	}
	defer rows.Close()
	var b strings.Builder
	for i, f := range rows.FieldDescriptions() {
		if i > 0 {
			b.WriteByte('\t')
		}
		b.WriteString(f.Name)
	}
	b.WriteByte('\n')
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return fmt.Errorf("%s: %w", table, err)
		}
		for i, v := range vals {
			if i > 0 {
				b.WriteByte('\t')
			}
			fmt.Fprintf(&b, "%v", v)
		}
		b.WriteByte('\n')
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("%s: %w", table, err)
	}
	return os.WriteFile(path, []byte(b.String()), 0o600)
}

// stop shuts the server down at once (SIGQUIT: immediate shutdown, which
// still removes its shared memory).
func (s *pgState) stop() { s.proc.shutdown(syscall.SIGQUIT, 10*time.Second) }
