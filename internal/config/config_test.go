package config

import (
	"github.com/cring-dev/cring/internal/cluster"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func nodes(urls ...string) []cluster.Node {
	var out []cluster.Node
	for _, u := range urls {
		out = append(out, cluster.Node{URL: u})
	}
	return out
}

func TestNormalize(t *testing.T) {
	for _, tt := range []struct {
		name    string
		cfg     Config
		wantErr string
		check   func(t *testing.T, c *Config)
	}{
		{name: "no nodes", wantErr: "no nodes configured"},
		{name: "defaults", cfg: Config{Nodes: nodes("http://a:35354", "http://b:35354", "http://c:35354")},
			check: func(t *testing.T, c *Config) {
				if c.Replicas != 3 || c.WriteQuorum != 2 || c.Address != ":35354" || c.SSHProxyAddress != ":35353" || c.AdminAddress != "127.0.0.1:35356" || c.Accounts != AccountsPerNode {
					t.Fatalf("defaults wrong: %+v", c)
				}
				if c.Nodes[1].Name != "b:35354" || c.Nodes[1].SSH != "b:35353" {
					t.Fatalf("derived node wrong: %+v", c.Nodes[1])
				}
			}},
		{name: "replicas clamped", cfg: Config{Nodes: nodes("http://a:1", "http://b:1"), Replicas: 5},
			check: func(t *testing.T, c *Config) {
				if c.Replicas != 2 || c.WriteQuorum != 2 {
					t.Fatalf("N=%d W=%d, want 2/2", c.Replicas, c.WriteQuorum)
				}
			}},
		{name: "single node W=1", cfg: Config{Nodes: nodes("http://a:1")},
			check: func(t *testing.T, c *Config) {
				if c.Replicas != 1 || c.WriteQuorum != 1 {
					t.Fatalf("N=%d W=%d, want 1/1", c.Replicas, c.WriteQuorum)
				}
			}},
		{name: "W > N", cfg: Config{Nodes: nodes("http://a:1", "http://b:1", "http://c:1"), WriteQuorum: 4}, wantErr: "write-quorum 4 is larger than replicas 3"},
		{name: "negative W", cfg: Config{Nodes: nodes("http://a:1"), WriteQuorum: -1}, wantErr: "write-quorum must be at least 1"},
		{name: "bad scheme", cfg: Config{Nodes: nodes("ftp://a:1")}, wantErr: "want an http:// or https:// URL"},
		{name: "no host", cfg: Config{Nodes: nodes("http://")}, wantErr: "missing host"},
		{name: "duplicate url", cfg: Config{Nodes: []cluster.Node{{Name: "x", URL: "http://a:1"}, {Name: "y", URL: "http://a:1/"}}}, wantErr: "duplicate node url"},
		{name: "duplicate name", cfg: Config{Nodes: []cluster.Node{{Name: "x", URL: "http://a:1"}, {Name: "x", URL: "http://b:1"}}}, wantErr: `duplicate node name "x"`},
		{name: "bad ssh", cfg: Config{Nodes: []cluster.Node{{URL: "http://a:1", SSH: "nope"}}}, wantErr: "ssh address"},
		{name: "bad public url", cfg: Config{Nodes: nodes("http://a:1"), PublicURL: "proxy:35354"}, wantErr: "public-url"},
		{name: "bad address", cfg: Config{Nodes: nodes("http://a:1"), Address: "35354"}, wantErr: "address"},
		{name: "bad accounts", cfg: Config{Nodes: nodes("http://a:1"), Accounts: "ldap"}, wantErr: "accounts must be"},
		{name: "tls cert without key", cfg: Config{Nodes: nodes("http://a:1"), TLSCert: "/c.pem"}, wantErr: "both --tls-cert and --tls-key"},
		{name: "tls key without cert", cfg: Config{Nodes: nodes("http://a:1"), TLSKey: "/k.pem"}, wantErr: "both --tls-cert and --tls-key"},
		{name: "s3 backup needs bucket", cfg: Config{Nodes: nodes("http://a:1"), Backup: Backup{URL: "http://minio:9000"}}, wantErr: "backup-bucket is required"},
		{name: "file backup", cfg: Config{Nodes: nodes("http://a:1"), DataDir: "/var/lib/cring", Backup: Backup{URL: "file:///var/backups"}}},
		{name: "backup needs data dir", cfg: Config{Nodes: nodes("http://a:1"), Backup: Backup{URL: "file:///var/backups"}}, wantErr: "need --data-dir"},
		{name: "admin on every interface needs a token", cfg: Config{Nodes: nodes("http://a:1"), AdminAddress: ":35356"}, wantErr: "admin-address :35356 is reachable from the network"},
		{name: "admin on an address needs a token", cfg: Config{Nodes: nodes("http://a:1"), AdminAddress: "10.0.0.5:35356"}, wantErr: "set an admin-token"},
		{name: "admin on a name needs a token", cfg: Config{Nodes: nodes("http://a:1"), AdminAddress: "proxy.internal:35356"}, wantErr: "set an admin-token"},
		{name: "admin with a token", cfg: Config{Nodes: nodes("http://a:1"), AdminAddress: ":35356", AdminToken: "0123456789abcdef"}},
		{name: "admin token too short", cfg: Config{Nodes: nodes("http://a:1"), AdminToken: "secret"}, wantErr: "admin-token is 6 characters"},
		{name: "admin on localhost", cfg: Config{Nodes: nodes("http://a:1"), AdminAddress: "localhost:35356"}},
		{name: "admin on ::1", cfg: Config{Nodes: nodes("http://a:1"), AdminAddress: "[::1]:35356"}},
		{name: "admin on 127.0.0.2", cfg: Config{Nodes: nodes("http://a:1"), AdminAddress: "127.0.0.2:35356"}},
		{name: "state", cfg: Config{Nodes: nodes("http://a:1"), State: "postgres://cring:s3cret@db:5432/charm?sslmode=require"}},
		{name: "state not postgres", cfg: Config{Nodes: nodes("http://a:1"), State: "mysql://cring:s3cret@db/charm"}, wantErr: "state: want a postgres:// URL"},
		{name: "state without host", cfg: Config{Nodes: nodes("http://a:1"), State: "postgres:///charm"}, wantErr: "state: want a postgres:// URL"},
		{name: "bad backup mode", cfg: Config{Nodes: nodes("http://a:1"), DataDir: "/d", Backup: Backup{URL: "file:///b", Mode: "eventually"}}, wantErr: "backup-mode must be sync or async"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.cfg
			err := c.Normalize()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Fatalf("error spans lines: %q", err)
				}
				if strings.Contains(err.Error(), "s3cret") {
					t.Fatalf("error shows a password: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil {
				tt.check(t, &c)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	p := filepath.Join(t.TempDir(), "cring.yaml")
	os.WriteFile(p, []byte(`
public-url: https://charm.example.com
replicas: 2
nodes:
  - {name: one, url: "http://10.0.0.1:35354", zone: a}
  - {name: two, url: "http://10.0.0.2:35354", ssh: "10.0.0.2:2222", health: "http://10.0.0.2:35356/", zone: b}
`), 0o600)
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Normalize(); err != nil {
		t.Fatal(err)
	}
	if c.Replicas != 2 || c.Nodes[0].SSH != "10.0.0.1:35353" || c.Nodes[1].SSH != "10.0.0.2:2222" || c.Nodes[1].Zone != "b" {
		t.Fatalf("loaded %+v", c)
	}
	os.WriteFile(p, []byte("replicas: [1\n"), 0o600)
	if _, err := Load(p); err == nil || strings.Contains(err.Error(), "\n") {
		t.Fatalf("broken yaml: err = %q, want one line", err)
	}
}
