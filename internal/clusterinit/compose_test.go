package clusterinit

import (
	"context"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cring-dev/cring/internal/cluster"
	"github.com/cring-dev/cring/internal/config"
)

// TestComposeMatchesUnits checks compose.yaml's structure against what the
// systemd deployment runs, since no container engine runs it here
// (docs/deploy.md, "Everything on one Docker host"): every service restarts,
// is health-checked and keeps its state in a volume; a node container runs
// its unit's ExecStart with its charm.env, changed only by the documented
// container overrides; every file a node's env or the proxy's
// compose/cring.yaml names is mounted from a file this run wrote (or one the
// operator is told to add); health checks speak the scheme the node serves.
func TestComposeMatchesUnits(t *testing.T) {
	for _, tt := range []struct {
		name string
		o    Options
	}{
		{"cring nodes, TLS everywhere", Options{PublicURL: "https://charm.example.com:35354", Hosts: []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"},
			Accounts: "postgres://charm:pw@db/charm", NodeTLS: true}},
		{"cring nodes, plain", Options{PublicURL: "http://10.0.0.9:35354", Hosts: []string{"10.0.0.1", "10.0.0.2"}, Accounts: "postgres://charm:pw@db/charm"}},
		{"stock nodes", Options{PublicURL: "http://10.0.0.9:35354", Hosts: []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}, Stock: true}},
		{"stock nodes, TLS", Options{PublicURL: "https://charm.example.com:35354", Nodes: 3, Stock: true, NodeTLS: true}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "cluster")
			tt.o.Dir = dir
			res, err := Generate(context.Background(), tt.o)
			if err != nil {
				t.Fatal(err)
			}
			c := loadCompose(t, read(t, dir, "compose.yaml"))
			// Host paths the operator supplies or that are made at the
			// first start: the binary, the proxy's certificate, and the
			// state directories.
			supplied := map[string]bool{"./cring": true, "./tls": true, "./compose/postgres": true, "./compose/cring-data": true}
			// mounts maps a container path to its host path, checking each
			// host path exists (or is supplied).
			mounts := func(name string, vols []string) map[string]string {
				m := map[string]string{}
				for _, v := range vols {
					parts := strings.Split(v, ":")
					if len(parts) < 2 {
						t.Fatalf("%s: volume %q", name, v)
					}
					if !supplied[parts[0]] {
						if _, err := os.Stat(filepath.Join(dir, parts[0])); err != nil {
							t.Errorf("%s mounts %s, which was not generated: %v", name, parts[0], err)
						}
					}
					m[parts[1]] = parts[0]
				}
				return m
			}
			mounted := func(m map[string]string, p string) bool {
				for cp := range m {
					if p == cp || strings.HasPrefix(p, cp+"/") {
						return true
					}
				}
				return false
			}
			for name, s := range c.Services {
				if s.Image == "" || s.Restart != "unless-stopped" || len(s.Healthcheck.Test) < 2 || len(s.Volumes) == 0 {
					t.Errorf("service %s: image %q, restart %q, health check %v, volumes %v", name, s.Image, s.Restart, s.Healthcheck.Test, s.Volumes)
				}
			}

			proxyCfg, err := config.Load(filepath.Join(dir, "compose", "cring.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range res.Nodes {
				s, ok := c.Services[n.Name]
				if !ok {
					t.Fatalf("no service %s", n.Name)
				}
				m := mounts(n.Name, s.Volumes)
				// The env a container gets: env_file, then environment.
				env := parseEnv(t, read(t, dir, strings.TrimPrefix(s.EnvFile, "./")))
				unitEnv := parseEnv(t, read(t, dir, filepath.Join(n.Dir, "charm.env")))
				if s.EnvFile != "./"+path.Join(filepath.ToSlash(n.Dir), "charm.env") {
					t.Errorf("%s env_file %s, not its unit's charm.env", n.Name, s.EnvFile)
				}
				overrides := map[string]bool{"CHARM_SERVER_BIND_ADDRESS": true, "CHARM_SERVER_HOST": true, "CHARM_SERVER_DATA_DIR": true, "CRING_ACCOUNTS": true, "CRING_META_BIND": true}
				for k, v := range s.Environment {
					if !overrides[k] {
						t.Errorf("%s: compose sets %s=%q beyond the documented container overrides", n.Name, k, v)
					}
					env[k] = v
				}
				for k, v := range unitEnv {
					if !overrides[k] && env[k] != v {
						t.Errorf("%s: %s=%q in the container, %q in charm.env", n.Name, k, env[k], v)
					}
				}
				// Its data and every file its env names are mounted.
				for _, k := range []string{"CHARM_SERVER_DATA_DIR", "CHARM_SERVER_TLS_CERT_FILE", "CHARM_SERVER_TLS_KEY_FILE"} {
					if v := env[k]; v != "" && !mounted(m, v) {
						t.Errorf("%s: %s=%s is not mounted (%v)", n.Name, k, v, s.Volumes)
					}
				}
				if env["CHARM_SERVER_TLS_CERT_FILE"] != "" {
					host := m[NodeTLSDir]
					for _, k := range []string{"CHARM_SERVER_TLS_CERT_FILE", "CHARM_SERVER_TLS_KEY_FILE"} {
						if _, err := os.Stat(filepath.Join(dir, host, path.Base(env[k]))); err != nil {
							t.Errorf("%s: %s: %v", n.Name, k, err)
						}
					}
				}
				// The unit's ExecStart, with the binary where compose mounts it.
				exec := bootExec(t, read(t, dir, filepath.Join(n.Dir, "charm.service")))
				if tt.o.Stock {
					if s.Image != CharmImage || len(s.Command) != 0 || !slices.Equal(exec, []string{charmBin, "serve"}) {
						t.Errorf("%s: image %s command %v, unit %v", n.Name, s.Image, s.Command, exec)
					}
				} else if !slices.Equal(s.Command, append([]string{"/cring"}, exec[1:]...)) || exec[0] != cringBin {
					t.Errorf("%s: command %v, unit ExecStart %v", n.Name, s.Command, exec)
				}
				// The health check asks the health port the way the proxy
				// does: https (trusting the node CA) when the node serves TLS.
				var pn cluster.Node
				for _, cn := range proxyCfg.Nodes {
					if cn.Name == n.Name {
						pn = cn
					}
				}
				url := s.Healthcheck.Test[len(s.Healthcheck.Test)-1]
				if scheme := pn.Health[:strings.Index(pn.Health, "://")]; !strings.HasPrefix(url, scheme+"://127.0.0.1:35356/") {
					t.Errorf("%s: health check %s, proxy checks %s", n.Name, url, pn.Health)
				}
				if env["CHARM_SERVER_USE_TLS"] == "true" {
					i := slices.Index(s.Healthcheck.Test, "--ca")
					if i < 0 || !mounted(m, s.Healthcheck.Test[i+1]) {
						t.Errorf("%s: health check %v does not trust a mounted CA", n.Name, s.Healthcheck.Test)
					}
				}
			}

			// The proxy: its unit's command, and every file compose/cring.yaml names.
			p := c.Services["cring"]
			m := mounts("cring", p.Volumes)
			exec := bootExec(t, read(t, dir, "cring.service"))
			if exec[0] != cringBin || !slices.Equal(p.Command, append([]string{"/cring"}, exec[1:]...)) {
				t.Errorf("cring: command %v, unit ExecStart %v", p.Command, exec)
			}
			for _, f := range []struct{ key, v string }{
				{"config", cringYAMLPath}, {"server-key", proxyCfg.ServerKey}, {"data-dir", proxyCfg.DataDir},
				{"tls-cert", proxyCfg.TLSCert}, {"tls-key", proxyCfg.TLSKey}, {"node-ca", proxyCfg.NodeCA},
			} {
				if f.v != "" && !mounted(m, f.v) {
					t.Errorf("cring: %s %s is not mounted (%v)", f.key, f.v, p.Volumes)
				}
			}
			if (proxyCfg.NodeCA != "") != tt.o.NodeTLS {
				t.Errorf("compose/cring.yaml node-ca %q with NodeTLS %v", proxyCfg.NodeCA, tt.o.NodeTLS)
			}
			for _, n := range res.Nodes {
				if p.DependsOn[n.Name].Condition != "service_healthy" {
					t.Errorf("cring does not wait for %s to be healthy", n.Name)
				}
			}
		})
	}
}

// bootExec is a unit's ExecStart, split into words.
func bootExec(t *testing.T, unit []byte) []string {
	t.Helper()
	for _, line := range strings.Split(string(unit), "\n") {
		if v, ok := strings.CutPrefix(line, "ExecStart="); ok {
			return strings.Fields(v)
		}
	}
	t.Fatal("no ExecStart")
	return nil
}
