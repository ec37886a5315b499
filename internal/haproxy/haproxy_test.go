package haproxy

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/testwait"
)

// deployExample is docs/deploy.md's example: proxy1 at 10.0.0.9, proxy2 at
// 10.0.0.19, the default ports.
var deployExample = Config{
	HTTP: ":35354", SSH: ":35353",
	Servers: []Server{
		{Name: "proxy1", HTTP: "10.0.0.9:35354", SSH: "10.0.0.9:35353", AdminPort: 35356},
		{Name: "proxy2", HTTP: "10.0.0.19:35354", SSH: "10.0.0.19:35353", AdminPort: 35356},
	},
}

// TestDeployDocExample: docs/deploy.md's haproxy.cfg is what Render writes
// for its example, so the tests and chaos runs use the setup the doc gives.
func TestDeployDocExample(t *testing.T) {
	doc, err := os.ReadFile("../../docs/deploy.md")
	if err != nil {
		t.Fatal(err)
	}
	const intro = "Debian's `haproxy`, `/etc/haproxy/haproxy.cfg`:\n\n```\n"
	_, rest, ok := strings.Cut(string(doc), intro)
	block, _, closed := strings.Cut(rest, "```\n")
	if !ok || !closed {
		t.Fatalf("docs/deploy.md has no code block after %q", intro)
	}
	got, err := deployExample.Render()
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != block {
		t.Errorf("Render() of deploy.md's example differs from docs/deploy.md:\n--- rendered\n%s--- docs/deploy.md\n%s", got, block)
	}
}

// TestRender: each variant the tests and chaos runs use is a config HAProxy
// accepts (haproxy -c), with the lines its options ask for.
func TestRender(t *testing.T) {
	bin := binary(t)
	sock := filepath.Join(t.TempDir(), "haproxy.sock")
	loopback := []Server{
		{Name: "p1", HTTP: "127.0.0.1:4001", SSH: "127.0.0.1:4002", AdminPort: 4003},
		{Name: "p2", HTTP: "127.0.0.1:4011", SSH: "127.0.0.1:4012", AdminPort: 4013},
	}
	for _, tc := range []struct {
		name          string
		cfg           Config
		want, wantNot []string
		wantErr       bool
	}{
		{name: "deploy.md", cfg: deployExample,
			want:    []string{"default-server check port 35356 inter 2s fall 2 rise 2", "\tserver proxy2 10.0.0.19:35353\n", "bind :35353"},
			wantNot: []string{"stats socket", "log"}},
		{name: "HTTP only, socket and log", cfg: Config{HTTP: "127.0.0.1:4000", Servers: []Server{loopback[0]},
			CheckInterval: 500 * time.Millisecond, StatsSocket: sock, LogFormat: "lb %ci:%cp %b %s %ts %Tw/%Tc/%Tt"},
			want: []string{"default-server check port 4003 inter 500ms fall 2 rise 2", "\tserver p1 127.0.0.1:4001\n",
				"stats socket " + sock + " mode 600", `log-format "lb %ci:%cp %b %s %ts %Tw/%Tc/%Tt"`, "log stdout"},
			wantNot: []string{"charm_ssh", "cring_ssh"}},
		{name: "SSH, admin port per server", cfg: Config{HTTP: "127.0.0.1:4000", SSH: "127.0.0.1:4010", Servers: loopback,
			CheckInterval: 1500 * time.Millisecond, StatsSocket: sock, LogFormat: "lb %ci %b %s %ts"},
			want: []string{"default-server check inter 1500ms fall 2 rise 2", "\tserver p2 127.0.0.1:4011 port 4013\n",
				"\tserver p2 127.0.0.1:4012 port 4013\n", "reject if { sc0_conn_cur gt 64 }"}},
		{name: "no servers", cfg: Config{HTTP: ":1"}, wantErr: true},
		{name: "no bind address", cfg: Config{Servers: loopback}, wantErr: true},
		{name: "SSH without the servers'", cfg: Config{HTTP: ":1", SSH: ":2", Servers: []Server{{Name: "p", HTTP: "h:1", AdminPort: 3}}}, wantErr: true},
		{name: "no admin port", cfg: Config{HTTP: ":1", Servers: []Server{{Name: "p", HTTP: "h:1"}}}, wantErr: true},
		{name: "log format of two lines", cfg: Config{HTTP: ":1", Servers: []Server{loopback[0]}, LogFormat: "a\nb"}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := tc.cfg.Render()
			if tc.wantErr {
				if err == nil {
					t.Fatalf("Render() = nil error, want one:\n%s", b)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range tc.want {
				if !strings.Contains(string(b), s) {
					t.Errorf("no %q in:\n%s", s, b)
				}
			}
			for _, s := range tc.wantNot {
				if strings.Contains(string(b), s) {
					t.Errorf("%q in:\n%s", s, b)
				}
			}
			path := filepath.Join(t.TempDir(), "haproxy.cfg")
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(bin, "-c", "-f", path).CombinedOutput(); err != nil {
				t.Errorf("haproxy -c: %v\n%s\n%s", err, out, b)
			}
		})
	}
}

// TestServerStates runs HAProxy in front of two servers, one ready and one
// answering 503 on /readyz, and reads their states from the stats socket;
// a connection goes to the ready one and is logged, and ending the context
// stops HAProxy.
func TestServerStates(t *testing.T) {
	bin := binary(t)
	server := func(name string, ready int) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/readyz" {
				w.WriteHeader(ready)
			}
			io.WriteString(w, name)
		}))
		t.Cleanup(s.Close)
		return s
	}
	var servers []Server
	for _, s := range []struct {
		name  string
		ready int
	}{{"p1", http.StatusOK}, {"p2", http.StatusServiceUnavailable}} {
		addr := server(s.name, s.ready).Listener.Addr().String()
		_, port, _ := net.SplitHostPort(addr)
		adminPort, _ := strconv.Atoi(port)
		// Its one listener serves as HTTP, SSH and admin address.
		servers = append(servers, Server{Name: s.name, HTTP: addr, SSH: addr, AdminPort: adminPort})
	}
	ports, err := devcluster.FreePorts("127.0.0.1", 2)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := Config{
		HTTP: fmt.Sprintf("127.0.0.1:%d", ports[0]), SSH: fmt.Sprintf("127.0.0.1:%d", ports[1]),
		Servers: servers, CheckInterval: 100 * time.Millisecond,
		StatsSocket: filepath.Join(dir, "haproxy.sock"), LogFormat: "lb %ci %b %s",
	}
	b, err := cfg.Render()
	if err != nil {
		t.Fatal(err)
	}
	cfgPath, logPath := filepath.Join(dir, "haproxy.cfg"), filepath.Join(dir, "haproxy.log")
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	p, err := Start(ctx, bin, cfgPath, logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); p.Stop() })

	want := map[string]string{"cring_http/p1": "UP", "cring_http/p2": "DOWN", "cring_ssh/p1": "UP", "cring_ssh/p2": "DOWN"}
	var last map[string]string
	testwait.For(t, 10*time.Second, fmt.Sprintf("states %v", want), func() bool {
		select {
		case <-p.Done():
			log, _ := os.ReadFile(logPath)
			t.Fatalf("haproxy exited: %v\n%s", p.Err(), log)
		default:
		}
		st, err := ServerStates(ctx, cfg.StatsSocket)
		if err == nil {
			last = st
		}
		return maps.Equal(st, want)
	})
	t.Logf("states: %v", last)

	resp, err := http.Get("http://" + cfg.HTTP + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "p1" {
		t.Errorf("through HAProxy: %q, want p1's answer", body)
	}
	testwait.For(t, 5*time.Second, "HAProxy's log line for the request", func() bool {
		log, _ := os.ReadFile(logPath)
		return strings.Contains(string(log), "lb 127.0.0.1 cring_http p1\n")
	})

	if _, err := ServerStates(ctx, filepath.Join(dir, "none.sock")); err == nil {
		t.Error("ServerStates on no socket: no error")
	}
	cancel()
	testwait.For(t, 5*time.Second, "HAProxy to exit once its context ends", func() bool {
		select {
		case <-p.Done():
			return true
		default:
			return false
		}
	})
}

func binary(t *testing.T) string {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}
