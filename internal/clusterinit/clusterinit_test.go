package clusterinit

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cring-dev/cring/internal/config"
	"github.com/cring-dev/cring/internal/token"
	gossh "golang.org/x/crypto/ssh"
	"gopkg.in/yaml.v3"
)

func TestValidate(t *testing.T) {
	base := Options{Dir: "out", PublicURL: "https://charm.example.com:35354"}
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

		{name: "no dir", o: with(func(o *Options) { o.Dir = "" }), wantErr: "output directory is required"},
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
		want := []config.Node{
			{Name: "charm1", URL: "http://10.0.0.1:35354", SSH: "10.0.0.1:35353", Health: "http://10.0.0.1:35356/", Zone: "rack-a"},
			{Name: "charm2", URL: "http://charm-b.internal:35354", SSH: "charm-b.internal:35353", Health: "http://charm-b.internal:35356/", Zone: "rack-b"},
			{Name: "charm3", URL: "http://[fd00::3]:35354", SSH: "[fd00::3]:35353", Health: "http://[fd00::3]:35356/", Zone: "rack-c"},
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
	})

	t.Run("env files", func(t *testing.T) {
		for _, tt := range []struct {
			node, host, bind, data string
		}{
			{"charm1", "10.0.0.1", "10.0.0.1", "/srv/charm/charm1"},
			{"charm2", "charm-b.internal", "", "/srv/charm/charm2"},
			{"charm3", "fd00::3", "[fd00::3]", "/srv/charm/charm3"},
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
			}
			for k, v := range want {
				if got, ok := env[k]; !ok || got != v {
					t.Errorf("%s: %s=%q, want %q", tt.node, k, got, v)
				}
			}
			unit := string(read(t, dir, filepath.Join("nodes", tt.node, "charm.service")))
			for _, s := range []string{"EnvironmentFile=/etc/charm/charm.env", "ExecStart=/usr/local/bin/charm serve", "ReadWritePaths=" + tt.data + "\n"} {
				if !strings.Contains(unit, s) {
					t.Errorf("%s charm.service lacks %q", tt.node, s)
				}
			}
		}
		if u := string(read(t, dir, "cring.service")); !strings.Contains(u, "ExecStart=/usr/local/bin/cring serve --config /etc/cring/cring.yaml") {
			t.Errorf("cring.service: %s", u)
		}
	})

	t.Run("compose", func(t *testing.T) {
		var c struct {
			Services map[string]struct {
				Image       string            `yaml:"image"`
				EnvFile     string            `yaml:"env_file"`
				Environment map[string]string `yaml:"environment"`
				Volumes     []string          `yaml:"volumes"`
				Ports       []string          `yaml:"ports"`
				DependsOn   []string          `yaml:"depends_on"`
			} `yaml:"services"`
		}
		if err := yaml.Unmarshal(read(t, dir, "compose.yaml"), &c); err != nil {
			t.Fatal(err)
		}
		if len(c.Services) != 4 {
			t.Fatalf("services: %v", c.Services)
		}
		for _, n := range res.Nodes {
			s, ok := c.Services[n.Name]
			if !ok {
				t.Fatalf("compose lacks %s", n.Name)
			}
			if s.Image != CharmImage || s.EnvFile != "./nodes/"+n.Name+"/charm.env" ||
				!slices.Equal(s.Volumes, []string{"./nodes/" + n.Name + "/data:/data"}) ||
				s.Environment["CHARM_SERVER_DATA_DIR"] != "/data" {
				t.Errorf("%s: %+v", n.Name, s)
			}
			if _, err := os.Stat(filepath.Join(dir, strings.TrimPrefix(s.EnvFile, "./"))); err != nil {
				t.Errorf("%s env_file: %v", n.Name, err)
			}
		}
		p := c.Services["cring"]
		if !slices.Equal(p.DependsOn, []string{"charm1", "charm2", "charm3"}) || !slices.Contains(p.Ports, "35354:35354") ||
			!slices.Contains(p.Volumes, "./compose/cring.yaml:/etc/cring/cring.yaml:ro") {
			t.Errorf("cring service: %+v", p)
		}
	})
}

// TestGenerateRefusesExistingKeys: a directory holding the shared key or any
// node's copy is never written to.
func TestGenerateRefusesExistingKeys(t *testing.T) {
	for _, existing := range []string{
		"keys/charm_server_ed25519",
		"keys/charm_server_ed25519.pub",
		"nodes/charm7/data/.ssh/charm_server_ed25519",
		"nodes/old/data/.ssh/charm_server_ed25519.pub",
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
			_, err := Generate(context.Background(), Options{Dir: dir, PublicURL: "http://proxy:35354"})
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
		o := Options{Dir: dir, PublicURL: "http://proxy:35354"}
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
	o := Options{Dir: dir, PublicURL: "http://proxy:35354"}
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
