package proxy

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"strings"
	"testing"
	"time"

	charm "github.com/charmbracelet/charm/proto"

	"github.com/cring-dev/cring/internal/stamp"
	"github.com/cring-dev/cring/internal/tombstone"
)

// bigDir is a listing of n files plus extra, about 110 bytes of JSON per
// entry: 12,000 entries are over a MiB, more than any other small answer
// the proxy keeps.
func bigDir(name string, n int, t time.Time, extra ...charm.FileInfo) entry {
	d := &charm.FileInfo{Name: name, IsDir: true, ModTime: t, Mode: fs.ModeDir | 0o700}
	for k := range n {
		d.Files = append(d.Files, charm.FileInfo{Name: fmt.Sprintf("file-%05d", k), Size: 1, ModTime: t, Mode: 0o600})
	}
	d.Files = append(d.Files, extra...)
	return entry{dir: d}
}

// TestBigListings: a directory and a tombstone directory of over a MiB each
// are merged whole (they used to be cut at a MiB, which dropped a node's
// listing silently and ignored every tombstone), and the stale copy of a
// deleted file stays hidden.
func TestBigListings(t *testing.T) {
	const n = 12000
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	c := newCluster(t, 2, nil, nil, nil)
	gone := charm.FileInfo{Name: "gone", Size: 1, ModTime: t0, Mode: 0o600}
	only3 := charm.FileInfo{Name: "only-on-node3", Size: 1, ModTime: t0, Mode: 0o600}
	tomb := charm.FileInfo{Name: tombstone.Name("big/gone"), Size: 1, ModTime: t0.Add(time.Minute), Mode: 0o600}
	c.fakes[0].put("big", bigDir("big", n, t0))
	c.fakes[1].put("big", bigDir("big", n, t0))
	// node3 missed the delete of "gone", and alone got "only-on-node3".
	c.fakes[2].put("big", bigDir("big", n, t0, gone, only3))
	for _, f := range c.fakes {
		f.put(tombstone.Dir, bigDir("tombstones", n, t0, tomb))
		f.put(tombstone.Path("big/gone"), entry{data: tombstone.Body("big/gone", stamp.Legacy(t0.Add(time.Minute))), mode: "384", modtime: t0.Add(time.Minute)})
	}
	for _, mode := range []string{"first walk", "known directory"} {
		r := c.call(http.MethodGet, "/v1/fs/big", nil, "")
		if r.status != http.StatusOK {
			t.Fatalf("%s: %d %q", mode, r.status, r.body)
		}
		var got charm.FileInfo
		if err := json.Unmarshal(r.body, &got); err != nil {
			t.Fatal(err)
		}
		names := map[string]bool{}
		for _, f := range got.Files {
			names[f.Name] = true
		}
		if len(got.Files) != n+1 || !names["only-on-node3"] || names["gone"] {
			t.Fatalf("%s: %d entries (only-on-node3 %v, gone %v), want %d with only-on-node3 and without gone",
				mode, len(got.Files), names["only-on-node3"], names["gone"], n+1)
		}
	}
}

// TestStaleCopyAmongManyTombstones: a replica still holding a deleted file
// is not served, however many tombstones the user has; when too few nodes
// answer to rule a delete out, the read is refused, not served.
func TestStaleCopyAmongManyTombstones(t *testing.T) {
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	const p = "docs/f"
	for _, tt := range []struct {
		name       string
		tombsFail  int // nodes whose tombstone lookups fail
		wantStatus int
	}{
		{"tombstone found", 0, http.StatusNotFound},
		{"one node can't say", 1, http.StatusNotFound},
		{"two nodes can't say", 2, http.StatusServiceUnavailable},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newCluster(t, 2, nil, nil, nil)
			pref := c.pref(p)
			// The first replica took the delete; the second did not.
			c.fakes[pref[1]].put(p, entry{data: []byte("stale"), mode: "420", modtime: t0})
			// The tombstone is on the first replica and one other node
			// (acknowledged at W = 2), among 12,000 others.
			for _, i := range []int{pref[0], pref[2]} {
				c.fakes[i].put(tombstone.Path(p), entry{data: tombstone.Body(p, stamp.Legacy(t0.Add(time.Minute))), mode: "384", modtime: t0.Add(time.Minute)})
				c.fakes[i].put(tombstone.Dir, bigDir("tombstones", 12000, t0,
					charm.FileInfo{Name: tombstone.Name(p), Size: 1, ModTime: t0.Add(time.Minute), Mode: 0o600}))
			}
			// Lookups fail on the nodes holding the tombstone first.
			for _, i := range []int{pref[0], pref[2]}[:tt.tombsFail] {
				c.fakes[i].setHook(func(_ *fake, w http.ResponseWriter, r *http.Request) bool {
					if strings.HasPrefix(r.URL.Path, "/v1/fs/"+tombstone.Root) {
						replyJSON(w, http.StatusInternalServerError, message("disk error"))
						return true
					}
					return false
				})
			}
			r := c.call(http.MethodGet, "/v1/fs/"+p, nil, "")
			if r.status != tt.wantStatus || string(r.body) == "stale" {
				t.Fatalf("read: %d %q, want %d", r.status, r.body, tt.wantStatus)
			}
		})
	}
}
