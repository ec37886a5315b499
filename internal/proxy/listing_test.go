package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	charm "github.com/charmbracelet/charm/proto"

	"github.com/cring-dev/cring/internal/tombstone"
)

// wholeMerge is how listings were merged before they streamed: every
// listing decoded whole, unioned by name (the newest modtime wins, the
// first seen on a tie), deleted entries dropped, the result encoded at once.
// It is the reference the streaming merge must match byte for byte.
func wholeMerge(lists []*charm.FileInfo, dirPath string, tombs map[string]time.Time) ([]byte, bool) {
	out := *lists[0]
	type seen struct {
		f charm.FileInfo
		n int
	}
	byName := map[string]*seen{}
	var newest time.Time
	for _, l := range lists {
		if l.ModTime.After(newest) {
			newest = l.ModTime
		}
		for _, f := range l.Files {
			cur, ok := byName[f.Name]
			if !ok {
				byName[f.Name] = &seen{f: f, n: 1}
				continue
			}
			cur.n++
			if f.ModTime.After(cur.f.ModTime) {
				cur.f = f
			}
		}
	}
	everywhere := true
	out.ModTime = newest
	out.Files = make([]charm.FileInfo, 0, len(byName))
	for _, s := range byName {
		out.Files = append(out.Files, s.f)
		if s.n != len(lists) && !s.f.IsDir {
			everywhere = false
		}
	}
	sort.Slice(out.Files, func(a, b int) bool { return out.Files[a].Name < out.Files[b].Name })
	// dropDeleted
	for _, c := range tombstone.Covering(dirPath) {
		if t, ok := tombs[tombstone.Name(c)]; ok {
			kept := out.Files[:0]
			for _, f := range out.Files {
				if f.IsDir || f.ModTime.After(t) {
					kept = append(kept, f)
				}
			}
			out.Files = kept
		}
	}
	kept := out.Files[:0]
	for _, f := range out.Files {
		p := tombstone.Clean(dirPath + "/" + f.Name)
		if tombstone.Reserved(p) {
			continue
		}
		if len(tombs) == 0 || f.IsDir {
			kept = append(kept, f)
			continue
		}
		if t, ok := tombs[tombstone.Name(p)]; ok && !f.ModTime.After(t) {
			continue
		}
		kept = append(kept, f)
	}
	out.Files = kept
	var b bytes.Buffer
	_ = json.NewEncoder(&b).Encode(&out)
	return b.Bytes(), everywhere
}

// TestStreamedMergeMatchesWhole: random listings (unsorted, overlapping,
// ties, directories, times in several zones and out of Unix nanoseconds'
// range, names JSON escapes, cring's
// own directory in the root, deletes of entries and of the directory)
// merge as streams to exactly the bytes the whole-listing merge gave, with
// the same "every file everywhere" answer.
func TestStreamedMergeMatchesWhole(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	zones := []*time.Location{time.UTC, time.FixedZone("", 3600), time.FixedZone("", -5*3600-1800), time.Local}
	names := []string{"a", "b", "c<d>", "é", "kv/../x", "1", "10", "2", ".cring", "sp%20ace", strings.Repeat("n", 300),
		"q\"uote", "back\\slash", "tab\tnl\n", "\x01\x1f", "line\u2028sep\u2029", "a&b", "bad\xffutf8", ".", ""}
	for run := range 300 {
		dirPath := []string{"", "d", "d/e"}[rng.IntN(3)]
		nodes := 1 + rng.IntN(4)
		var lists []*charm.FileInfo
		for range nodes {
			l := &charm.FileInfo{Name: "d", IsDir: true, ModTime: t0.Add(time.Duration(rng.IntN(5)) * time.Second).In(zones[rng.IntN(len(zones))]), Mode: fs.ModeDir | 0o700}
			for _, k := range rng.Perm(len(names)) {
				if rng.IntN(3) == 0 {
					continue
				}
				l.Files = append(l.Files, charm.FileInfo{
					Name:  names[k],
					IsDir: rng.IntN(6) == 0,
					Size:  int64(rng.IntN(3)),
					ModTime: []time.Time{
						t0.Add(time.Duration(rng.IntN(4))*time.Second + time.Duration(rng.IntN(2))*time.Nanosecond).In(zones[rng.IntN(len(zones))]),
						t0.Add(time.Duration(rng.IntN(4)) * time.Second),
						{}, // zero: before what Unix nanoseconds hold
						time.Date(3000, 1, 1, 0, 0, 0, 5, zones[rng.IntN(len(zones))]),
					}[min(rng.IntN(8), 3)],
					Mode: 0o600,
				})
			}
			lists = append(lists, l)
		}
		tombs := map[string]time.Time{}
		for _, n := range names {
			if rng.IntN(4) == 0 {
				tombs[tombstone.Name(dirPath+"/"+n)] = t0.Add(time.Duration(rng.IntN(4)) * time.Second)
			}
		}
		if rng.IntN(5) == 0 && dirPath != "" {
			tombs[tombstone.Name(dirPath)] = t0.Add(time.Duration(rng.IntN(4)) * time.Second)
		}
		t.Run(fmt.Sprint(run), func(t *testing.T) {
			// Both merge what the nodes send: the listings as JSON.
			var decoded []*charm.FileInfo
			m := newDirMerge()
			for _, l := range lists {
				b, _ := json.Marshal(l)
				d := &charm.FileInfo{}
				if err := json.Unmarshal(b, d); err != nil {
					t.Fatal(err)
				}
				decoded = append(decoded, d)
				// One byte at a time: the decoder must not need more.
				if err := m.add(iotest.OneByteReader(bytes.NewReader(b))); err != nil {
					t.Fatal(err)
				}
			}
			want, wantEverywhere := wholeMerge(decoded, dirPath, tombs)
			if got := m.everywhere(); got != wantEverywhere {
				t.Errorf("everywhere %v, want %v", got, wantEverywhere)
			}
			var got bytes.Buffer
			if err := m.writeJSON(&got, listingFilter(dirPath, tombs)); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Fatalf("streamed:\n%s\nwhole:\n%s", got.Bytes(), want)
			}
		})
	}
}

// TestRawNamesMatchWhole: names a node sends unescaped that encoding/json
// would change as it decodes them (invalid UTF-8) come out as the whole
// merge gave them.
func TestRawNamesMatchWhole(t *testing.T) {
	raw := []byte("{\"name\":\"d\",\"is_dir\":true,\"files\":[{\"name\":\"ok\"},{\"name\":\"bad\xff\xfe\"},{\"name\":\"\xe2\x80\xa8\"}]}")
	var whole charm.FileInfo
	if err := json.Unmarshal(raw, &whole); err != nil {
		t.Fatal(err)
	}
	want, _ := wholeMerge([]*charm.FileInfo{&whole}, "d", nil)
	m := newDirMerge()
	if err := m.add(bytes.NewReader(raw)); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if err := m.writeJSON(&got, listingFilter("d", nil)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("streamed:\n%q\nwhole:\n%q", got.Bytes(), want)
	}
}

// TestDecodeListingShapes: what a node may send, and what is refused.
func TestDecodeListingShapes(t *testing.T) {
	for _, tt := range []struct {
		name    string
		in      string
		entries int
		err     bool
	}{
		{"empty directory", `{"name":"d","is_dir":true,"size":0,"modtime":"2024-01-01T00:00:00Z","mode":2147484096}`, 0, false},
		{"files null", `{"name":"d","files":null}`, 0, false},
		{"files first, unknown fields", `{"files":[{"name":"a","stamp":"x"},{"name":"b"}],"name":"d","extra":{"x":[1]}}`, 2, false},
		{"field names in any case", `{"Name":"d","FILES":[{"Name":"a"}]}`, 1, false},
		{"not an object", `[1]`, 0, true},
		{"files not an array", `{"files":{"a":1}}`, 0, true},
		{"cut mid-entry", `{"name":"d","files":[{"name":"a"},{"name":"b`, 0, true}, // entries are added in batches
		{"cut after the files", `{"name":"d","files":[{"name":"a"}]`, 1, true},
		{"name too long", `{"files":[{"name":"` + strings.Repeat("x", maxNameLen+1) + `"}]}`, 0, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := newDirMerge()
			err := m.add(strings.NewReader(tt.in))
			if (err != nil) != tt.err {
				t.Fatalf("err %v, want error: %v", err, tt.err)
			}
			if m.count != tt.entries {
				t.Errorf("%d entries merged, want %d", m.count, tt.entries)
			}
			if tt.err && m.lists != 0 {
				t.Errorf("a broken listing counted as merged")
			}
			if tt.err && tt.entries > 0 && m.everywhere() {
				t.Errorf("a listing broken after adding entries still claims every file everywhere")
			}
		})
	}
}

// TestMergeTableGrows: many distinct names across several listings, the
// table growing many times over, each name once with its listing count.
func TestMergeTableGrows(t *testing.T) {
	const n = 20000
	m := newDirMerge()
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for node := range 3 {
		var b bytes.Buffer
		b.WriteString(`{"name":"d","files":[`)
		for k := range n {
			if k > 0 {
				b.WriteByte(',')
			}
			// node 2 lacks every tenth name
			if node == 2 && k%10 == 0 {
				fmt.Fprintf(&b, `{"name":"other-%d","modtime":%q}`, k, t0.Format(time.RFC3339))
				continue
			}
			fmt.Fprintf(&b, `{"name":"file-%d","size":%d,"modtime":%q}`, (k*7919)%n, node, t0.Add(time.Duration(node)*time.Second).Format(time.RFC3339))
		}
		b.WriteString(`]}`)
		if err := m.add(&b); err != nil {
			t.Fatal(err)
		}
	}
	if want := n + n/10; m.count != want {
		t.Fatalf("%d entries, want %d", m.count, want)
	}
	var out bytes.Buffer
	if err := m.writeJSON(&out, nil); err != nil {
		t.Fatal(err)
	}
	var got charm.FileInfo
	if err := json.NewDecoder(io.MultiReader(&out)).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if !sort.SliceIsSorted(got.Files, func(a, b int) bool { return got.Files[a].Name < got.Files[b].Name }) {
		t.Error("entries not sorted by name")
	}
	for _, f := range got.Files {
		if strings.HasPrefix(f.Name, "file-") && f.Size != 2 && f.Size != 1 {
			t.Fatalf("%s: size %d, want the newest listing's", f.Name, f.Size)
		}
	}
}

// BenchmarkListingMerge merges three nodes' 50,000-entry listings and
// writes the result: B/op is the garbage a listing makes (its table is a
// small part of it).
//
//	go test ./internal/proxy -run '^$' -bench ListingMerge -benchmem
func BenchmarkListingMerge(b *testing.B) {
	const n = 50_000
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 123456789, time.UTC)
	l := &charm.FileInfo{Name: "d", IsDir: true, ModTime: t0, Mode: fs.ModeDir | 0o700}
	for k := range n {
		l.Files = append(l.Files, charm.FileInfo{Name: fmt.Sprintf("%044d", k), Size: 1, ModTime: t0, Mode: 0o600})
	}
	body, _ := json.Marshal(l)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		m := newDirMerge()
		for range 3 {
			if err := m.add(bytes.NewReader(body)); err != nil {
				b.Fatal(err)
			}
		}
		if err := m.writeJSON(io.Discard, listingFilter("d", nil)); err != nil {
			b.Fatal(err)
		}
	}
}
