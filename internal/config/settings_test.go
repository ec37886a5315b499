package config

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// envMap stands in for os.LookupEnv.
func envMap(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cring.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// resolve binds every setting to a fresh flag set, parses args and resolves.
func resolve(t *testing.T, args []string, env map[string]string) (*Config, error) {
	t.Helper()
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	f := BindAll(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return f.Resolve(envMap(env))
}

// TestResolvePrecedence: for settings of every kind, each source replaces
// the one before it: default < cring.yaml < CRING_* < flag.
func TestResolvePrecedence(t *testing.T) {
	for _, tt := range []struct {
		name string
		// The value each source gives, as it writes it.
		file, env string
		args      []string
		get       func(*Config) any
		// What Resolve makes of the default, the file, env and flag values.
		want [4]any
	}{
		{name: "string", file: "public-url: http://file:1", env: "http://env:1", args: []string{"--public-url", "http://flag:1"},
			get:  func(c *Config) any { return c.PublicURL },
			want: [4]any{"", "http://file:1", "http://env:1", "http://flag:1"}},
		{name: "duration", file: "health-interval: 5s", env: "7s", args: []string{"--health-interval", "9s"},
			get:  func(c *Config) any { return c.HealthInterval },
			want: [4]any{DefaultHealthInterval, 5 * time.Second, 7 * time.Second, 9 * time.Second}},
		{name: "int", file: "max-requests: 10", env: "20", args: []string{"--max-requests", "30"},
			get:  func(c *Config) any { return c.MaxRequests },
			want: [4]any{DefaultMaxRequests, 10, 20, 30}},
		{name: "int at least 1", file: "write-quorum: 1", env: "2", args: []string{"--write-quorum", "3"},
			get:  func(c *Config) any { return c.WriteQuorum },
			want: [4]any{0, 1, 2, 3}},
		{name: "float", file: "repair-rate: 1.5", env: "2.5", args: []string{"--repair-rate", "3.5"},
			get:  func(c *Config) any { return c.RepairRate },
			want: [4]any{float64(DefaultRepairRate), 1.5, 2.5, 3.5}},
		{name: "size", file: "repair-byte-rate: 1048576", env: "2MiB", args: []string{"--repair-byte-rate", "3MiB"},
			get:  func(c *Config) any { return c.RepairByteRate },
			want: [4]any{int64(DefaultRepairByteRate), int64(1 << 20), int64(2 << 20), int64(3 << 20)}},
		{name: "duration where 0 is off", file: "scrub-interval: 1h", env: "0", args: []string{"--scrub-interval", "2h"},
			get:  func(c *Config) any { return c.ScrubInterval },
			want: [4]any{DefaultScrubInterval, time.Hour, time.Duration(-1), 2 * time.Hour}},
		{name: "list", file: "hosts: [http://file:1]", env: "http://env:1, http://env:2", args: []string{"--host", "http://flag:1", "--host", "http://flag:2"},
			get: func(c *Config) any { return c.Hosts },
			want: [4]any{[]string(nil), []string{"http://file:1"}, []string{"http://env:1", "http://env:2"},
				[]string{"http://flag:1", "http://flag:2"}}},
		{name: "bool", file: "debug: true", env: "false", args: []string{"--debug"},
			get:  func(c *Config) any { return c.Debug },
			want: [4]any{false, true, false, true}},
		{name: "nested", file: "backup: {zone: file-zone}", env: "env-zone", args: []string{"--backup-zone", "flag-zone"},
			get:  func(c *Config) any { return c.Backup.Zone },
			want: [4]any{DefaultBackupZone, "file-zone", "env-zone", "flag-zone"}},
	} {
		for level, source := range []string{"default", "file", "env", "flag"} {
			t.Run(tt.name+"/"+source, func(t *testing.T) {
				// Every source up to this one gives a value.
				var args []string
				env := map[string]string{}
				if level >= 1 {
					args = append(args, "--config", writeFile(t, tt.file+"\n"))
				}
				if level >= 2 {
					s := settingFor(t, tt.args[0])
					env[s.env] = tt.env
				}
				if level >= 3 {
					args = append(args, tt.args...)
				}
				c, err := resolve(t, args, env)
				if err != nil {
					t.Fatal(err)
				}
				if got := tt.get(c); !reflect.DeepEqual(got, tt.want[level]) {
					t.Fatalf("got %#v, want %#v", got, tt.want[level])
				}
			})
		}
	}
}

func settingFor(t *testing.T, flag string) setting {
	t.Helper()
	flag = strings.TrimPrefix(flag, "--")
	for _, s := range settings() {
		if s.flag == flag {
			return s
		}
	}
	t.Fatalf("no setting %s", flag)
	return setting{}
}

// TestResolveReload: resolving again, as every SIGHUP and config file
// change does, gives the same nodes with CRING_HOST set: the file's, then
// the variable's, once each (a list applied again must not grow).
func TestResolveReload(t *testing.T) {
	path := writeFile(t, "nodes:\n  - {name: one, url: \"http://10.0.0.1:35354\"}\n")
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	f := BindAll(fs)
	if err := fs.Parse([]string{"--config", path, "--replicas", "2"}); err != nil {
		t.Fatal(err)
	}
	env := envMap(map[string]string{"CRING_HOST": "http://10.0.0.2:35354,http://10.0.0.3:35354", "CRING_WRITE_QUORUM": "1"})
	want := []string{"one", "10.0.0.2:35354", "10.0.0.3:35354"}
	for reload := range 4 {
		if reload == 2 { // an edit to the file between reloads
			if err := os.WriteFile(path, []byte("nodes:\n  - {name: uno, url: \"http://10.0.0.1:35354\"}\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			want[0] = "uno"
		}
		c, err := f.Resolve(env)
		if err != nil {
			t.Fatalf("resolve %d: %v", reload+1, err)
		}
		if err := c.Normalize(); err != nil {
			t.Fatalf("resolve %d: %v", reload+1, err)
		}
		var names []string
		for _, n := range c.Nodes {
			names = append(names, n.Name)
		}
		if !slices.Equal(names, want) || c.Replicas != 2 || c.WriteQuorum != 1 {
			t.Fatalf("resolve %d: nodes %v N=%d W=%d, want %v N=2 W=1", reload+1, names, c.Replicas, c.WriteQuorum, want)
		}
	}
}

// TestSettingNames: every setting keeps the one name scheme the README
// promises: flag --x, variable CRING_X, key x in cring.yaml (backup-x is x
// under backup:), so the struct's tags can't drift from it.
func TestSettingNames(t *testing.T) {
	seen := map[string]bool{}
	typ := reflect.TypeFor[Config]()
	for _, s := range settings() {
		if seen[s.flag] {
			t.Errorf("flag %s twice", s.flag)
		}
		seen[s.flag] = true
		if s.env != EnvName(s.flag) {
			t.Errorf("flag %s: env %q, want %q", s.flag, s.env, EnvName(s.flag))
		}
		if s.help == "" {
			t.Errorf("flag %s: no help", s.flag)
		}
		key := typ.FieldByIndex(s.index).Tag.Get("yaml")
		if len(s.index) == 2 {
			key = typ.FieldByIndex(s.index[:1]).Tag.Get("yaml") + "-" + key
		}
		want := map[string]string{"config": "-", "host": "hosts"}[s.flag]
		if want == "" {
			want = s.flag
		}
		if key != want {
			t.Errorf("flag %s: yaml key %q, want %q", s.flag, key, want)
		}
	}
}

// TestDefaultsAreNormalizes: the defaults --help shows are the ones
// Normalize gives a setting nobody set.
func TestDefaultsAreNormalizes(t *testing.T) {
	for _, n := range []int{1, 3} {
		zero := Config{Nodes: nodes("http://a:1", "http://b:1", "http://c:1")[:n]}
		def := Defaults()
		def.Nodes = nodes("http://a:1", "http://b:1", "http://c:1")[:n]
		if err := zero.Normalize(); err != nil {
			t.Fatal(err)
		}
		if err := def.Normalize(); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(zero, def) {
			t.Fatalf("%d nodes: Normalize of zero\n%+v\nof Defaults\n%+v", n, zero, def)
		}
	}
}

// TestResolveErrors: a bad value names where it came from.
func TestResolveErrors(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		env  map[string]string
		file string
		want string
	}{
		{name: "env size", env: map[string]string{"CRING_REPAIR_BYTE_RATE": "lots"}, want: `CRING_REPAIR_BYTE_RATE="lots": want a size per second like 32MiB`},
		{name: "flag size", args: []string{"--scrub-rate", "lots"}, want: `invalid argument "lots" for "--scrub-rate" flag: want a size per second`},
		{name: "flag N", args: []string{"--replicas", "0"}, want: `"--replicas" flag: must be at least 1, got 0`},
		{name: "env W", env: map[string]string{"CRING_WRITE_QUORUM": "0"}, want: `CRING_WRITE_QUORUM="0": must be at least 1, got 0`},
		{name: "env duration", env: map[string]string{"CRING_NODE_TIMEOUT": "soon"}, want: `CRING_NODE_TIMEOUT="soon"`},
		{name: "env host", env: map[string]string{"CRING_HOST": "charm1:35354"}, want: `--host "charm1:35354": want an http:// or https:// URL`},
		{name: "file key", file: "replica: 3\n", want: "field replica not found"},
		{name: "no file", env: map[string]string{"CRING_CONFIG": "/nonexistent/cring.yaml"}, want: "read config: open /nonexistent/cring.yaml"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.file != "" {
				args = append(args, "--config", writeFile(t, tt.file))
			}
			_, err := resolve(t, args, tt.env)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

// TestApplyEnv: a command's own flags take CRING_* variables too; lists
// are comma-separated, for []string flags of both kinds, and replace the
// value however often they are applied. Settings' flags are Resolve's.
func TestApplyEnv(t *testing.T) {
	fs := pflag.NewFlagSet("cmd", pflag.ContinueOnError)
	array := fs.StringArray("user", nil, "")
	slice := fs.StringSlice("hosts", nil, "")
	n := fs.Int("nodes", 3, "")
	f := Bind(fs, "replicas")
	env := envMap(map[string]string{"CRING_USER": "a, b", "CRING_HOSTS": "10.0.0.1, 10.0.0.2,10.0.0.3", "CRING_NODES": "5", "CRING_REPLICAS": "2"})
	for range 3 {
		set, err := ApplyEnv(fs, env)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(*array, []string{"a", "b"}) || !slices.Equal(*slice, []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}) || *n != 5 {
			t.Fatalf("user %q, hosts %q, nodes %d", *array, *slice, *n)
		}
		if !set["user"] || !set["hosts"] || !set["nodes"] || set["replicas"] {
			t.Fatalf("set %v", set)
		}
	}
	c, err := f.Resolve(env)
	if err != nil || c.Replicas != 2 {
		t.Fatalf("replicas %d, %v", c.Replicas, err)
	}
	if _, err := ApplyEnv(fs, envMap(map[string]string{"CRING_NODES": "many"})); err == nil || !strings.Contains(err.Error(), `CRING_NODES="many"`) {
		t.Fatalf("err = %v", err)
	}
}
