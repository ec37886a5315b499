package proxy

import (
	"bytes"
	"io"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"
)

// bnd is the boundary of every form here.
const bnd = "cring-test-boundary"

func form(t *testing.T, boundary string, parts ...[2]string) ([]byte, string) {
	t.Helper()
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	if err := mw.SetBoundary(boundary); err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		var w io.Writer
		var err error
		if p[0] == "data" {
			w, err = mw.CreateFormFile("data", "f")
		} else {
			w, err = mw.CreateFormField(p[0])
		}
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.WriteString(w, p[1])
	}
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes(), mw.Boundary()
}

// TestCheckForm: a form is judged as charm's r.FormFile("data") reads it,
// whole, in its head (more to come: undecided unless already wrong), and
// as it streams.
func TestCheckForm(t *testing.T) {
	good, _ := form(t, bnd, [2]string{"data", strings.Repeat("x", 20000)})
	other, _ := form(t, bnd, [2]string{"note", "hi"}, [2]string{"data", "y"})
	noData, _ := form(t, bnd, [2]string{"note", "hi"})
	many := make([][2]string, maxFormParts+1)
	for i := range many {
		many[i] = [2]string{"data", "z"}
	}
	tooMany, _ := form(t, bnd, many...)
	withEpilogue := append(append([]byte{}, good...), "an epilogue, ignored"...)
	for _, tt := range []struct {
		name   string
		body   []byte
		status int // 0: fine
		msg    string
	}{
		{"charm's own", good, 0, ""},
		{"another field first", other, 0, ""},
		{"epilogue", withEpilogue, 0, ""},
		{"no data part", noData, 400, "no file part named data"},
		{"cut before the closing boundary", good[:len(good)-8], 400, "closing boundary"},
		{"cut in the file", good[:5000], 400, "closing boundary"},
		{"garbage", []byte("hello"), 400, "closing boundary"},
		{"empty", nil, 400, "closing boundary"},
		{"broken part header", []byte("--" + bnd + "\r\nno colon here\r\n\r\nx\r\n--" + bnd + "--\r\n"), 400, "malformed multipart"},
		{"too many parts", tooMany, 413, "parts"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			check := func(how string, err error) {
				t.Helper()
				if tt.status == 0 {
					if err != nil {
						t.Fatalf("%s: %v", how, err)
					}
					return
				}
				ce, ok := asClientError(err)
				if !ok || ce.status != tt.status || !strings.Contains(ce.msg, tt.msg) {
					t.Fatalf("%s: %v, want %d saying %q", how, err, tt.status, tt.msg)
				}
			}
			check("whole", checkForm(bytes.NewReader(tt.body), bnd, nil))
			check("whole, parts skipped through 4 KiB", checkForm(bytes.NewReader(tt.body), bnd, make([]byte, formHead)))

			// Streamed in small reads, as the pump reads a client.
			src, stop, err := checkHead(&trickle{b: tt.body, n: 777}, bnd, -1)
			if err == nil {
				defer stop()
				_, err = io.Copy(io.Discard, src)
			}
			check("streamed", err)

			// A head cut anywhere never refuses what may still turn out
			// fine.
			for cut := 1; cut < min(len(tt.body), 300); cut += 7 {
				hr := &headReader{r: bytes.NewReader(tt.body[:cut])}
				err := checkForm(hr, bnd, nil)
				if tt.status == 0 && err != nil && !hr.more {
					t.Fatalf("head of %d bytes of a good form: %v", cut, err)
				}
			}
		})
	}
}

// trickle reads at most n bytes at a time.
type trickle struct {
	b []byte
	n int
}

func (r *trickle) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	k := copy(p[:min(len(p), r.n)], r.b)
	r.b = r.b[k:]
	return k, nil
}

func TestCheckFSPaths(t *testing.T) {
	for _, tt := range []struct {
		method, path, query string
		status              int
	}{
		{"DELETE", "", "", 400},
		{"POST", "", "mode=420", 400},
		{"DELETE", "a", "", 0},
		{"POST", "a", "", 400},
		{"POST", "a", "mode=x", 400},
		{"POST", "a", "mode=99999999999", 400},
		{"POST", "a", "mode=420", 0},
		{"GET", strings.Repeat("n", 255), "", 0},
		{"GET", strings.Repeat("n", 256), "", 400},
		{"GET", strings.Repeat("d/", 1537), "", 414},
	} {
		r, _ := http.NewRequest(tt.method, "http://x/v1/fs/"+tt.path+"?"+tt.query, strings.NewReader("x"))
		r.Header.Set("Content-Type", "multipart/form-data; boundary=b")
		ref := fileRef{user: "u", path: tt.path}
		err := checkFSPath(ref)
		if err == nil && tt.method != "GET" {
			err = checkFSWrite(r, ref)
		}
		got := 0
		if err != nil {
			got = err.status
		}
		if got != tt.status {
			t.Errorf("%s %.20q ?%s: %v, want %d", tt.method, tt.path, tt.query, err, tt.status)
		}
	}
}

// TestLimiter: per-client and total bounds, released slots reused, and no
// memory kept for clients with nothing in flight.
func TestLimiter(t *testing.T) {
	l := newLimiter(2, 3)
	var rel []func()
	take := func(c string, want int) {
		t.Helper()
		r, err := l.acquire(c)
		got := 0
		if err != nil {
			got = err.status
		} else {
			rel = append(rel, r)
		}
		if got != want {
			t.Fatalf("acquire(%s): %v, want %d", c, err, want)
		}
	}
	take("a", 0)
	take("a", 0)
	take("a", http.StatusTooManyRequests)
	take("b", 0)
	take("c", http.StatusServiceUnavailable)
	rel[0]()
	rel[0]() // twice: no effect
	take("c", 0)
	for _, r := range rel {
		r()
	}
	if l.inFlight() != 0 || len(l.by) != 0 {
		t.Fatalf("after every release: %d in flight, %d clients kept", l.inFlight(), len(l.by))
	}
}
