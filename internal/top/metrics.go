// Package top is what `cring top` shows: it scrapes a proxy's admin API,
// turns two scrapes into rates and latency quantiles, and renders them as a
// live terminal view.
package top

import (
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// Labels of one series.
type Labels map[string]string

// key is a canonical form of the labels, to pair series across scrapes.
func (l Labels) key() string {
	names := make([]string, 0, len(l))
	for k := range l {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, k := range names {
		fmt.Fprintf(&b, "%s=%q,", k, l[k])
	}
	return b.String()
}

// Sample is one counter, gauge or untyped series.
type Sample struct {
	Labels Labels
	Value  float64
}

// Bucket is a cumulative histogram bucket.
type Bucket struct {
	UpperBound float64
	Count      float64
}

// Histogram is one histogram series; Buckets are sorted and end with +Inf.
type Histogram struct {
	Labels  Labels
	Count   float64
	Sum     float64
	Buckets []Bucket
}

// Snapshot is one scrape of /metrics.
type Snapshot struct {
	At      time.Time
	Samples map[string][]Sample
	Hists   map[string][]Histogram
}

// Parse reads an exposition (text or delimited protobuf) taken at at.
func Parse(r io.Reader, format expfmt.Format, at time.Time) (*Snapshot, error) {
	s := &Snapshot{At: at, Samples: map[string][]Sample{}, Hists: map[string][]Histogram{}}
	dec := expfmt.NewDecoder(r, format)
	for {
		var mf dto.MetricFamily
		if err := dec.Decode(&mf); err != nil {
			if errors.Is(err, io.EOF) {
				return s, nil
			}
			return nil, fmt.Errorf("parse metrics: %w", err)
		}
		name := mf.GetName()
		for _, m := range mf.GetMetric() {
			l := Labels{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				s.Samples[name] = append(s.Samples[name], Sample{l, m.GetCounter().GetValue()})
			case dto.MetricType_GAUGE:
				s.Samples[name] = append(s.Samples[name], Sample{l, m.GetGauge().GetValue()})
			case dto.MetricType_UNTYPED:
				s.Samples[name] = append(s.Samples[name], Sample{l, m.GetUntyped().GetValue()})
			case dto.MetricType_HISTOGRAM:
				s.Hists[name] = append(s.Hists[name], histogram(l, m.GetHistogram()))
			}
		}
	}
}

func histogram(l Labels, h *dto.Histogram) Histogram {
	out := Histogram{Labels: l, Count: float64(h.GetSampleCount()), Sum: h.GetSampleSum()}
	for _, b := range h.GetBucket() {
		out.Buckets = append(out.Buckets, Bucket{b.GetUpperBound(), float64(b.GetCumulativeCount())})
	}
	sort.Slice(out.Buckets, func(i, j int) bool { return out.Buckets[i].UpperBound < out.Buckets[j].UpperBound })
	// The protobuf form leaves +Inf implicit.
	if n := len(out.Buckets); n == 0 || !math.IsInf(out.Buckets[n-1].UpperBound, 1) {
		out.Buckets = append(out.Buckets, Bucket{math.Inf(1), out.Count})
	}
	return out
}

// Filter selects series by their labels; nil selects all.
type Filter func(Labels) bool

// Eq selects series whose label name is one of values.
func Eq(name string, values ...string) Filter {
	return func(l Labels) bool {
		for _, v := range values {
			if l[name] == v {
				return true
			}
		}
		return false
	}
}

// Prefix selects series whose label name starts with p.
func Prefix(name, p string) Filter {
	return func(l Labels) bool { return strings.HasPrefix(l[name], p) }
}

// And selects series every filter selects.
func And(fs ...Filter) Filter {
	return func(l Labels) bool {
		for _, f := range fs {
			if f != nil && !f(l) {
				return false
			}
		}
		return true
	}
}

func (f Filter) match(l Labels) bool { return f == nil || f(l) }

// Has reports whether the scrape holds metric name at all.
func (s *Snapshot) Has(name string) bool {
	if s == nil {
		return false
	}
	_, ok := s.Samples[name]
	_, okh := s.Hists[name]
	return ok || okh
}

// Sum adds the selected series of name; NaN when name is absent.
func (s *Snapshot) Sum(name string, f Filter) float64 {
	if s == nil || s.Samples[name] == nil {
		return math.NaN()
	}
	var v float64
	for _, x := range s.Samples[name] {
		if f.match(x.Labels) {
			v += x.Value
		}
	}
	return v
}

// Max is the largest selected series of name; NaN when none.
func (s *Snapshot) Max(name string, f Filter) float64 {
	v := math.NaN()
	if s == nil {
		return v
	}
	for _, x := range s.Samples[name] {
		if f.match(x.Labels) && (math.IsNaN(v) || x.Value > v) {
			v = x.Value
		}
	}
	return v
}

// Count is Sum for counters: an absent counter (a vector nothing has
// incremented yet) is 0.
func (s *Snapshot) Count(name string, f Filter) float64 {
	if v := s.Sum(name, f); !math.IsNaN(v) {
		return v
	}
	return 0
}

// LabelValues lists the distinct values of label across name's series
// (samples or histograms), sorted.
func (s *Snapshot) LabelValues(name, label string) []string {
	if s == nil {
		return nil
	}
	seen := map[string]bool{}
	for _, x := range s.Samples[name] {
		if v, ok := x.Labels[label]; ok {
			seen[v] = true
		}
	}
	for _, h := range s.Hists[name] {
		if v, ok := h.Labels[label]; ok {
			seen[v] = true
		}
	}
	out := make([]string, 0, len(seen))
	for v := range seen {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}

// startTime is the scraped process's start (0 if unknown).
func (s *Snapshot) startTime() float64 {
	v := s.Max("process_start_time_seconds", nil)
	if math.IsNaN(v) {
		return 0
	}
	return v
}

// restarted reports whether cur comes from a newer process than prev, so
// every counter started again from zero.
func restarted(prev, cur *Snapshot) bool {
	p, c := prev.startTime(), cur.startTime()
	return p != 0 && c != 0 && p != c
}

// Increase is how much the selected counters of name grew from prev to cur.
// A series that went down (a reset) or is new counts from zero, as does
// everything when the process restarted.
func Increase(prev, cur *Snapshot, name string, f Filter) float64 {
	if cur == nil {
		return math.NaN()
	}
	before := map[string]float64{}
	if prev != nil && !restarted(prev, cur) {
		for _, x := range prev.Samples[name] {
			before[x.Labels.key()] = x.Value
		}
	}
	var inc float64
	for _, x := range cur.Samples[name] {
		if !f.match(x.Labels) {
			continue
		}
		p, ok := before[x.Labels.key()]
		if !ok || x.Value < p {
			p = 0
		}
		inc += x.Value - p
	}
	return inc
}

// Rate is Increase per second between the two scrapes; NaN without two.
func Rate(prev, cur *Snapshot, name string, f Filter) float64 {
	if prev == nil || cur == nil {
		return math.NaN()
	}
	dt := cur.At.Sub(prev.At).Seconds()
	if dt <= 0 {
		return math.NaN()
	}
	return Increase(prev, cur, name, f) / dt
}

// HistIncrease is the observations the selected histograms of name gained
// from prev to cur, merged into one set of cumulative buckets (with the same
// reset rules as Increase).
func HistIncrease(prev, cur *Snapshot, name string, f Filter) []Bucket {
	if prev == nil || cur == nil {
		return nil
	}
	before := map[string]Histogram{}
	if !restarted(prev, cur) {
		for _, h := range prev.Hists[name] {
			before[h.Labels.key()] = h
		}
	}
	byBound := map[float64]float64{}
	for _, h := range cur.Hists[name] {
		if !f.match(h.Labels) {
			continue
		}
		p, ok := before[h.Labels.key()]
		reset := !ok || h.Count < p.Count
		old := map[float64]float64{}
		if !reset {
			for _, b := range p.Buckets {
				old[b.UpperBound] = b.Count
			}
		}
		for _, b := range h.Buckets {
			byBound[b.UpperBound] += max(b.Count-old[b.UpperBound], 0)
		}
	}
	out := make([]Bucket, 0, len(byBound))
	for ub, c := range byBound {
		out = append(out, Bucket{ub, c})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UpperBound < out[j].UpperBound })
	return out
}

// Quantile estimates the q-quantile (0..1) from cumulative buckets ending in
// +Inf, interpolating linearly inside a bucket as Prometheus's
// histogram_quantile does. NaN when there are no observations; the largest
// finite bound when the quantile falls in the +Inf bucket.
func Quantile(q float64, buckets []Bucket) float64 {
	n := len(buckets)
	if n < 2 || !math.IsInf(buckets[n-1].UpperBound, 1) || buckets[n-1].Count <= 0 || math.IsNaN(q) {
		return math.NaN()
	}
	q = min(max(q, 0), 1)
	rank := q * buckets[n-1].Count
	b := sort.Search(n-1, func(i int) bool { return buckets[i].Count >= rank })
	if b == n-1 {
		return buckets[n-2].UpperBound
	}
	if b == 0 && buckets[0].UpperBound <= 0 {
		return buckets[0].UpperBound
	}
	start, end, count := 0.0, buckets[b].UpperBound, buckets[b].Count
	if b > 0 {
		start = buckets[b-1].UpperBound
		count -= buckets[b-1].Count
		rank -= buckets[b-1].Count
	}
	if count <= 0 {
		return end
	}
	return start + (end-start)*(rank/count)
}
