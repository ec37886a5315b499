package chaos

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Class is a kind of failure the checker finds.
type Class string

// Failure classes, in the order the summary prints them.
const (
	// Lost: an acknowledged write is gone (the key is absent, or holds an
	// older version) with nothing later that could explain it.
	Lost Class = "lost"
	// Resurrected: an acknowledged delete came back.
	Resurrected Class = "resurrected"
	// Wrong: bytes that no client ever wrote to that key.
	Wrong Class = "wrong"
	// NotN: after the convergence deadline the key is not on exactly its
	// N replicas with identical bytes (and nowhere else).
	NotN Class = "not-N"
	// Split: two ways in (the proxies, the balancer) answer differently
	// for the same key.
	Split Class = "split"
	// Unreadable: a final read or listing through a healed cluster failed.
	Unreadable Class = "unreadable"
	// Crash: a proxy or node process exited when the schedule did not kill it.
	Crash Class = "crash"
	// Hang: a client operation took longer than the hang limit.
	Hang Class = "hang"
)

// Classes lists every class in summary order.
var Classes = []Class{Lost, Resurrected, Wrong, NotN, Split, Unreadable, Crash, Hang}

// Finding is one failure.
type Finding struct {
	Class  Class    `json:"class"`
	Key    string   `json:"key,omitempty"` // the key, directory or process
	Detail string   `json:"detail"`
	Ops    []string `json:"ops,omitempty"` // the key's history, for the report
}

// Observation is what one final read or listing through a proxy saw of a key.
type Observation struct {
	Key     string `json:"key"`
	Via     string `json:"via"` // "proxy1 read", "proxy2 list"…
	Present bool   `json:"present"`
	// Data is the content a read returned; nil for a listing (which
	// only says present or absent).
	Data []byte `json:"data,omitempty"`
	Err  string `json:"err,omitempty"` // the read itself failed
}

// checker judges observations against the history of every key.
type checker struct {
	t0     time.Time // when the run started, for times in details
	models map[string]*keyModel
}

// keyModel is what may be stored under one key, from its history.
type keyModel struct {
	key    string
	muts   []*Op       // mutations covering the key, except failed ones, by start
	writes map[int]*Op // every write of the key, by id
}

func newChecker(t0 time.Time, keys []string, ops []*Op) *checker {
	c := &checker{t0: t0, models: map[string]*keyModel{}}
	for _, k := range keys {
		c.models[k] = &keyModel{key: k, writes: map[int]*Op{}}
	}
	for _, o := range ops {
		if !o.Kind.mutates() {
			continue
		}
		for _, m := range c.models {
			if !o.covers(m.key) {
				continue
			}
			if o.Kind == OpWrite {
				m.writes[o.ID] = o
			}
			if o.Outcome != Failed {
				m.muts = append(m.muts, o)
			}
		}
	}
	for _, m := range c.models {
		slices.SortFunc(m.muts, func(a, b *Op) int { return a.Start.Compare(b.Start) })
	}
	return c
}

// allowed is every version that may be the key's state as seen by a read
// that ended at end (zero: after everything): each mutation that started
// before end and that no acknowledged mutation followed in real time before
// the read started; initial is whether "never written" still is. A read
// that ended at end may see X if no acknowledged Y came strictly after X
// and strictly before the read.
func (m *keyModel) allowed(start, end time.Time) (cands []*Op, initial bool) {
	final := end.IsZero()
	initial = true
	for _, y := range m.muts {
		if y.Outcome == OK && (final || y.End.Before(start)) {
			initial = false
			break
		}
	}
	for _, x := range m.muts {
		if !final && !x.Start.Before(end) {
			continue
		}
		superseded := false
		for _, y := range m.muts {
			if y.Outcome == OK && x.before(y) && (final || y.End.Before(start)) {
				superseded = true
				break
			}
		}
		if !superseded {
			cands = append(cands, x)
		}
	}
	return cands, initial
}

// lastAcked is the acknowledged mutation that ended last, nil if none.
func (m *keyModel) lastAcked() *Op {
	var last *Op
	for _, y := range m.muts {
		if y.Outcome == OK && (last == nil || y.End.After(last.End)) {
			last = y
		}
	}
	return last
}

// judge classifies one final observation; "" is fine.
func (c *checker) judge(obs Observation) (Class, string) {
	m := c.models[obs.Key]
	if obs.Err != "" {
		return Unreadable, fmt.Sprintf("%s failed: %s", obs.Via, obs.Err)
	}
	cands, initial := m.allowed(time.Time{}, time.Time{})
	last := m.lastAcked()
	switch {
	case obs.Present && obs.Data != nil:
		w := m.writes[contentOp(obs.Data)]
		if w == nil || !bytes.Equal(w.Data, obs.Data) {
			return Wrong, fmt.Sprintf("%s returned %d bytes no write of this key sent: %.60q", obs.Via, len(obs.Data), obs.Data)
		}
		if slices.Contains(cands, w) {
			return "", ""
		}
		if w.Outcome == Failed {
			return Wrong, fmt.Sprintf("%s returned the bytes of %s, which was refused", obs.Via, c.describe(w))
		}
		if last != nil && last.Kind != OpWrite {
			return Resurrected, fmt.Sprintf("%s returned %s, deleted by acknowledged %s", obs.Via, c.describe(w), c.describe(last))
		}
		return Lost, fmt.Sprintf("%s returned %s, older than acknowledged %s", obs.Via, c.describe(w), c.describe(last))
	case obs.Present:
		if slices.ContainsFunc(cands, func(o *Op) bool { return o.Kind == OpWrite }) {
			return "", ""
		}
		if len(m.writes) == 0 {
			return Wrong, fmt.Sprintf("%s lists it, and no client ever wrote it", obs.Via)
		}
		return Resurrected, fmt.Sprintf("%s lists it, deleted by acknowledged %s", obs.Via, c.describe(last))
	default:
		if initial || slices.ContainsFunc(cands, func(o *Op) bool { return o.Kind != OpWrite }) {
			return "", ""
		}
		return Lost, fmt.Sprintf("%s finds it absent; acknowledged %s", obs.Via, c.describe(last))
	}
}

// staleRead reports whether a read during the run returned a version
// that was already superseded when it started (information, not a
// failure: a proxy may serve a replica that has not caught up), and
// whether its bytes were never written (a failure).
func (c *checker) judgeRead(r *Op) (stale bool, wrong string) {
	m := c.models[r.Path]
	if m == nil || r.Outcome != OK {
		return false, ""
	}
	cands, initial := m.allowed(r.Start, r.End)
	if !r.Found {
		return !initial && !slices.ContainsFunc(cands, func(o *Op) bool { return o.Kind != OpWrite }), ""
	}
	w := m.writes[contentOp(r.Data)]
	if w == nil || !bytes.Equal(w.Data, r.Data) {
		return false, fmt.Sprintf("%s at %s returned %d bytes no write of this key sent: %.60q", r, c.at(r.End), len(r.Data), r.Data)
	}
	return !slices.Contains(cands, w), ""
}

func (c *checker) at(t time.Time) string { return fmt.Sprintf("%.1fs", t.Sub(c.t0).Seconds()) }

// describe names an op with its times relative to the run's start.
func (c *checker) describe(o *Op) string {
	if o == nil {
		return "nothing"
	}
	return fmt.Sprintf("%s [%s–%s]", o, c.at(o.Start), c.at(o.End))
}

// trail is the key's mutations, the last few, for a finding's details.
func (c *checker) trail(key string, limit int) []string {
	m := c.models[key]
	var all []*Op
	for _, w := range m.writes {
		if w.Outcome == Failed {
			all = append(all, w)
		}
	}
	all = append(all, m.muts...)
	slices.SortFunc(all, func(a, b *Op) int { return cmp.Or(a.Start.Compare(b.Start), cmp.Compare(a.ID, b.ID)) })
	if len(all) > limit {
		all = all[len(all)-limit:]
	}
	out := make([]string, len(all))
	for i, o := range all {
		out[i] = c.describe(o)
	}
	return out
}

// Check judges the final observations (at least one per key and proxy)
// and every read of the run against the history, and reports each key's
// worst class once per class. It also returns how many reads during the
// run were stale (information only).
func Check(t0 time.Time, keys []string, ops []*Op, finals []Observation) (findings []Finding, staleReads int) {
	c := newChecker(t0, keys, ops)
	seen := map[string]bool{}
	add := func(class Class, key, detail string) {
		id := string(class) + "\x00" + key
		if seen[id] {
			return
		}
		seen[id] = true
		findings = append(findings, Finding{Class: class, Key: key, Detail: detail, Ops: c.trail(key, 12)})
	}
	for _, o := range ops {
		if o.Kind != OpRead {
			continue
		}
		stale, wrong := c.judgeRead(o)
		if stale {
			staleReads++
		}
		if wrong != "" {
			add(Wrong, o.Path, wrong)
		}
	}
	reads := map[string][]Observation{}
	for _, obs := range finals {
		if _, ok := c.models[obs.Key]; !ok {
			continue
		}
		if class, detail := c.judge(obs); class != "" {
			add(class, obs.Key, detail)
		}
		if obs.Data != nil || (!obs.Present && obs.Err == "" && strings.HasSuffix(obs.Via, "read")) {
			reads[obs.Key] = append(reads[obs.Key], obs)
		}
	}
	for _, k := range keys {
		if d := splitDetail(reads[k]); d != "" {
			add(Split, k, d)
		}
	}
	sortFindings(findings)
	return findings, staleReads
}

// sortFindings orders findings by class (summary order), then key.
func sortFindings(fs []Finding) {
	slices.SortStableFunc(fs, func(a, b Finding) int {
		return cmp.Or(cmp.Compare(slices.Index(Classes, a.Class), slices.Index(Classes, b.Class)), strings.Compare(a.Key, b.Key))
	})
}

// splitDetail describes reads of one key that disagree, "" if they agree.
func splitDetail(obs []Observation) string {
	for _, o := range obs[min(1, len(obs)):] {
		if o.Present != obs[0].Present || !bytes.Equal(o.Data, obs[0].Data) {
			return fmt.Sprintf("%s: %s; %s: %s", obs[0].Via, version(obs[0]), o.Via, version(o))
		}
	}
	return ""
}

func version(o Observation) string {
	if !o.Present {
		return "absent"
	}
	return fmt.Sprintf("op %d", contentOp(o.Data))
}

// hangs are the operations that took at least limit.
func hangs(t0 time.Time, ops []*Op, limit time.Duration) []Finding {
	var out []Finding
	for _, o := range ops {
		if d := o.End.Sub(o.Start); d >= limit {
			out = append(out, Finding{Class: Hang, Key: o.Path, Detail: fmt.Sprintf("%s took %s (from %.1fs)", o, d.Round(time.Millisecond), o.Start.Sub(t0).Seconds())})
		}
	}
	return out
}
