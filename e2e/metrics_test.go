package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/testwait"
)

// promtool is Debian's (package prometheus), installed by scripts/test.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not installed: run scripts/test (it installs Debian's prometheus package)")
	}
	return p
}

// TestMetrics: a live scrape passes promtool, counts what happened, and the
// shipped alert rules and dashboard are valid and name real metrics.
func TestMetrics(t *testing.T) {
	// Healing and the scrub on: the dashboard's healing panels name their
	// metrics too.
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2, heal: true, scrub: time.Hour})
	u := tc.newUser(t)
	u.put(t, "m/a", []byte("metrics"))
	u.get(t, "m/a")
	req := mustReq(t, "GET", "http://"+tc.httpAddr+"/v1/fs/x", nil)
	req.Header.Set("Authorization", "bearer nope")
	req.Header.Set("X-Request-Id", "trace-me-42")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("X-Request-Id"); got != "trace-me-42" {
		t.Fatalf("X-Request-Id = %q, want the client's", got)
	}
	tc.stop(2)
	tc.waitReady(2)
	u.put(t, "m/b", []byte("with a node down"))
	tc.stop(1)
	tc.waitReady(1)
	if err := u.fs.WriteFile("m/c", memFile("m/c", []byte("x"))); err == nil {
		t.Fatal("write with 2 of 3 down succeeded")
	}

	resp, err = http.Get("http://" + tc.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	scrape, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	cmd := exec.Command(promtool(t), "check", "metrics")
	cmd.Stdin = bytes.NewReader(scrape)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
	for _, want := range []string{
		`cring_http_requests_total{code="200",method="POST",route="fs"}`,
		`cring_http_requests_total{code="401",method="GET",route="fs"} 1`,
		`cring_node_up{node="node3"} 0`,
		`cring_node_up{node="node1"} 1`,
		// m/b and its version record (stock nodes); m/c failed at its
		// record, written before its data.
		`cring_replica_failures_total{node="node3",op="POST"} 3`,
		`cring_node_requests_total{node="node1",outcome="2xx"}`,
		`cring_node_request_duration_seconds_bucket{node="node2",le=`,
		`cring_write_quorum 2`,
		`cring_quorum_failures_total{op="POST"} 1`,
		`cring_ssh_connections_total`,
		`cring_client_received_bytes_total`,
	} {
		if !bytes.Contains(scrape, []byte(want)) {
			t.Errorf("scrape lacks %s", want)
		}
	}

	// Shipped rules pass promtool; the dashboard only uses metrics we export
	// (or that later parts add: the backup queue).
	if out, err := exec.Command(promtool(t), "check", "rules", filepath.Join("..", "docs", "alerts.yml")).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	raw, err := os.ReadFile(filepath.Join("..", "docs", "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Targets []struct{ Expr string } `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	name := regexp.MustCompile(`cring_[a-z_]+`)
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, m := range name.FindAllString(tg.Expr, -1) {
				m = strings.TrimSuffix(m, "_bucket")
				if !bytes.Contains(scrape, []byte(m)) && !strings.HasPrefix(m, "cring_backup_") {
					t.Errorf("dashboard uses %s, which the proxy doesn't export", m)
				}
			}
		}
	}
}

// TestPprof: Go profiles are on the admin address only when asked for.
func TestPprof(t *testing.T) {
	for _, tt := range []struct {
		pprof bool
		want  int
	}{{false, http.StatusNotFound}, {true, http.StatusOK}} {
		t.Run(fmt.Sprint("pprof=", tt.pprof), func(t *testing.T) {
			tc := startCluster(t, clusterOpts{nodes: 1, replicas: 1, quorum: 1, pprof: tt.pprof})
			resp, err := http.Get("http://" + tc.admin + "/debug/pprof/goroutine?debug=1")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.want)
			}
			if tt.pprof && !bytes.Contains(body, []byte("goroutine profile")) {
				t.Fatalf("not a goroutine profile: %.200s", body)
			}
		})
	}
}

// TestMetricsDuringLongTransfer: bytes are counted as they stream and the
// request shows in flight while it runs, so `cring top` shows a transfer's
// rate before it ends (it showed 0 B/s and 0 req/s during long uploads).
func TestMetricsDuringLongTransfer(t *testing.T) {
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2})
	u := tc.newUser(t)
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	req := mustReq(t, "POST", "http://"+tc.httpAddr+"/v1/fs/long/upload?mode=420", pr)
	req.Header.Set("Authorization", "bearer "+u.jwt(t))
	req.Header.Set("Content-Type", mw.FormDataContentType())
	done := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	part, err := mw.CreateFormFile("data", "upload")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := part.Write(randBytes(t, 2<<20)); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, 10*time.Second, "the condition", func() bool { // the upload still open
		return metricValue(t, tc.admin, "cring_client_received_bytes_total") >= 2<<20 &&
			metricValue(t, tc.admin, "cring_http_requests_in_flight") >= 1
	})
	_ = mw.Close()
	_ = pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	testwait.For(t, 5*time.Second, "the condition", func() bool { return metricValue(t, tc.admin, "cring_http_requests_in_flight") == 0 })
}
