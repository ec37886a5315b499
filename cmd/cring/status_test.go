package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/clusterstate"
	"github.com/cring-dev/cring/internal/serve"
)

// TestPrintCluster: cring status names every proxy of the shared state
// with its last-seen age and marks the ones whose heartbeat is missing.
func TestPrintCluster(t *testing.T) {
	proxy := func(id, age string, down, self bool) serve.ProxyView {
		return serve.ProxyView{Self: self, ProxyStatus: clusterstate.ProxyStatus{
			Proxy: clusterstate.Proxy{ID: id, Host: "h", Addresses: []string{"127.0.0.1:35354"}, Version: "v1", Interval: 5 * time.Second},
			Age:   age, Down: down}}
	}
	for _, tt := range []struct {
		name string
		st   *serve.ClusterStatus
		want []string
	}{
		{"per proxy", &serve.ClusterStatus{}, []string{"this proxy's alone"}},
		{"shared", &serve.ClusterStatus{Shared: true, HintsPending: map[string]int64{"node3": 12}, Users: 4,
			Proxies: []serve.ProxyView{proxy("aaa", "41s", true, false), proxy("bbb", "2s", false, true)}},
			[]string{"shared state: 2 proxies", "1 down", "hints owed: node3 12", "4 users",
				"proxy aaa", "○ down", "seen 41s ago", "proxy bbb", "● up", "(this proxy)"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			printCluster(&out, tt.st)
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}
