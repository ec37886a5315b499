package main

import (
	"strings"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/chaos"
)

// TestChaosOptions: the chaos command's flags and CRING_* variables become
// the run's options; CRING_STATE, the proxies' PostgreSQL URL everywhere
// else, does not turn --state on (nor fails to parse as a yes or no), and
// the convergence deadline is left to the run (60 s, or 30 s when it
// destroys a proxy) unless given.
func TestChaosOptions(t *testing.T) {
	env := map[string]string{"CRING_STATE": "postgres://secret@db/cring", "CRING_PROXIES": "3"}
	getenv := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	for _, tt := range []struct {
		args  []string
		check func(chaos.Options) bool
		err   string
	}{
		{[]string{"--cring-bin", "/bin/true", "--kind", "cring-node"}, func(o chaos.Options) bool {
			return o.Proxies == 3 && !o.State && o.Balancer == "" && o.ConvergeTimeout == 0
		}, ""},
		{[]string{"--cring-bin", "/bin/true", "--kind", "cring-node", "--state", "--balancer", "haproxy", "--haproxy-bin", "/usr/sbin/haproxy", "--proxies", "4"}, func(o chaos.Options) bool {
			return o.Proxies == 4 && o.State && o.Balancer == chaos.BalancerHAProxy && o.HAProxyBin == "/usr/sbin/haproxy"
		}, ""},
		{[]string{"--cring-bin", "/bin/true", "--kind", "cring-node", "--converge-timeout", "45s"}, func(o chaos.Options) bool {
			return o.ConvergeTimeout == 45*time.Second
		}, ""},
		{[]string{"--cring-bin", "/bin/true", "--kind", "cring-node", "--faults", "destroy-proxy,kill-node"}, func(o chaos.Options) bool {
			return len(o.Faults) == 2 && o.Faults[0] == chaos.DestroyProxy
		}, ""},
		{[]string{"--cring-bin", "/bin/true", "--kind", "cring-node", "--proxies", "0"}, nil, "--proxies must be at least 1"},
		{[]string{"--cring-bin", "/bin/true", "--kind", "cring-node", "--balancer", "nginx"}, nil, `--balancer "nginx": want haproxy`},
	} {
		cmd, f := newChaos()
		if err := cmd.ParseFlags(tt.args); err != nil {
			t.Fatal(err)
		}
		set, err := applyChaosEnv(cmd.Flags(), getenv)
		if err != nil {
			t.Fatalf("%v: %v", tt.args, err)
		}
		o, err := f.options(set)
		switch {
		case tt.err != "":
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%v: error %v, want %q", tt.args, err, tt.err)
			}
		case err != nil:
			t.Errorf("%v: %v", tt.args, err)
		case !tt.check(o):
			t.Errorf("%v: options %+v", tt.args, o)
		}
	}
}
