// Package haproxy is docs/deploy.md's haproxy.cfg ("Several proxies behind
// a load balancer") as code, for the tests and chaos runs that put HAProxy
// in front of several proxies: the config rendered from one template (a
// test holds it against the doc's example), HAProxy found and started, and
// its servers' states read from its stats socket.
package haproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"text/template"
	"time"
)

// The backends' names, as the stats socket reports them.
const (
	HTTPBackend = "cring_http"
	SSHBackend  = "cring_ssh"
)

// Server is one cring proxy behind HAProxy.
type Server struct {
	Name string
	HTTP string // its charm HTTP address, host:port
	SSH  string // its SSH address, host:port (with Config.SSH only)
	// AdminPort is its admin address's port, where HAProxy checks
	// /readyz on the server's host.
	AdminPort int
}

// Config is haproxy.cfg for some proxies. The zero values of the options
// give deploy.md's example.
type Config struct {
	HTTP    string // the HTTP frontend's bind address (":35354")
	SSH     string // the SSH frontend's bind address; "" for none (clients on HTTP only)
	Servers []Server
	// CheckInterval is how often each proxy's /readyz is checked (2 s
	// when zero; two failed checks take a proxy out).
	CheckInterval time.Duration
	StatsSocket   string // a path for the stats socket ("" for none): ServerStates reads it
	// LogFormat, when set, makes HAProxy write a line per connection on
	// its stdout (HAProxy's log-format, e.g. "%ci %b %s").
	LogFormat string
}

var configTemplate = template.Must(template.New("haproxy.cfg").Parse(`global
	maxconn 8192
{{- if .LogFormat}}
	log stdout format raw local0
{{- end}}
{{- if .StatsSocket}}
	stats socket {{.StatsSocket}} mode 600 level admin
{{- end}}

defaults
	mode tcp
{{- if .LogFormat}}
	log global
	log-format {{printf "%q" .LogFormat}}
{{- end}}
	timeout connect 2s
	timeout client 10m          # as cring's ssh-idle-timeout
	timeout server 10m
	timeout check 2s
	retries 3
	option redispatch 1         # a connection a proxy refuses is retried on another

frontend charm_http
	bind {{.HTTP}}
	stick-table type ipv6 size 100k expire 10m store conn_cur
	tcp-request connection track-sc0 src
	tcp-request connection reject if { sc0_conn_cur gt 256 }
	default_backend cring_http
{{- if .SSH}}

frontend charm_ssh
	bind {{.SSH}}
	stick-table type ipv6 size 100k expire 10m store conn_cur
	tcp-request connection track-sc0 src
	tcp-request connection reject if { sc0_conn_cur gt 64 }
	default_backend cring_ssh
{{- end}}

backend cring_http
	balance roundrobin
	option httpchk GET /readyz
	http-check expect status 200
	default-server {{.Check}}
{{- range .Servers}}
	server {{.Name}} {{.HTTP}}{{$.PortOf .}}
{{- end}}
{{- if .SSH}}

backend cring_ssh
	balance leastconn
	option httpchk GET /readyz
	http-check expect status 200
	default-server {{.Check}}
{{- range .Servers}}
	server {{.Name}} {{.SSH}}{{$.PortOf .}}
{{- end}}
{{- end}}
`))

// view is a Config as the template reads it.
type view struct {
	Config
	Check    string // the default-server line's options
	samePort bool   // every server's admin port is the same: said once, on default-server
}

// PortOf is a server line's check port, when the servers' differ (several
// proxies on one host).
func (v view) PortOf(s Server) string {
	if v.samePort {
		return ""
	}
	return fmt.Sprintf(" port %d", s.AdminPort)
}

// Render is the config's text.
func (c Config) Render() ([]byte, error) {
	if c.HTTP == "" || len(c.Servers) == 0 {
		return nil, errors.New("haproxy.cfg: needs an HTTP bind address and servers")
	}
	for _, s := range c.Servers {
		if s.Name == "" || s.HTTP == "" || s.AdminPort <= 0 || (c.SSH != "" && s.SSH == "") {
			return nil, fmt.Errorf("haproxy.cfg: server %+v lacks a name, an address or an admin port", s)
		}
	}
	if strings.Contains(c.LogFormat, "\n") {
		return nil, errors.New("haproxy.cfg: a log format of several lines")
	}
	inter := c.CheckInterval
	if inter <= 0 {
		inter = 2 * time.Second
	}
	v := view{Config: c, samePort: true}
	for _, s := range c.Servers {
		v.samePort = v.samePort && s.AdminPort == c.Servers[0].AdminPort
	}
	v.Check = "check"
	if v.samePort {
		v.Check += fmt.Sprintf(" port %d", c.Servers[0].AdminPort)
	}
	v.Check += " inter " + duration(inter) + " fall 2 rise 2"
	var b bytes.Buffer
	if err := configTemplate.Execute(&b, v); err != nil {
		return nil, fmt.Errorf("haproxy.cfg: %w", err)
	}
	return b.Bytes(), nil
}

// duration is d in HAProxy's units: whole seconds, else milliseconds.
func duration(d time.Duration) string {
	if d%time.Second == 0 {
		return fmt.Sprintf("%ds", d/time.Second)
	}
	return fmt.Sprintf("%dms", max(1, d/time.Millisecond))
}

// debianPath is where Debian installs HAProxy: /usr/sbin, which a user's
// PATH may lack.
const debianPath = "/usr/sbin/haproxy"

// Binary finds HAProxy: haproxy on PATH, else Debian's.
func Binary() (string, error) {
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p, nil
	}
	if _, err := os.Stat(debianPath); err != nil {
		return "", fmt.Errorf("HAProxy is not installed (neither haproxy on PATH nor %s; scripts/install-peers installs it)", debianPath)
	}
	return debianPath, nil
}

// Args are HAProxy's arguments to run configPath in the foreground
// (-db), so that its parent sees it exit.
func Args(configPath string) []string {
	return []string{"-db", "-f", configPath}
}

// Process is a running HAProxy.
type Process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start runs bin on configPath in the foreground, its output (errors, and
// the connection log with Config.LogFormat) to out; ending ctx kills it.
func Start(ctx context.Context, bin, configPath string, out io.Writer) (*Process, error) {
	cmd := exec.CommandContext(ctx, bin, Args(configPath)...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start haproxy: %w", err)
	}
	p := &Process{cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return p, nil
}

// Done is closed once HAProxy has exited; Err then says how.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is how HAProxy exited, once Done is closed.
func (p *Process) Err() error {
	<-p.done
	return p.err
}

// Stop kills HAProxy and waits for it to exit.
func (p *Process) Stop() {
	_ = p.cmd.Process.Kill() // fails only when it has exited already
	<-p.done
}

// ServerStates is each server's state in HAProxy, from its stats socket
// at sock, by backend and name: "cring_http/p1" is "UP", "DOWN", "UP 1/2"
// while going down, "NO CHECK"…
func ServerStates(ctx context.Context, sock string) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, fmt.Errorf("haproxy stats socket: %w", err)
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	_ = c.SetDeadline(deadline)
	if _, err := io.WriteString(c, "show stat\n"); err != nil {
		return nil, fmt.Errorf("haproxy stats socket: %w", err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return nil, fmt.Errorf("haproxy stats socket: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if !strings.HasPrefix(lines[0], "# ") {
		return nil, fmt.Errorf("haproxy show stat: %q", b)
	}
	col := slices.Index(strings.Split(strings.TrimPrefix(lines[0], "# "), ","), "status")
	out := map[string]string{}
	for _, l := range lines[1:] {
		f := strings.Split(l, ",")
		if col < 0 || len(f) <= col {
			return nil, fmt.Errorf("haproxy show stat: %q", l)
		}
		// The frontend's and backend's own rows are not servers.
		if f[1] != "FRONTEND" && f[1] != "BACKEND" {
			out[f[0]+"/"+f[1]] = f[col]
		}
	}
	return out, nil
}
