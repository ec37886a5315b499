package top

import (
	"bytes"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// snap parses a text exposition taken at t0+sec.
func snap(t *testing.T, sec float64, text string) *Snapshot {
	t.Helper()
	if text != "" && !strings.HasSuffix(text, "\n") {
		text += "\n"
	}
	s, err := Parse(strings.NewReader(text), expfmt.FmtText, t0.Add(time.Duration(sec*float64(time.Second))))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func near(a, b float64) bool {
	if math.IsNaN(a) || math.IsNaN(b) {
		return math.IsNaN(a) && math.IsNaN(b)
	}
	return math.Abs(a-b) < 1e-9
}

func TestRate(t *testing.T) {
	const reqs = "# TYPE r counter\n"
	for _, tt := range []struct {
		name      string
		prev, cur string
		dt        float64
		filter    Filter
		want      float64
	}{
		{"steady", reqs + `r{code="200"} 10`, reqs + `r{code="200"} 30`, 2, nil, 10},
		{"sums series", reqs + "r{code=\"200\"} 10\nr{code=\"500\"} 1", reqs + "r{code=\"200\"} 12\nr{code=\"500\"} 4", 1, nil, 5},
		{"filter", reqs + "r{code=\"200\"} 10\nr{code=\"503\"} 1", reqs + "r{code=\"200\"} 12\nr{code=\"503\"} 4", 1, Prefix("code", "5"), 3},
		{"new series counts from zero", reqs + `r{code="200"} 10`, reqs + "r{code=\"200\"} 10\nr{code=\"500\"} 2", 1, nil, 2},
		{"absent before, present now", "", reqs + `r{code="200"} 4`, 2, nil, 2},
		{"vanished series ignored", reqs + "r{code=\"200\"} 10\nr{code=\"500\"} 2", reqs + `r{code="200"} 11`, 1, nil, 1},
		{"counter reset", reqs + `r{code="200"} 100`, reqs + `r{code="200"} 7`, 1, nil, 7},
		{"reset of one series only", reqs + "r{a=\"x\"} 100\nr{a=\"y\"} 50", reqs + "r{a=\"x\"} 3\nr{a=\"y\"} 60", 1, nil, 13},
		{"process restart", "process_start_time_seconds 1000\n" + reqs + `r{code="200"} 10`,
			"process_start_time_seconds 2000\n" + reqs + `r{code="200"} 15`, 1, nil, 15},
		{"same process", "process_start_time_seconds 1000\n" + reqs + `r{code="200"} 10`,
			"process_start_time_seconds 1000\n" + reqs + `r{code="200"} 15`, 1, nil, 5},
		{"no time passed", reqs + `r 1`, reqs + `r 2`, 0, nil, math.NaN()},
		{"absent everywhere", "", "", 1, nil, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := Rate(snap(t, 0, tt.prev), snap(t, tt.dt, tt.cur), "r", tt.filter)
			if !near(got, tt.want) {
				t.Fatalf("rate = %v, want %v", got, tt.want)
			}
		})
	}
	if got := Rate(nil, snap(t, 1, reqs+"r 1"), "r", nil); !math.IsNaN(got) {
		t.Fatalf("rate without a previous scrape = %v, want NaN", got)
	}
}

func TestQuantile(t *testing.T) {
	inf := math.Inf(1)
	for _, tt := range []struct {
		name    string
		q       float64
		buckets []Bucket
		want    float64
	}{
		{"inside a bucket", 0.5, []Bucket{{0.1, 0}, {0.2, 10}, {inf, 10}}, 0.15},
		{"at a bucket edge", 0.5, []Bucket{{1, 10}, {2, 20}, {4, 40}, {inf, 40}}, 2},
		{"p99", 0.99, []Bucket{{1, 10}, {2, 20}, {4, 40}, {inf, 40}}, 3.96},
		{"first bucket starts at zero", 0.5, []Bucket{{0.5, 4}, {inf, 4}}, 0.25},
		{"beyond the last bound", 0.99, []Bucket{{1, 0}, {10, 1}, {inf, 100}}, 10},
		{"q=0", 0, []Bucket{{1, 5}, {inf, 5}}, 0},
		{"q=1", 1, []Bucket{{1, 5}, {2, 10}, {inf, 10}}, 2},
		{"no observations", 0.5, []Bucket{{1, 0}, {inf, 0}}, math.NaN()},
		{"no +Inf bucket", 0.5, []Bucket{{1, 3}, {2, 4}}, math.NaN()},
		{"only +Inf", 0.5, []Bucket{{inf, 3}}, math.NaN()},
		{"nothing", 0.5, nil, math.NaN()},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := Quantile(tt.q, tt.buckets); !near(got, tt.want) {
				t.Fatalf("Quantile(%v) = %v, want %v", tt.q, got, tt.want)
			}
		})
	}
}

func TestHistIncrease(t *testing.T) {
	const h = "# TYPE d histogram\n"
	series := func(node string, b1, b2, inf float64) string {
		return strings.NewReplacer("N", node).Replace(
			`d_bucket{node="N",le="0.01"} ` + ftoa(b1) + "\n" +
				`d_bucket{node="N",le="0.1"} ` + ftoa(b2) + "\n" +
				`d_bucket{node="N",le="+Inf"} ` + ftoa(inf) + "\n" +
				`d_sum{node="N"} 1` + "\n" +
				`d_count{node="N"} ` + ftoa(inf) + "\n")
	}
	for _, tt := range []struct {
		name      string
		prev, cur string
		filter    Filter
		want      []float64 // cumulative counts for 0.01, 0.1, +Inf
	}{
		{"delta", h + series("a", 5, 10, 10), h + series("a", 5, 30, 30), nil, []float64{0, 20, 20}},
		{"merged across series", h + series("a", 5, 10, 10) + series("b", 0, 0, 0),
			h + series("a", 6, 11, 11) + series("b", 2, 2, 3), nil, []float64{3, 3, 4}},
		{"filtered", h + series("a", 5, 10, 10) + series("b", 0, 0, 0),
			h + series("a", 6, 11, 11) + series("b", 2, 2, 3), Eq("node", "b"), []float64{2, 2, 3}},
		{"reset counts from zero", h + series("a", 50, 100, 100), h + series("a", 1, 4, 4), nil, []float64{1, 4, 4}},
		{"new series", "", h + series("a", 1, 2, 2), nil, []float64{1, 2, 2}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := HistIncrease(snap(t, 0, tt.prev), snap(t, 1, tt.cur), "d", tt.filter)
			if len(got) != 3 {
				t.Fatalf("buckets = %v", got)
			}
			for i, b := range got {
				if b.Count != tt.want[i] {
					t.Fatalf("buckets = %v, want counts %v", got, tt.want)
				}
			}
			if !math.IsInf(got[2].UpperBound, 1) {
				t.Fatalf("last bucket %v, want +Inf", got[2])
			}
		})
	}
}

func ftoa(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

// TestParseProtobuf: the protobuf exposition leaves +Inf implicit; Parse adds it.
func TestParseProtobuf(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "d_seconds", Buckets: []float64{0.01, 0.1}}, []string{"node"})
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "c_total"})
	reg.MustRegister(h, c)
	h.WithLabelValues("a").Observe(0.005)
	h.WithLabelValues("a").Observe(0.05)
	h.WithLabelValues("a").Observe(5)
	c.Add(3)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.FmtProtoDelim)
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			t.Fatal(err)
		}
	}
	s, err := Parse(&buf, expfmt.FmtProtoDelim, t0)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Sum("c_total", nil); got != 3 {
		t.Fatalf("c_total = %v", got)
	}
	hs := s.Hists["d_seconds"]
	if len(hs) != 1 || len(hs[0].Buckets) != 3 || !math.IsInf(hs[0].Buckets[2].UpperBound, 1) || hs[0].Buckets[2].Count != 3 {
		t.Fatalf("histogram = %+v", hs)
	}
	if got := Quantile(0.5, hs[0].Buckets); !near(got, 0.01+0.09*0.5) {
		t.Fatalf("p50 = %v", got)
	}
}
