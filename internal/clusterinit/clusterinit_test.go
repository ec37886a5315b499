package clusterinit

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cring-dev/cring/internal/cluster"
	"github.com/cring-dev/cring/internal/config"
	"github.com/cring-dev/cring/internal/token"
	gossh "golang.org/x/crypto/ssh"
	"gopkg.in/yaml.v3"
)

func TestValidate(t *testing.T) {
	base := Options{Dir: "out", PublicURL: "https://charm.example.com:35354", Accounts: "postgres://charm:pw@db:5432/charm"}
	with := func(f func(*Options)) Options { o := base; f(&o); return o }
	for _, tt := range []struct {
		name    string
		o       Options
		wantErr string
		// checked when wantErr is empty
		nodes, replicas, quorum int
		firstHost               string
	}{
		{name: "defaults", o: base, nodes: 3, replicas: 3, quorum: 2, firstHost: "charm1"},
		{name: "hosts set the node count", o: with(func(o *Options) { o.Hosts = []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"} }), nodes: 4, replicas: 3, quorum: 2, firstHost: "10.0.0.1"},
		{name: "replicas clamped", o: with(func(o *Options) { o.Nodes = 2 }), nodes: 2, replicas: 2, quorum: 2, firstHost: "charm1"},
		{name: "one node", o: with(func(o *Options) { o.Nodes = 1 }), nodes: 1, replicas: 1, quorum: 1, firstHost: "charm1"},
		{name: "explicit W", o: with(func(o *Options) { o.Nodes = 5; o.Replicas = 5; o.WriteQuorum = 3 }), nodes: 5, replicas: 5, quorum: 3, firstHost: "charm1"},
		{name: "ipv6 host", o: with(func(o *Options) { o.Hosts = []string{"fd00::1"} }), nodes: 1, replicas: 1, quorum: 1, firstHost: "fd00::1"},
		{name: "stock", o: with(func(o *Options) { o.Stock = true; o.Accounts = "" }), nodes: 3, replicas: 3, quorum: 2, firstHost: "charm1"},
		{name: "postgresql scheme", o: with(func(o *Options) { o.Accounts = "postgresql://db/charm?sslmode=require" }), nodes: 3, replicas: 3, quorum: 2, firstHost: "charm1"},

		{name: "no dir", o: with(func(o *Options) { o.Dir = "" }), wantErr: "output directory is required"},
		{name: "no accounts", o: with(func(o *Options) { o.Accounts = "" }), wantErr: "accounts is required"},
		{name: "stock with accounts", o: with(func(o *Options) { o.Stock = true }), wantErr: "stock nodes keep their own sqlite"},
		{name: "accounts not postgres", o: with(func(o *Options) { o.Accounts = "mysql://db/charm" }), wantErr: "want a postgres:// URL"},
		{name: "accounts without host", o: with(func(o *Options) { o.Accounts = "postgres:///charm" }), wantErr: "not a valid postgres:// URL"},
		{name: "accounts with dollar", o: with(func(o *Options) { o.Accounts = "postgres://charm:pa$s@db/charm" }), wantErr: `'$' is not allowed`},
		{name: "accounts with quote", o: with(func(o *Options) { o.Accounts = `postgres://charm:pa"s@db/charm` }), wantErr: "percent-encode it (%22)"},
		{name: "no public url", o: with(func(o *Options) { o.PublicURL = "" }), wantErr: "public-url is required"},
		{name: "public url scheme", o: with(func(o *Options) { o.PublicURL = "ssh://x:1" }), wantErr: "want an http:// or https:// URL"},
		{name: "public url no scheme", o: with(func(o *Options) { o.PublicURL = "charm.example.com:35354" }), wantErr: "want an http:// or https:// URL"},
		{name: "public url path", o: with(func(o *Options) { o.PublicURL = "https://x/charm" }), wantErr: "only scheme, host and port"},
		{name: "hosts and nodes disagree", o: with(func(o *Options) { o.Nodes = 3; o.Hosts = []string{"a", "b"} }), wantErr: "2 hosts given for 3 nodes"},
		{name: "duplicate host", o: with(func(o *Options) { o.Hosts = []string{"a", "A"} }), wantErr: `host "A" is listed twice`},
		{name: "host with port", o: with(func(o *Options) { o.Hosts = []string{"a:35354"} }), wantErr: "without a port"},
		{name: "bad host", o: with(func(o *Options) { o.Hosts = []string{"a b"} }), wantErr: "not a valid host name"},
		{name: "empty host", o: with(func(o *Options) { o.Hosts = []string{"a", ""} }), wantErr: "empty host"},
		{name: "too many nodes", o: with(func(o *Options) { o.Nodes = 3000 }), wantErr: "nodes must be between 1 and 128"},
		{name: "negative nodes", o: with(func(o *Options) { o.Nodes = -1 }), wantErr: "nodes must be between"},
		{name: "zones count", o: with(func(o *Options) { o.Zones = []string{"a", "b"} }), wantErr: "2 zones given for 3 nodes"},
		{name: "empty zone", o: with(func(o *Options) { o.Zones = []string{"a", " ", "c"} }), wantErr: "zone 2 is empty"},
		{name: "W > N", o: with(func(o *Options) { o.Nodes = 2; o.WriteQuorum = 3 }), wantErr: "write-quorum 3 is larger than replicas 2"},
		{name: "negative replicas", o: with(func(o *Options) { o.Replicas = -1 }), wantErr: "replicas must be at least 1"},
		{name: "negative W", o: with(func(o *Options) { o.WriteQuorum = -2 }), wantErr: "write-quorum must be at least 1"},
		{name: "relative data dir", o: with(func(o *Options) { o.DataDir = "data" }), wantErr: "must be an absolute path"},
		{name: "data dir with space", o: with(func(o *Options) { o.DataDir = "/srv/my data" }), wantErr: "only letters, digits"},
		{name: "data dir with dollar", o: with(func(o *Options) { o.DataDir = "/srv/$HOME" }), wantErr: "only letters, digits"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, err := tt.o.plan()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Fatalf("error is not one line: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(p.nodes) != tt.nodes || p.replicas != tt.replicas || p.writeQuorum != tt.quorum || p.nodes[0].Host != tt.firstHost {
				t.Fatalf("got %d nodes (first host %s), N=%d W=%d; want %d nodes (%s), N=%d W=%d",
					len(p.nodes), p.nodes[0].Host, p.replicas, p.writeQuorum, tt.nodes, tt.firstHost, tt.replicas, tt.quorum)
			}
		})
	}
}

func TestGenerate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cluster")
	res, err := Generate(context.Background(), Options{
		Dir:       dir,
		PublicURL: "https://charm.example.com:35354/",
		Hosts:     []string{"10.0.0.1", "charm-b.internal", "fd00::3"},
		Zones:     []string{"rack-a", "rack-b", "rack-c"},
		DataDir:   "/srv/charm/{name}",
		Accounts:  "postgres://charm:pw@db.internal:5432/charm",
	})
	if err != nil {
		t.Fatal(err)
	}
	const publicURL = "https://charm.example.com:35354" // normalized: nodes and proxy must agree
	if res.PublicURL != publicURL {
		t.Fatalf("public URL %q, want %q", res.PublicURL, publicURL)
	}
	for _, want := range []string{
		"README.txt", "cring.yaml", "cring.service", "compose.yaml", "compose/cring.yaml",
		"keys/charm_server_ed25519", "keys/charm_server_ed25519.pub",
		"nodes/charm1/charm.env", "nodes/charm1/charm.service",
		"nodes/charm3/data/.ssh/charm_server_ed25519", "nodes/charm3/data/.ssh/charm_server_ed25519.pub",
	} {
		if !slices.Contains(res.Files, filepath.FromSlash(want)) {
			t.Errorf("Files lacks %s: %v", want, res.Files)
		}
	}
	for _, f := range res.Files {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("listed file: %v", err)
		}
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, "*", ".tmp-*"))
	if len(leftovers) > 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}

	t.Run("keys", func(t *testing.T) {
		priv := read(t, dir, "keys/charm_server_ed25519")
		pub := read(t, dir, "keys/charm_server_ed25519.pub")
		if _, err := token.NewSigner(priv); err != nil {
			t.Fatalf("private key does not load as a server key: %v", err)
		}
		signer, err := gossh.ParsePrivateKey(priv)
		if err != nil {
			t.Fatal(err)
		}
		pk, _, _, _, err := gossh.ParseAuthorizedKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(pk.Marshal(), signer.PublicKey().Marshal()) || pk.Type() != gossh.KeyAlgoED25519 {
			t.Fatalf("public key %s does not match the private key", pub)
		}
		for _, p := range []struct {
			rel  string
			perm os.FileMode
		}{
			{"keys", 0o700 | os.ModeDir},
			{"keys/charm_server_ed25519", 0o600},
			{"nodes/charm2/data", 0o700 | os.ModeDir},
			{"nodes/charm2/data/.ssh", 0o700 | os.ModeDir},
			{"nodes/charm2/data/.ssh/charm_server_ed25519", 0o600},
		} {
			st, err := os.Stat(filepath.Join(dir, p.rel))
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode() != p.perm {
				t.Errorf("%s mode %v, want %v", p.rel, st.Mode(), p.perm)
			}
		}
		for _, n := range res.Nodes {
			ssh := filepath.Join(n.Dir, "data", ".ssh")
			if !bytes.Equal(read(t, dir, filepath.Join(ssh, KeyName)), priv) || !bytes.Equal(read(t, dir, filepath.Join(ssh, KeyName+".pub")), pub) {
				t.Errorf("%s's key is not the shared key", n.Name)
			}
		}
	})

	t.Run("cring.yaml", func(t *testing.T) {
		c, err := config.Load(filepath.Join(dir, "cring.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Normalize(); err != nil {
			t.Fatal(err)
		}
		if c.PublicURL != publicURL || c.Replicas != 3 || c.WriteQuorum != 2 {
			t.Fatalf("public-url %q N=%d W=%d", c.PublicURL, c.Replicas, c.WriteQuorum)
		}
		// Healing on, with the key and state where the unit and README put them.
		if c.ServerKey != "/etc/cring/charm_server_ed25519" || c.DataDir != "/var/lib/cring" || c.Accounts != config.AccountsShared {
			t.Fatalf("server-key %q, data-dir %q, accounts %q", c.ServerKey, c.DataDir, c.Accounts)
		}
		// An https public URL: the proxy serves TLS itself.
		if c.TLSCert != TLSCertPath || c.TLSKey != TLSKeyPath {
			t.Fatalf("tls-cert %q, tls-key %q", c.TLSCert, c.TLSKey)
		}
		want := []cluster.Node{
			{Name: "charm1", URL: "http://10.0.0.1:35354", SSH: "10.0.0.1:35353", Health: "http://10.0.0.1:35356/", Meta: "http://10.0.0.1:35357", Zone: "rack-a"},
			{Name: "charm2", URL: "http://charm-b.internal:35354", SSH: "charm-b.internal:35353", Health: "http://charm-b.internal:35356/", Meta: "http://charm-b.internal:35357", Zone: "rack-b"},
			{Name: "charm3", URL: "http://[fd00::3]:35354", SSH: "[fd00::3]:35353", Health: "http://[fd00::3]:35356/", Meta: "http://[fd00::3]:35357", Zone: "rack-c"},
		}
		if !slices.Equal(c.Nodes, want) {
			t.Fatalf("nodes\n got %+v\nwant %+v", c.Nodes, want)
		}
		cc, err := config.Load(filepath.Join(dir, "compose", "cring.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		if err := cc.Normalize(); err != nil {
			t.Fatal(err)
		}
		if cc.Nodes[1].URL != "http://charm2:35354" || cc.Nodes[1].Name != "charm2" {
			t.Fatalf("compose cring.yaml should reach nodes by service name: %+v", cc.Nodes[1])
		}
		// Hints, users and heartbeats shared in the accounts' database, so
		// any proxy can be lost; the password makes the files private.
		if c.State != "postgres://charm:pw@db.internal:5432/charm" {
			t.Fatalf("state %q, want the accounts' URL", c.State)
		}
		if !strings.HasPrefix(cc.State, "postgres://charm:") || !strings.Contains(cc.State, "@postgres:5432/charm") {
			t.Fatalf("compose state %q, want the compose file's database", cc.State)
		}
		for _, f := range []string{"cring.yaml", "compose/cring.yaml"} {
			if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Mode().Perm() != 0o600 {
				t.Fatalf("%s: %v %v, want mode 0600 (it holds the database password)", f, st.Mode(), err)
			}
		}
	})

	t.Run("env files", func(t *testing.T) {
		for _, tt := range []struct {
			node, host, bind, data, metaBind string
		}{
			{"charm1", "10.0.0.1", "10.0.0.1", "/srv/charm/charm1", "10.0.0.1"},
			{"charm2", "charm-b.internal", "", "/srv/charm/charm2", "0.0.0.0"},
			{"charm3", "fd00::3", "[fd00::3]", "/srv/charm/charm3", "fd00::3"},
		} {
			env := parseEnv(t, read(t, dir, filepath.Join("nodes", tt.node, "charm.env")))
			want := map[string]string{
				"CHARM_SERVER_HOST":           tt.host,
				"CHARM_SERVER_BIND_ADDRESS":   tt.bind,
				"CHARM_SERVER_PUBLIC_URL":     publicURL,
				"CHARM_SERVER_DATA_DIR":       tt.data,
				"CHARM_SERVER_SSH_PORT":       "35353",
				"CHARM_SERVER_HTTP_PORT":      "35354",
				"CHARM_SERVER_STATS_PORT":     "35355",
				"CHARM_SERVER_HEALTH_PORT":    "35356",
				"CHARM_SERVER_ENABLE_METRICS": "false",
				"CRING_ACCOUNTS":              "postgres://charm:pw@db.internal:5432/charm",
				"CRING_META_PORT":             "35357",
				"CRING_META_BIND":             tt.metaBind,
			}
			for k, v := range want {
				if got, ok := env[k]; !ok || got != v {
					t.Errorf("%s: %s=%q, want %q", tt.node, k, got, v)
				}
			}
			unit := string(read(t, dir, filepath.Join("nodes", tt.node, "charm.service")))
			if st, err := os.Stat(filepath.Join(dir, "nodes", tt.node, "charm.env")); err != nil || st.Mode().Perm() != 0o600 {
				t.Errorf("%s charm.env holds a database password: mode %v %v, want 0600", tt.node, st.Mode(), err)
			}
			for _, s := range []string{"EnvironmentFile=/etc/charm/charm.env", "ExecStart=/usr/local/bin/cring node\n", "ReadWritePaths=" + tt.data + "\n"} {
				if !strings.Contains(unit, s) {
					t.Errorf("%s charm.service lacks %q", tt.node, s)
				}
			}
		}
		u := string(read(t, dir, "cring.service"))
		for _, s := range []string{"ExecStart=/usr/local/bin/cring serve --config /etc/cring/cring.yaml\n", "StateDirectory=cring\n", "User=cring\n"} {
			if !strings.Contains(u, s) {
				t.Errorf("cring.service lacks %q:\n%s", s, u)
			}
		}
	})

	t.Run("compose", func(t *testing.T) {
		c := loadCompose(t, read(t, dir, "compose.yaml"))
		if len(c.Services) != 5 {
			t.Fatalf("services: %v", c.Services)
		}
		pg := c.Services["postgres"]
		pass := pg.Environment["POSTGRES_PASSWORD"]
		if len(pass) != 32 || len(pg.Healthcheck.Test) == 0 || !slices.Contains(pg.Volumes, "./compose/postgres:/var/lib/postgresql/data") {
			t.Errorf("postgres: %+v", pg)
		}
		for _, n := range res.Nodes {
			s, ok := c.Services[n.Name]
			if !ok {
				t.Fatalf("compose lacks %s", n.Name)
			}
			if !slices.Equal(s.Command, []string{"/cring", "node"}) || s.EnvFile != "./nodes/"+n.Name+"/charm.env" ||
				!slices.Contains(s.Volumes, "./nodes/"+n.Name+"/data:/data") ||
				s.Environment["CHARM_SERVER_DATA_DIR"] != "/data" ||
				s.Environment["CRING_ACCOUNTS"] != "postgres://charm:"+pass+"@postgres:5432/charm?sslmode=disable" ||
				!slices.Equal(s.Healthcheck.Test, []string{"CMD", "/cring", "probe", "http://127.0.0.1:35356/"}) ||
				s.DependsOn["postgres"].Condition != "service_healthy" {
				t.Errorf("%s: %+v", n.Name, s)
			}
			if _, err := os.Stat(filepath.Join(dir, strings.TrimPrefix(s.EnvFile, "./"))); err != nil {
				t.Errorf("%s env_file: %v", n.Name, err)
			}
		}
		p := c.Services["cring"]
		if len(p.DependsOn) != 3 || p.DependsOn["charm2"].Condition != "service_healthy" || !slices.Contains(p.Ports, "35354:35354") ||
			!slices.Contains(p.Volumes, "./compose/cring.yaml:/etc/cring/cring.yaml:ro") ||
			!slices.Contains(p.Volumes, "./keys/charm_server_ed25519:/etc/cring/charm_server_ed25519:ro") ||
			!slices.Contains(p.Volumes, "./compose/cring-data:/var/lib/cring") || !slices.Contains(p.Volumes, "./tls:/etc/cring/tls:ro") ||
			len(p.Healthcheck.Test) == 0 {
			t.Errorf("cring service: %+v", p)
		}
		if st, err := os.Stat(filepath.Join(dir, "compose.yaml")); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("compose.yaml holds a database password: %v %v, want 0600", st.Mode(), err)
		}
		// The admin port is published (on the host's loopback), so in the
		// container it listens on every interface: with a token, which a
		// proxy configured so accepts.
		admin := config.Config{Nodes: []cluster.Node{{URL: "http://charm1:35354"}},
			AdminAddress: p.Environment["CRING_ADMIN_ADDRESS"], AdminToken: p.Environment["CRING_ADMIN_TOKEN"]}
		if err := admin.Normalize(); err != nil || !slices.Contains(p.Ports, "127.0.0.1:35356:35356") || admin.AdminAddress != ":35356" {
			t.Errorf("compose proxy admin: %v, ports %v, env %v", err, p.Ports, p.Environment)
		}
	})
}

// TestGenerateStock: --stock nodes run charm serve with their own sqlite,
// and the proxy still heals.
func TestGenerateStock(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cluster")
	res, err := Generate(context.Background(), Options{Dir: dir, PublicURL: "http://proxy:35354", Stock: true})
	if err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(filepath.Join(dir, "cring.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Accounts != config.AccountsPerNode || c.ServerKey == "" || c.DataDir == "" || c.Nodes[0].Meta != "" || c.TLSCert != "" || c.State != "" {
		t.Fatalf("stock cring.yaml: %+v", c)
	}
	env := parseEnv(t, read(t, dir, "nodes/charm1/charm.env"))
	if _, ok := env["CRING_ACCOUNTS"]; ok {
		t.Fatal("stock charm.env sets CRING_ACCOUNTS")
	}
	unit := string(read(t, dir, "nodes/charm1/charm.service"))
	for _, s := range []string{"ExecStart=/usr/local/bin/charm serve\n", "StateDirectory=charm\n"} {
		if !strings.Contains(unit, s) {
			t.Errorf("stock charm.service lacks %q", s)
		}
	}
	cc := loadCompose(t, read(t, dir, "compose.yaml"))
	if _, ok := cc.Services["postgres"]; ok || cc.Services["charm1"].Image != CharmImage {
		t.Errorf("stock compose: %+v", cc.Services)
	}
	if !strings.Contains(string(read(t, dir, "README.txt")), "cring accounts sync") {
		t.Error("stock README.txt does not say how new users' accounts reach every node")
	}
	if !res.Stock {
		t.Error("Result.Stock is false")
	}
}

type composeFile struct {
	Services map[string]struct {
		Image       string            `yaml:"image"`
		Restart     string            `yaml:"restart"`
		Command     []string          `yaml:"command"`
		EnvFile     string            `yaml:"env_file"`
		Environment map[string]string `yaml:"environment"`
		Volumes     []string          `yaml:"volumes"`
		Ports       []string          `yaml:"ports"`
		DependsOn   map[string]struct {
			Condition string `yaml:"condition"`
		} `yaml:"depends_on"`
		Healthcheck struct {
			Test []string `yaml:"test"`
		} `yaml:"healthcheck"`
	} `yaml:"services"`
}

func loadCompose(t *testing.T, b []byte) composeFile {
	t.Helper()
	var c composeFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(false)
	if err := dec.Decode(&c); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestGenerateRefusesExistingKeys: a directory holding the shared key or any
// node's copy is never written to.
func TestGenerateRefusesExistingKeys(t *testing.T) {
	for _, existing := range []string{
		"keys/charm_server_ed25519",
		"keys/charm_server_ed25519.pub",
		"nodes/charm7/data/.ssh/charm_server_ed25519",
		"nodes/old/data/.ssh/charm_server_ed25519.pub",
		"keys/node-ca.key",
	} {
		t.Run(existing, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, filepath.FromSlash(existing))
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Generate(context.Background(), Options{Dir: dir, PublicURL: "http://proxy:35354", Stock: true})
			var ke *KeysExistError
			if !errors.As(err, &ke) || ke.Path != path || !strings.Contains(err.Error(), "refusing to overwrite existing keys") {
				t.Fatalf("err = %v, want a KeysExistError for %s", err, path)
			}
			if b, _ := os.ReadFile(path); string(b) != "precious" {
				t.Fatalf("existing key changed: %q", b)
			}
			if _, err := os.Stat(filepath.Join(dir, "cring.yaml")); err == nil {
				t.Fatal("wrote cring.yaml into a directory with keys")
			}
		})
	}

	t.Run("second run", func(t *testing.T) {
		dir := t.TempDir()
		o := Options{Dir: dir, PublicURL: "http://proxy:35354", Stock: true}
		if _, err := Generate(context.Background(), o); err != nil {
			t.Fatal(err)
		}
		before := read(t, dir, "keys/charm_server_ed25519")
		var ke *KeysExistError
		if _, err := Generate(context.Background(), o); !errors.As(err, &ke) {
			t.Fatalf("second run: err = %v, want KeysExistError", err)
		}
		if !bytes.Equal(read(t, dir, "keys/charm_server_ed25519"), before) {
			t.Fatal("second run replaced the key")
		}
	})
}

// TestGenerateFailedRunLeavesNoKey: a run that stops early can be repeated.
func TestGenerateFailedRunLeavesNoKey(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	o := Options{Dir: dir, PublicURL: "http://proxy:35354", Stock: true}
	if _, err := Generate(ctx, o); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if err := checkNoKeys(dir); err != nil {
		t.Fatalf("a failed run left a key: %v", err)
	}
	if _, err := Generate(context.Background(), o); err != nil {
		t.Fatalf("rerun after a failed run: %v", err)
	}
}

func read(t *testing.T, dir, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(rel)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// parseEnv reads KEY=value lines the way systemd's EnvironmentFile and
// compose's env_file both do for unquoted values.
func parseEnv(t *testing.T, b []byte) map[string]string {
	t.Helper()
	env := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("env line without '=': %q", line)
		}
		if _, dup := env[k]; dup {
			t.Fatalf("env sets %s twice", k)
		}
		env[k] = v
	}
	return env
}

// TestUnitsVerify: every generated unit passes `systemd-analyze verify`. The
// binaries' install paths are pointed at a stand-in executable (verify
// checks that ExecStart exists); nothing else in the units changes.
func TestUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal("systemd-analyze not installed: run scripts/install-systemd (scripts/test does)")
	}
	stand := filepath.Join(t.TempDir(), "bin")
	if err := os.WriteFile(stand, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		o    Options
	}{
		{"cring nodes", Options{PublicURL: "https://charm.example.com:35354", Hosts: []string{"10.0.0.1", "charm2.internal"}, Accounts: "postgres://charm:pw@db/charm"}},
		{"stock nodes", Options{PublicURL: "http://10.0.0.9:35354", Hosts: []string{"10.0.0.1", "10.0.0.2"}, Stock: true}},
		{"own data dir", Options{PublicURL: "http://10.0.0.9:35354", Hosts: []string{"10.0.0.1"}, Stock: true, DataDir: "/srv/charm"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.o.Dir = filepath.Join(t.TempDir(), "cluster")
			res, err := Generate(context.Background(), tt.o)
			if err != nil {
				t.Fatal(err)
			}
			units := []string{"cring.service"}
			for _, n := range res.Nodes {
				units = append(units, filepath.Join(n.Dir, "charm.service"))
			}
			for _, u := range units {
				text := strings.NewReplacer(cringBin, stand, charmBin, stand).Replace(string(read(t, tt.o.Dir, u)))
				path := filepath.Join(t.TempDir(), filepath.Base(u))
				if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
					t.Fatal(err)
				}
				out, err := exec.Command(analyze, "verify", "--man=no", path).CombinedOutput()
				if err != nil || len(bytes.TrimSpace(out)) > 0 {
					t.Errorf("systemd-analyze verify %s: %v\n%s", u, err, out)
				}
			}
		})
	}
}
