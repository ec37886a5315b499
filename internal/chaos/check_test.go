package chaos

import (
	"slices"
	"testing"
	"time"
)

// hist builds a history from compact ops: times are seconds after t0.
type hop struct {
	kind       OpKind
	path       string
	start, end float64
	outcome    Outcome
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func at(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }

func build(hops []hop) []*Op {
	var ops []*Op
	for i, h := range hops {
		o := &Op{ID: i, Kind: h.kind, Path: h.path, Start: at(h.start), End: at(h.end), Outcome: h.outcome}
		if h.kind == OpWrite {
			o.Data = content(7, i, h.path, 10)
		}
		ops = append(ops, o)
	}
	return ops
}

// TestCheckFinal: what the final state of one key may be, given its
// history, and how a wrong one is classified.
func TestCheckFinal(t *testing.T) {
	const key = "dir0/sub/f0"
	w := func(s, e float64, o Outcome) hop { return hop{OpWrite, key, s, e, o} }
	del := func(s, e float64, o Outcome) hop { return hop{OpDelete, key, s, e, o} }
	deldir := func(s, e float64, o Outcome) hop { return hop{OpDeleteDir, "dir0", s, e, o} }
	other := hop{OpWrite, "dir1/sub/f0", 0, 1, OK}
	absent := -1
	for _, tt := range []struct {
		name  string
		hops  []hop
		final int // op index whose bytes are read, or absent
		want  Class
	}{
		{"never written, absent", []hop{other}, absent, ""},
		{"last acked write survives", []hop{w(0, 1, OK), w(2, 3, OK)}, 1, ""},
		{"older acked write instead of the last", []hop{w(0, 1, OK), w(2, 3, OK)}, 0, Lost},
		{"acked write gone", []hop{w(0, 1, OK)}, absent, Lost},
		{"acked delete stays deleted", []hop{w(0, 1, OK), del(2, 3, OK)}, absent, ""},
		{"acked delete came back", []hop{w(0, 1, OK), del(2, 3, OK)}, 0, Resurrected},
		{"directory delete covers the key", []hop{w(0, 1, OK), deldir(2, 3, OK)}, 0, Resurrected},
		{"directory delete of another dir does not", []hop{w(0, 1, OK), {OpDeleteDir, "dir1", 2, 3, OK}}, 0, ""},
		{"older write after concurrent delete and write", []hop{w(0, 1, OK), del(2, 4, OK), w(3, 5, OK)}, 0, Lost},
		{"concurrent write wins", []hop{w(0, 1, OK), del(2, 4, OK), w(3, 5, OK)}, 2, ""},
		{"concurrent delete wins", []hop{w(0, 1, OK), del(2, 4, OK), w(3, 5, OK)}, absent, ""},
		{"later unknown write may survive", []hop{w(0, 1, OK), del(2, 3, OK), w(4, 5, Unknown)}, 2, ""},
		{"later unknown write may be lost", []hop{w(0, 1, OK), del(2, 3, OK), w(4, 5, Unknown)}, absent, ""},
		{"later unknown delete may have happened", []hop{w(0, 1, OK), del(2, 3, Unknown)}, absent, ""},
		{"unknown write superseded by an ack", []hop{w(0, 1, Unknown), w(2, 3, OK)}, 0, Lost},
		{"refused write never lands", []hop{w(0, 1, OK), w(2, 3, Failed)}, 1, Wrong},
		{"only unknown ops: anything of them", []hop{w(0, 1, Unknown)}, absent, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ops := build(tt.hops)
			obs := Observation{Key: key, Via: "proxy1 read"}
			if tt.final != absent {
				obs.Present, obs.Data = true, ops[tt.final].Data
			}
			findings, _ := Check(t0, []string{key, "dir1/sub/f0"}, ops, []Observation{obs})
			var got Class
			if len(findings) > 0 {
				got = findings[0].Class
			}
			if got != tt.want || len(findings) > 1 {
				t.Fatalf("got %v, want %q", findings, tt.want)
			}
		})
	}
}

// TestCheckObservations: bytes nobody wrote, listings, failed reads and
// proxies that disagree.
func TestCheckObservations(t *testing.T) {
	const key = "dir0/sub/f0"
	ops := build([]hop{{OpWrite, key, 0, 1, OK}, {OpDelete, key, 2, 3, OK}, {OpWrite, "dir0/sub/f1", 0, 1, OK}})
	for _, tt := range []struct {
		name string
		obs  []Observation
		want []Class
	}{
		{"foreign bytes", []Observation{{Key: key, Via: "proxy1 read", Present: true, Data: []byte("hello")}}, []Class{Wrong}},
		{"another key's bytes", []Observation{{Key: key, Via: "proxy1 read", Present: true, Data: ops[2].Data}}, []Class{Wrong}},
		{"listed after delete", []Observation{{Key: key, Via: "proxy2 list", Present: true}}, []Class{Resurrected}},
		{"not listed after delete", []Observation{{Key: key, Via: "proxy2 list"}}, nil},
		{"listing lacks a write", []Observation{{Key: "dir0/sub/f1", Via: "proxy2 list"}}, []Class{Lost}},
		{"read failed", []Observation{{Key: key, Via: "proxy1 read", Err: "503"}}, []Class{Unreadable}},
		{"proxies disagree", []Observation{
			{Key: "dir0/sub/f1", Via: "proxy1 read", Present: true, Data: ops[2].Data},
			{Key: "dir0/sub/f1", Via: "proxy2 read"},
		}, []Class{Lost, Split}},
		{"one finding per class and key", []Observation{
			{Key: "dir0/sub/f1", Via: "proxy1 read"},
			{Key: "dir0/sub/f1", Via: "proxy2 read"},
		}, []Class{Lost}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			findings, _ := Check(t0, []string{key, "dir0/sub/f1"}, ops, tt.obs)
			var got []Class
			for _, f := range findings {
				got = append(got, f.Class)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v (%v)", got, tt.want, findings)
			}
		})
	}
}

// TestCheckReads: reads during the run are judged at their own time:
// stale ones are counted, foreign bytes are failures.
func TestCheckReads(t *testing.T) {
	const key = "dir0/sub/f0"
	ops := build([]hop{{OpWrite, key, 0, 1, OK}, {OpWrite, key, 2, 3, OK}})
	read := func(s, e float64, data []byte) *Op {
		return &Op{ID: 100, Kind: OpRead, Path: key, Start: at(s), End: at(e), Outcome: OK, Found: data != nil, Data: data}
	}
	for _, tt := range []struct {
		name      string
		read      *Op
		stale     int
		wantWrong bool
	}{
		{"current", read(4, 5, ops[1].Data), 0, false},
		{"during the overwrite", read(2.5, 2.6, ops[0].Data), 0, false},
		{"new value early", read(2.1, 2.2, ops[1].Data), 0, false},
		{"superseded", read(4, 5, ops[0].Data), 1, false},
		{"absent before any write", read(-1, -0.5, nil), 0, false},
		{"absent after a write", read(4, 5, nil), 1, false},
		{"value before its write", read(-1, -0.5, ops[1].Data), 1, false},
		{"foreign bytes", read(4, 5, []byte("x")), 0, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			findings, stale := Check(t0, []string{key}, append(build([]hop{{OpWrite, key, 0, 1, OK}, {OpWrite, key, 2, 3, OK}}), tt.read), nil)
			if stale != tt.stale || (len(findings) > 0) != tt.wantWrong {
				t.Fatalf("stale %d, findings %v; want stale %d, wrong %v", stale, findings, tt.stale, tt.wantWrong)
			}
		})
	}
}

func TestContentOp(t *testing.T) {
	for _, id := range []int{0, 7, 12345} {
		if got := contentOp(content(3, id, "a/b", 100)); got != id {
			t.Errorf("contentOp(content(%d)) = %d", id, got)
		}
	}
	if got := contentOp([]byte("no header")); got != -1 {
		t.Errorf("contentOp of foreign bytes = %d, want -1", got)
	}
}

func TestHangs(t *testing.T) {
	ops := build([]hop{{OpRead, "k", 0, 29, OK}, {OpWrite, "k", 0, 31, Unknown}})
	if got := hangs(t0, ops, 30*time.Second); len(got) != 1 || got[0].Key != "k" || got[0].Class != Hang {
		t.Fatalf("hangs = %v, want the 31 s write", got)
	}
}
