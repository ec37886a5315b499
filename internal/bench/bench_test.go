package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime"
	"mime/multipart"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRunSmoke runs every workload for a moment with small sizes: the whole
// machinery (cluster, proxy process, modes, report) works, in a few seconds.
func TestRunSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster and a proxy process")
	}
	bin := filepath.Join(t.TempDir(), "cring")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/cring").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	var progress bytes.Buffer
	start := time.Now()
	rep, err := Run(context.Background(), Options{
		Nodes:       3,
		Duration:    300 * time.Millisecond,
		Warmup:      50 * time.Millisecond,
		Dir:         t.TempDir(),
		Binary:      bin,
		Progress:    &progress,
		BigUpload:   8 << 20,
		SmallSize:   1 << 10,
		LargeSize:   1 << 20,
		ListEntries: 20,
		ReadFiles:   16,
		SlowDelay:   20 * time.Millisecond,
		ReplayFiles: 20,
	})
	t.Logf("progress:\n%s", progress.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ran in %s", time.Since(start).Round(time.Millisecond))

	if rep.Replicas != 3 || rep.WriteQuorum != 2 {
		t.Errorf("proxy reports N=%d W=%d, want 3 and 2", rep.Replicas, rep.WriteQuorum)
	}
	want := map[string][]string{
		WorkloadUploadSmall: {ModeDirect, ModeLimit, ModeProxy},
		WorkloadUploadLarge: {ModeDirect, ModeLimit, ModeProxy},
		WorkloadReadSmall:   {ModeDirect, ModeProxy},
		WorkloadReadSlow:    {ModeHealthy, ModeProxy},
		WorkloadUploadSlow:  {ModeHealthy, ModeProxy},
		WorkloadDegraded:    {ModeHealthy, ModeProxy},
		WorkloadList:        {ModeDirect, ModeLimit, ModeProxy},
		WorkloadMixed:       {ModeDirect, ModeLimit, ModeProxy},
		WorkloadScrub:       {ModeHealthy, ModeProxy},
	}
	if len(rep.Workloads) != len(want) {
		t.Fatalf("%d workloads in the report, want %d", len(rep.Workloads), len(want))
	}
	for _, w := range rep.Workloads {
		var modes []string
		for _, r := range w.Runs {
			modes = append(modes, r.Mode)
			if r.Ops == 0 || r.Errors != 0 || r.OpsPerSec <= 0 || r.P50Ms <= 0 || r.P99Ms < r.P50Ms {
				t.Errorf("%s %s: %+v", w.Name, r.Mode, r)
			}
			if r.Mode == ModeProxy && r.PeakRSS <= 0 {
				t.Errorf("%s: no proxy peak RSS", w.Name)
			}
		}
		if strings.Join(modes, ",") != strings.Join(want[w.Name], ",") {
			t.Errorf("%s ran modes %v, want %v", w.Name, modes, want[w.Name])
		}
		if w.Ratio == nil || w.Ratio.Throughput <= 0 {
			t.Errorf("%s: no ratio", w.Name)
		}
		if w.Name != WorkloadMixed && w.Met == nil {
			t.Errorf("%s: target not judged", w.Name)
		}
	}
	if bu := rep.BigUpload; bu == nil || bu.Before <= 0 || bu.After < bu.Before || bu.Size != 8<<20 {
		t.Errorf("big upload: %+v", rep.BigUpload)
	}
	if len(rep.Replays) != 2 {
		t.Errorf("replays: %d, want 2 (one directory, a hundred)", len(rep.Replays))
	}
	for _, r := range rep.Replays {
		if r.Hints != 20 || r.CatchUpSeconds <= 0 || r.HintsPerSec <= 0 || r.WritesPerSec <= 0 {
			t.Errorf("replay: %+v", r)
		}
	}
	if len(rep.Memory) != 2 {
		t.Errorf("memory: %d results, want 2 (listing, uploads)", len(rep.Memory))
	}
	for _, m := range rep.Memory {
		if m.Name == WorkloadListMemory && (m.ResponseBytes <= 0 || m.GrowthBytes <= 0) ||
			m.Name == WorkloadUploadMemory && (m.RSSPerUpload <= 0 || m.GoroutinesPerUpload <= 0) {
			t.Errorf("memory: %+v", m)
		}
	}
	if len(rep.Hashes) != 3 || rep.Hashes[0].Name != "sha256" || !rep.Hashes[0].Chosen || rep.Hashes[0].MBPerSec <= 0 {
		t.Errorf("hashes: %+v", rep.Hashes)
	}

	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", table.String())
	for _, s := range []string{"upload 1KiB ×8", "read 1KiB ×8", "read 1KiB ×8, 1 node +20ms", "upload 1KiB ×8, 1 node +20ms", "healthy", "list 20 entries ×1", "limit", "proxy", "8MiB upload", "checksums, one core", "scrub at 8MiB/s per node", "replay 20 × 1KiB in 1 directory", "list 50000 entries", "24 slow uploads"} {
		if !strings.Contains(table.String(), s) {
			t.Errorf("table lacks %q", s)
		}
	}
	if _, err := json.Marshal(rep); err != nil {
		t.Fatal(err)
	}
}

// TestBodyIsCharmMultipart: the generated upload is a well-formed multipart
// form with one "data" file of exactly the payload size, and its length is
// what the request announces.
func TestBodyIsCharmMultipart(t *testing.T) {
	for _, size := range []int64{0, 1, 4 << 10, 3<<20 + 7} {
		b := &body{size: size}
		raw, err := io.ReadAll(io.LimitReader(b, 1<<30))
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(raw)) != (&body{size: size}).len() {
			t.Fatalf("size %d: read %d bytes, announced %d", size, len(raw), (&body{size: size}).len())
		}
		_, params, err := mime.ParseMediaType(mpType)
		if err != nil {
			t.Fatal(err)
		}
		form, err := multipart.NewReader(bytes.NewReader(raw), params["boundary"]).ReadForm(1 << 20)
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		fhs := form.File["data"]
		if len(fhs) != 1 || fhs[0].Size != size {
			t.Fatalf("size %d: form files %+v", size, form.File)
		}
		f, _ := fhs[0].Open()
		got, _ := io.ReadAll(f)
		f.Close()
		for i := range got {
			if got[i] != pattern[i%len(pattern)] {
				t.Fatalf("size %d: byte %d differs from the pattern", size, i)
			}
		}
		_ = form.RemoveAll()
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"512MiB": 512 << 20, "64M": 64 << 20, "4KiB": 4 << 10, "4k": 4 << 10, "1GiB": 1 << 30, "100": 100, "7 B": 7,
	} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
		if back, err := ParseSize(FormatSize(got)); err != nil || back != got {
			t.Errorf("FormatSize(%d) = %q does not read back", got, FormatSize(got))
		}
	}
	for _, in := range []string{"", "MiB", "12 parsecs", "-1", "99999999999999GiB"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q): no error", in)
		}
	}
}

func TestQuantile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i))
	}
	if q := quantile(d, 0.5); q != 50 {
		t.Errorf("p50 of 1..100 = %d", q)
	}
	if q := quantile(d, 0.99); q != 99 {
		t.Errorf("p99 of 1..100 = %d", q)
	}
	if q := quantile(d[:1], 0.99); q != 1 {
		t.Errorf("p99 of one sample = %d", q)
	}
}

// TestPeersSmoke runs both peers workloads for a moment: nginx, HAProxy and
// the Go floor come up unprivileged in front of one node, every mode
// answers, and cring's CPU is related to each of theirs.
func TestPeersSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster, a proxy, nginx and HAProxy")
	}
	for _, mode := range []string{ModeNginx, ModeHAProxy} {
		if _, err := peerBinary(mode); err != nil {
			t.Fatalf("%v: run scripts/install-peers (scripts/test does)", err)
		}
	}
	bin := filepath.Join(t.TempDir(), "cring")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/cring").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	var progress bytes.Buffer
	rep, err := Run(context.Background(), Options{
		Nodes:     3,
		Duration:  500 * time.Millisecond,
		Rounds:    2,
		Warmup:    50 * time.Millisecond,
		Dir:       t.TempDir(),
		Binary:    bin,
		Progress:  &progress,
		SmallSize: 1 << 10,
		ReadFiles: 16,
		Workloads: []string{WorkloadPeers},
	})
	t.Logf("progress:\n%s", progress.String())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{ModeDirect, ModeNginx, ModeHAProxy, ModeFloor, ModeProxy}
	if len(rep.Workloads) != 2 {
		t.Fatalf("%d workloads, want peers-read and peers-upload", len(rep.Workloads))
	}
	for _, w := range rep.Workloads {
		var modes []string
		for _, r := range w.Runs {
			modes = append(modes, r.Mode)
			if r.Ops == 0 || r.Errors != 0 {
				t.Errorf("%s %s: %+v", w.Name, r.Mode, r)
			}
			if r.NodesCPUPerOpUs <= 0 || r.UpstreamPerOp <= 0 {
				t.Errorf("%s %s: no nodes' CPU or node requests: %+v", w.Name, r.Mode, r)
			}
			// A front's CPU is read from /proc in clock ticks (10 ms): in a
			// half-second run a light one (nginx, HAProxy) can show none.
			// Direct has no front at all; cring's is always measurable.
			if r.Mode == ModeDirect && r.ProxyCPUPerOpUs != 0 || r.Mode == ModeProxy && r.ProxyCPUPerOpUs <= 0 || r.ProxyCPUPerOpUs < 0 {
				t.Errorf("%s %s: front CPU %.0f µs/op", w.Name, r.Mode, r.ProxyCPUPerOpUs)
			}
		}
		if strings.Join(modes, ",") != strings.Join(want, ",") {
			t.Errorf("%s ran modes %v, want %v", w.Name, modes, want)
		}
		if len(w.CPU) != len(want)-1 || w.Met == nil {
			t.Errorf("%s: ratios %+v, judged %v", w.Name, w.CPU, w.Met)
		}
		if px := w.Runs[len(w.Runs)-1]; w.Name == WorkloadPeersUpload && px.UpstreamPerOp < 2.5 {
			// N=3: every upload is sent to three nodes.
			t.Errorf("uploads through cring: %.2f node requests each, want ~3", px.UpstreamPerOp)
		}
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", table.String())
	for _, s := range []string{"read 1KiB ×8, peers", "upload 1KiB ×8, peers", "go-floor", "haproxy", "nginx", "cring vs"} {
		if !strings.Contains(table.String(), s) {
			t.Errorf("table lacks %q", s)
		}
	}
}

func TestSumMetric(t *testing.T) {
	text := `# HELP cring_node_requests_total Requests the proxy sent to nodes.
# TYPE cring_node_requests_total counter
cring_node_requests_total{node="a",outcome="2xx"} 10
cring_node_requests_total{node="b",outcome="4xx"} 2.5
cring_node_requests_total_other 100
cring_node_request_duration_seconds_count{node="a"} 7
`
	for _, tc := range []struct {
		name string
		want float64
		ok   bool
	}{
		{"cring_node_requests_total", 12.5, true},
		{"cring_node_request_duration_seconds_count", 7, true},
		{"cring_missing", 0, false},
	} {
		got, ok := sumMetric(text, tc.name)
		if got != tc.want || ok != tc.ok {
			t.Errorf("sumMetric(%s) = %v, %v; want %v, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}
