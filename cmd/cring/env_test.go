package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/config"
	"github.com/cring-dev/cring/internal/devcluster"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cring.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func nodeNames(c *config.Config) []string {
	var names []string
	for _, n := range c.Nodes {
		names = append(names, n.Name)
	}
	return names
}

// TestServeReloadWithEnvHosts: cring serve resolves its configuration again
// on every SIGHUP and config file change; with CRING_HOST set, the node
// list stays the file's nodes and then the variable's, once each.
func TestServeReloadWithEnvHosts(t *testing.T) {
	t.Setenv("CRING_HOST", "http://10.0.0.2:35354, http://10.0.0.3:35354")
	path := writeConfig(t, "replicas: 2\nnodes:\n  - {name: one, url: \"http://10.0.0.1:35354\"}\n")
	cmd, settings := newServe()
	if err := cmd.ParseFlags([]string{"--config", path, "--data-dir", t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	want := []string{"one", "10.0.0.2:35354", "10.0.0.3:35354"}
	for reload := range 4 {
		cfg, err := serveConfig(settings, os.LookupEnv)
		if err != nil {
			t.Fatalf("load %d: %v", reload+1, err)
		}
		if got := nodeNames(cfg); !slices.Equal(got, want) || cfg.Replicas != 2 {
			t.Fatalf("load %d: nodes %v N=%d, want %v N=2", reload+1, got, cfg.Replicas, want)
		}
	}
}

// TestRepairSettings: cring repair reads the proxy's settings as serve
// does: a variable beats the file, a flag beats both, the file's
// node-timeout and data-dir count, W's default follows N (a one-node
// cluster can be repaired), and the proxy's admin address, which a repair
// does not listen on, needs no token here. The cases that end in "no users
// to scan" got through every check of the configuration.
func TestRepairSettings(t *testing.T) {
	const threeNodes = "nodes:\n  - {url: \"http://10.0.0.1:35354\"}\n  - {url: \"http://10.0.0.2:35354\"}\n  - {url: \"http://10.0.0.3:35354\"}\n"
	for _, tt := range []struct {
		name    string
		file    string
		env     map[string]string
		args    []string
		wantErr string
		check   func(t *testing.T, c *config.Config, proxyDir string)
	}{
		{name: "variable beats the file", file: "replicas: 2\nwrite-quorum: 2\n" + threeNodes,
			env: map[string]string{"CRING_WRITE_QUORUM": "3"}, wantErr: "write-quorum 3 is larger than replicas 2"},
		{name: "flag beats the variable", file: "replicas: 2\n" + threeNodes,
			env: map[string]string{"CRING_WRITE_QUORUM": "3"}, args: []string{"--write-quorum", "1"}, wantErr: "no users to scan",
			check: func(t *testing.T, c *config.Config, _ string) {
				if c.Replicas != 2 || c.WriteQuorum != 1 {
					t.Fatalf("N=%d W=%d, want 2/1", c.Replicas, c.WriteQuorum)
				}
			}},
		{name: "one node", args: []string{"--host", "http://10.0.0.1:35354"}, wantErr: "no users to scan",
			check: func(t *testing.T, c *config.Config, _ string) {
				if c.Replicas != 1 || c.WriteQuorum != 1 {
					t.Fatalf("N=%d W=%d, want 1/1", c.Replicas, c.WriteQuorum)
				}
			}},
		{name: "admin address without its token", file: "admin-address: 10.0.0.9:35356\n" + threeNodes, wantErr: "no users to scan"},
		{name: "file's node timeout and data dir", file: "node-timeout: 5s\ndata-dir: /var/lib/cring\n" + threeNodes, wantErr: "no users to scan",
			check: func(t *testing.T, c *config.Config, proxyDir string) {
				if c.NodeTimeout != 5*time.Second || proxyDir != "/var/lib/cring" {
					t.Fatalf("node timeout %s, proxy data dir %q", c.NodeTimeout, proxyDir)
				}
			}},
		{name: "hosts after the file's nodes", file: threeNodes, env: map[string]string{"CRING_HOST": "http://10.0.0.4:35354"}, wantErr: "no users to scan",
			check: func(t *testing.T, c *config.Config, _ string) {
				if got := nodeNames(c); !slices.Equal(got, []string{"10.0.0.1:35354", "10.0.0.2:35354", "10.0.0.3:35354", "10.0.0.4:35354"}) {
					t.Fatalf("nodes %v", got)
				}
			}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			args := append([]string{"--server-key", "/nonexistent/key", "--public-url", "http://10.0.0.9:35354"}, tt.args...)
			if tt.file != "" {
				args = append(args, "--config", writeConfig(t, tt.file))
			}
			// The whole command, as an operator runs it.
			cmd, f := newRepair()
			cmd.SetArgs(args)
			cmd.SilenceUsage, cmd.SilenceErrors = true, true
			if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			if tt.check != nil {
				c, proxyDir, err := f.config(os.LookupEnv, t.TempDir())
				if err != nil {
					t.Fatal(err)
				}
				tt.check(t, c, proxyDir)
			}
		})
	}
}

// TestDevWriteQuorum: cring dev's W defaults as serve's does (2, or N when
// N < 2), so a one-node dev cluster starts; an explicit W is kept.
func TestDevWriteQuorum(t *testing.T) {
	for _, tt := range []struct {
		nodes  int
		args   []string
		wantN  int
		wantW  int
		errStr string
	}{
		{nodes: 1, wantN: 1, wantW: 1},
		{nodes: 3, wantN: 3, wantW: 2},
		{nodes: 3, args: []string{"--write-quorum", "3"}, wantN: 3, wantW: 3},
		{nodes: 2, args: []string{"--replicas", "1", "--write-quorum", "2"}, errStr: "write-quorum 2 is larger than replicas 1"},
	} {
		t.Run(strings.Join(append([]string{strings.Repeat("n", tt.nodes)}, tt.args...), " "), func(t *testing.T) {
			dir := t.TempDir()
			dc, err := devcluster.New(dir, devcluster.Options{Nodes: tt.nodes, PublicURL: "http://127.0.0.1:1", SharedAccounts: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = dc.Close() })
			cmd, f := newDev()
			if err := cmd.ParseFlags(append([]string{"--dir", dir}, tt.args...)); err != nil {
				t.Fatal(err)
			}
			set, err := f.settings.Resolve(os.LookupEnv)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := devConfig(set, *f, dc)
			if tt.errStr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errStr) {
					t.Fatalf("err = %v, want %q", err, tt.errStr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Replicas != tt.wantN || cfg.WriteQuorum != tt.wantW {
				t.Fatalf("N=%d W=%d, want %d/%d", cfg.Replicas, cfg.WriteQuorum, tt.wantN, tt.wantW)
			}
		})
	}
}

// TestClusterInitHostsVariable: CRING_HOSTS takes commas, as cluster
// init's help and docs/deploy.md say (a list variable was taken whole, one
// host named "10.0.0.1,10.0.0.2,10.0.0.3").
func TestClusterInitHostsVariable(t *testing.T) {
	t.Setenv("CRING_HOSTS", "10.0.0.1, 10.0.0.2,10.0.0.3")
	dir := filepath.Join(t.TempDir(), "cluster")
	cmd := newClusterCmd()
	cmd.SetArgs([]string{"init", "--stock", "--public-url", "http://10.0.0.9:35354", "--dir", dir})
	cmd.SetOut(testLog{t})
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(filepath.Join(dir, "cring.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var urls []string
	for _, n := range c.Nodes {
		urls = append(urls, n.URL)
	}
	if want := []string{"http://10.0.0.1:35354", "http://10.0.0.2:35354", "http://10.0.0.3:35354"}; !slices.Equal(urls, want) {
		t.Fatalf("nodes %v, want %v", urls, want)
	}
}

type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
