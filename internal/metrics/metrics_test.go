package metrics

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestRequestCounts: counts and durations land in the series of their
// labels, however often a label set repeats (children are cached), and
// labels from outside the closed sets fold into "other".
func TestRequestCounts(t *testing.T) {
	m := New()
	for range 3 {
		m.Request("fs", "GET", 200, time.Millisecond, 0, 10)
	}
	m.Request("fs", "GET", 404, time.Millisecond, 0, 10)
	m.Request("fs", "BREW", 200, time.Millisecond, 0, 10)
	m.Request("fs", "GET", 999, time.Millisecond, 0, 10)
	m.Request("fs", "GET", 42, time.Millisecond, 0, 10)
	for range 2 {
		m.NodeRequest("n1", 200, nil, time.Millisecond)
	}
	m.NodeRequest("n1", 503, nil, time.Millisecond)
	m.NodeRequest("n1", 0, errors.New("refused"), 0)
	m.NodeRequest("n2", 204, nil, time.Millisecond)

	got := map[string]float64{}
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			var labels []string
			for _, l := range mt.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			key := mf.GetName() + "{" + strings.Join(labels, ",") + "}"
			switch {
			case mt.GetCounter() != nil:
				got[key] = mt.GetCounter().GetValue()
			case mt.GetHistogram() != nil:
				got[key] = float64(mt.GetHistogram().GetSampleCount())
			}
		}
	}
	for _, tc := range []struct {
		series string
		want   float64
	}{
		{"cring_http_requests_total{code=200,method=GET,route=fs}", 3},
		{"cring_http_requests_total{code=404,method=GET,route=fs}", 1},
		{"cring_http_requests_total{code=200,method=other,route=fs}", 1},
		{"cring_http_requests_total{code=other,method=GET,route=fs}", 2},
		{"cring_http_request_duration_seconds{method=GET,route=fs}", 6},
		{"cring_node_requests_total{node=n1,outcome=2xx}", 2},
		{"cring_node_requests_total{node=n1,outcome=5xx}", 1},
		{"cring_node_requests_total{node=n1,outcome=error}", 1},
		{"cring_node_requests_total{node=n2,outcome=2xx}", 1},
		{"cring_node_request_duration_seconds{node=n1}", 3},
		{"cring_node_request_duration_seconds{node=n2}", 1},
	} {
		if got[tc.series] != tc.want {
			t.Errorf("%s = %v, want %v", tc.series, got[tc.series], tc.want)
		}
	}
}
