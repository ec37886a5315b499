package top

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/cring-dev/cring/internal/metrics"
)

// exposition is a small proxy scrape; n scales the counters.
func exposition(n float64, extra string) string {
	f := ftoa
	return `# TYPE cring_http_requests_total counter
cring_http_requests_total{code="200",method="GET",route="fs"} ` + f(10*n) + `
cring_http_requests_total{code="503",method="POST",route="fs"} ` + f(n) + `
# TYPE cring_http_request_duration_seconds histogram
cring_http_request_duration_seconds_bucket{method="GET",route="fs",le="0.01"} ` + f(10*n) + `
cring_http_request_duration_seconds_bucket{method="GET",route="fs",le="0.1"} ` + f(11*n) + `
cring_http_request_duration_seconds_bucket{method="GET",route="fs",le="+Inf"} ` + f(11*n) + `
cring_http_request_duration_seconds_sum{method="GET",route="fs"} 1
cring_http_request_duration_seconds_count{method="GET",route="fs"} ` + f(11*n) + `
# TYPE cring_node_requests_total counter
cring_node_requests_total{node="node1",outcome="2xx"} ` + f(20*n) + `
cring_node_requests_total{node="node2",outcome="error"} ` + f(2*n) + `
# TYPE cring_node_request_duration_seconds histogram
cring_node_request_duration_seconds_bucket{node="node1",le="0.01"} ` + f(20*n) + `
cring_node_request_duration_seconds_bucket{node="node1",le="+Inf"} ` + f(20*n) + `
cring_node_request_duration_seconds_sum{node="node1"} 0.1
cring_node_request_duration_seconds_count{node="node1"} ` + f(20*n) + `
# TYPE cring_replica_failures_total counter
cring_replica_failures_total{node="node2",op="POST"} ` + f(n) + `
# TYPE cring_quorum_failures_total counter
cring_quorum_failures_total{op="POST"} ` + f(n) + `
# TYPE cring_node_up gauge
cring_node_up{node="node1"} 1
cring_node_up{node="node2"} 0
# TYPE cring_ssh_active_connections gauge
cring_ssh_active_connections 2
# TYPE cring_ssh_connections_total counter
cring_ssh_connections_total ` + f(3*n) + `
# TYPE cring_write_quorum gauge
cring_write_quorum 2
# TYPE cring_replicas gauge
cring_replicas 3
` + extra
}

func scrapeAt(t *testing.T, sec, n float64, extra string, ready *Ready) *Scrape {
	s := snap(t, sec, exposition(n, extra))
	return &Scrape{At: s.At, Metrics: s, Ready: ready}
}

func TestSummarize(t *testing.T) {
	ready := &Ready{Ready: false, Healthy: 1, Required: 2, Nodes: []NodeStatus{
		{Name: "node1", Healthy: true, Since: t0, LastCheck: t0.Add(time.Minute)},
		{Name: "node2", Healthy: false, LastError: "connection refused", Since: t0.Add(50 * time.Second), LastCheck: t0.Add(time.Minute)},
	}}
	s := Summarize(scrapeAt(t, 0, 1, "", nil), scrapeAt(t, 2, 3, "", ready))
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"request rate", s.ReqRate, (33 - 11) / 2.0},
		{"5xx rate", s.Rate5xx, 1},
		{"4xx rate", s.Rate4xx, 0},
		{"quorum failures", s.QuorumFailures, 3},
		{"quorum rate", s.QuorumRate, 1},
		{"p50", s.P50, 0.01 * 11 / 20},
		{"ssh active", s.SSHActive, 2},
		{"ssh rate", s.SSHRate, 3},
		{"backup depth absent", s.BackupDepth, math.NaN()},
		{"hints absent", s.HintsPending, math.NaN()},
		{"copies absent", s.CopyRate, math.NaN()},
		{"N", s.Replicas, 3},
	} {
		if !near(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if !s.ReadyKnown || s.Ready || s.Healthy != 1 || s.Required != 2 || s.Window != 2*time.Second {
		t.Errorf("readiness %+v", s)
	}
	if len(s.Nodes) != 2 {
		t.Fatalf("nodes %+v", s.Nodes)
	}
	n1, n2 := s.Nodes[0], s.Nodes[1]
	if n1.Name != "node1" || !n1.Healthy || n1.For != time.Minute || !near(n1.ReqRate, 20) || !near(n1.ErrRate, 0) || !near(n1.P99, 0.0099) {
		t.Errorf("node1 %+v", n1)
	}
	if n2.Name != "node2" || n2.Healthy || n2.For != 10*time.Second || !near(n2.ErrRate, 2) || !math.IsNaN(n2.P50) ||
		n2.ReplicaFail != 3 || n2.ReplicaNew != 2 || n2.LastError != "connection refused" {
		t.Errorf("node2 %+v", n2)
	}
	if len(s.Routes) != 1 || s.Routes[0].Route != "fs" || !near(s.Routes[0].Rate5xx, 1) {
		t.Errorf("routes %+v", s.Routes)
	}

	// Before the proxy's first probe, time in state is by our clock.
	early := &Ready{Nodes: []NodeStatus{{Name: "node1", Healthy: true, Since: t0}}}
	if s := Summarize(nil, scrapeAt(t, 2, 1, "", early)); s.Nodes[0].For != 2*time.Second {
		t.Errorf("time in state without last_check = %v, want 2s", s.Nodes[0].For)
	}

	// Queues show when the metrics exist; nodes come from the gauges
	// without /readyz.
	extra := "# TYPE cring_backup_queue_depth gauge\ncring_backup_queue_depth{target=\"s3\"} 4\n" +
		"# TYPE cring_backup_queue_lag_seconds gauge\ncring_backup_queue_lag_seconds{target=\"s3\"} 12.5\n" +
		"# TYPE cring_heal_hints_pending gauge\ncring_heal_hints_pending 0\n"
	s = Summarize(nil, scrapeAt(t, 0, 1, extra, nil))
	if s.BackupDepth != 4 || s.BackupLag != 12.5 || s.HintsPending != 0 || !math.IsNaN(s.ReqRate) {
		t.Errorf("queues %v %v %v, rate %v", s.BackupDepth, s.BackupLag, s.HintsPending, s.ReqRate)
	}
	if len(s.Nodes) != 2 || !s.Nodes[0].Healthy || s.Nodes[1].Healthy || !s.ReadyKnown || s.Ready {
		t.Errorf("nodes from gauges %+v, ready %v", s.Nodes, s.Ready)
	}
}

func refused() Scrape {
	err := func(p string) error {
		return &url.Error{Op: "Get", URL: "http://127.0.0.1:1" + p, Err: errors.New("dial tcp 127.0.0.1:1: connect: connection refused")}
	}
	return Scrape{At: t0, MetricsErr: err("/metrics"), ReadyErr: err("/readyz")}
}

func key(s string) tea.KeyMsg { return tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(s)} }

func TestModel(t *testing.T) {
	ready := &Ready{Ready: true, Healthy: 2, Required: 2, Nodes: []NodeStatus{
		{Name: "node1", Healthy: true, Since: t0, LastCheck: t0.Add(time.Minute)},
		{Name: "node2", Healthy: true, Since: t0, LastCheck: t0.Add(time.Minute)},
	}}
	var script []Scrape
	m := New(Options{Admin: "127.0.0.1:1", Interval: time.Second, Now: func() time.Time { return t0.Add(5 * time.Second) },
		Scrape: func(context.Context) Scrape { s := script[0]; script = script[1:]; return s }})
	var tm tea.Model = m
	step := func(msg tea.Msg) tea.Cmd {
		var cmd tea.Cmd
		tm, cmd = tm.Update(msg)
		return cmd
	}
	step(tea.WindowSizeMsg{Width: 120, Height: 40})
	if v := tm.View(); !strings.Contains(v, "connecting to 127.0.0.1:1") {
		t.Fatalf("before the first scrape:\n%s", v)
	}

	// Unreachable: said plainly, and the next scrape is scheduled.
	script = append(script, refused())
	if cmd := step(tm.Init()()); cmd == nil {
		t.Fatal("no retry scheduled after a failed scrape")
	}
	v := tm.View()
	for _, want := range []string{"unreachable", "connect: connection refused", "retrying every 1s", "never reached"} {
		if !strings.Contains(v, want) {
			t.Errorf("unreachable view lacks %q:\n%s", want, v)
		}
	}

	// Back: two scrapes give rates.
	script = append(script, *scrapeAt(t, 1, 1, "", ready), *scrapeAt(t, 2, 2, "", ready))
	step(step(tickMsg{})())
	if v := tm.View(); !strings.Contains(v, "rates need a second scrape") || strings.Contains(v, "unreachable") {
		t.Fatalf("after one good scrape:\n%s", v)
	}
	step(step(tickMsg{})())
	v = tm.View()
	for _, want := range []string{"node1", "● up", "REQUESTS  11/s", "over the last 1s", "backup depth —", "hints pending —"} {
		if !strings.Contains(v, want) {
			t.Errorf("view lacks %q:\n%s", want, v)
		}
	}

	// Down again: the last figures stay, marked as old.
	script = append(script, refused())
	step(step(tickMsg{})())
	if v := tm.View(); !strings.Contains(v, "unreachable") || !strings.Contains(v, "last good scrape") || !strings.Contains(v, "node1") {
		t.Fatalf("after losing the admin API:\n%s", v)
	}

	step(key("p"))
	if v := tm.View(); !strings.Contains(v, "PAUSED") {
		t.Fatalf("paused view:\n%s", v)
	}
	step(key("p"))

	step(tea.WindowSizeMsg{Width: 60, Height: 8})
	lines := strings.Split(tm.View(), "\n")
	if len(lines) > 8 || !strings.Contains(lines[0], "cring top") {
		t.Fatalf("small terminal: %d lines, first %q", len(lines), lines[0])
	}

	for _, k := range []tea.KeyMsg{key("q"), {Type: tea.KeyCtrlC}} {
		cmd := step(k)
		if cmd == nil {
			t.Fatalf("%s: no command", k)
		}
		if cmd() != tea.Quit() {
			t.Fatalf("%s does not quit", k)
		}
	}
}

// TestClient scrapes the proxy's real metrics registry.
func TestClient(t *testing.T) {
	m := metrics.New()
	m.NodeHealth("node1", true)
	m.NodeHealth("node2", false)
	m.Request("fs", "GET", 200, 3*time.Millisecond, 0, 10)
	m.NodeRequest("node1", 200, nil, 2*time.Millisecond)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable) // below W: still a full answer
		_ = json.NewEncoder(w).Encode(map[string]any{"ready": false, "healthy": 1, "required": 2,
			"nodes": []map[string]any{{"name": "node1", "healthy": true}, {"name": "node2", "healthy": false, "last_error": "boom"}}})
	})
	srv := httptest.NewServer(mux)
	c, err := NewClient(strings.TrimPrefix(srv.URL, "http://"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s := c.Scrape(context.Background())
	if s.Failed() {
		t.Fatal(s.Problem())
	}
	if s.Ready.Required != 2 || len(s.Ready.Nodes) != 2 || s.Ready.Nodes[1].LastError != "boom" {
		t.Fatalf("ready %+v", s.Ready)
	}
	if got := s.Metrics.Sum("cring_node_up", nil); got != 1 {
		t.Fatalf("cring_node_up sum = %v", got)
	}
	if hs := s.Metrics.Hists["cring_node_request_duration_seconds"]; len(hs) != 1 || hs[0].Count != 1 {
		t.Fatalf("node histogram %+v", hs)
	}

	// Something that is not a cring admin API answers badly.
	bad, err := NewClient(srv.URL+"/nope", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if s := bad.Scrape(context.Background()); !s.Failed() || s.Unreachable() || !strings.Contains(s.Problem(), "404") {
		t.Fatalf("wrong address: failed %v unreachable %v problem %q", s.Failed(), s.Unreachable(), s.Problem())
	}

	srv.Close()
	s = c.Scrape(context.Background())
	if !s.Unreachable() || !strings.Contains(s.Problem(), "connection refused") || strings.Contains(s.Problem(), "Get ") {
		t.Fatalf("closed: unreachable %v problem %q", s.Unreachable(), s.Problem())
	}

	for _, bad := range []string{"", "ftp://x:1", "http://"} {
		if _, err := NewClient(bad, time.Second); err == nil {
			t.Errorf("NewClient(%q) accepted", bad)
		}
	}
}
