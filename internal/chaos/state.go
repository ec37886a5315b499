package chaos

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

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
	bin, err := pgBinDir()
	if err != nil {
		return err
	}
	cred, err := pgCredential()
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
	cfg, err := pgx.ParseConfig(s.url)
	if err != nil {
		return err
	}
	if hosts != nil {
		cfg.DialFunc = hosts.dial
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.Ping(ctx)
}

// dump writes every cring_ table as it is at the end of a kept run
// (logs/state.<table>.tsv): which hints are still owed, who holds their
// leases, the proxies' last heartbeats.
func (s *pgState) dump(ctx context.Context, hosts *hostNet, dir string) error {
	cfg, err := pgx.ParseConfig(s.url)
	if err != nil {
		return err
	}
	if hosts != nil {
		cfg.DialFunc = hosts.dial
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
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

// pgBinDir finds PostgreSQL's server binaries as internal/pgtest does:
// Debian's newest /usr/lib/postgresql/N/bin, else initdb on PATH.
func pgBinDir() (string, error) {
	found, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	version := func(p string) int {
		v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(p))))
		return v
	}
	slices.SortFunc(found, func(a, b string) int { return cmp.Compare(version(b), version(a)) })
	if len(found) > 0 {
		return filepath.Dir(found[0]), nil
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("state: PostgreSQL not installed (scripts/install-postgres installs it)")
}

// pgCredential is who runs PostgreSQL: the postgres user when we are
// root, else ourselves (nil).
func pgCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("state: no postgres OS user (scripts/install-postgres makes it): %w", err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return nil, fmt.Errorf("state: postgres uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, fmt.Errorf("state: postgres gid %q: %w", u.Gid, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}
