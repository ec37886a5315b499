package backup_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"mime/multipart"
	"net/textproto"
	"runtime"
	"strings"
	"testing"

	"github.com/cring-dev/cring/internal/backup"
)

// charmUpload builds a body the way charm's fs client does (fs.WriteFile):
// one file part, field "data", named after the file. extra writes parts
// before it.
func charmUpload(t testing.TB, name string, data []byte, extra func(*multipart.Writer)) ([]byte, string) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	if extra != nil {
		extra(mw)
	}
	part, err := mw.CreateFormFile("data", name)
	if err != nil {
		t.Fatal(err)
	}
	part.Write(data)
	mw.Close()
	return buf.Bytes(), mw.FormDataContentType()
}

// countingReader counts what was consumed.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func TestExtractUpload(t *testing.T) {
	payload := randBytes(t, 300<<10)
	for _, tt := range []struct {
		name    string
		data    []byte
		extra   func(*multipart.Writer)
		ctype   string // overrides the real content type
		mangle  func([]byte) []byte
		wantErr string
	}{
		{name: "small", data: []byte("hello, encrypted world")},
		{name: "empty file", data: []byte{}},
		{name: "binary with boundary-like bytes", data: append([]byte("\r\n--"), payload...)},
		{name: "after other fields", data: payload, extra: func(mw *multipart.Writer) {
			mw.WriteField("other", "value")
			// A "data" part without a file name is a form value to the
			// node's r.FormFile: not the file.
			mw.WriteField("data", "not the file")
			h := textproto.MIMEHeader{}
			h.Set("Content-Disposition", `form-data; name="x"; filename="x"`)
			p, _ := mw.CreatePart(h)
			p.Write([]byte("another file"))
		}},
		{name: "no data part", data: nil, extra: nil, mangle: func(b []byte) []byte {
			var buf bytes.Buffer
			mw := multipart.NewWriter(&buf)
			mw.SetBoundary(boundaryOf(b))
			mw.WriteField("data", "value only")
			mw.Close()
			return buf.Bytes()
		}, wantErr: `no file in form field "data"`},
		{name: "truncated", data: payload, mangle: func(b []byte) []byte { return b[:len(b)/2] }, wantErr: "unexpected EOF"},
		{name: "not multipart", data: payload, ctype: "application/octet-stream", wantErr: "want multipart/form-data"},
		{name: "bad content type", data: payload, ctype: "multipart/form-data; boundary=", wantErr: "upload content type"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			body, ctype := charmUpload(t, "enc/name", tt.data, tt.extra)
			if tt.mangle != nil {
				body = tt.mangle(body)
			}
			if tt.ctype != "" {
				ctype = tt.ctype
			}
			cr := &countingReader{r: bytes.NewReader(body)}
			var out bytes.Buffer
			n, err := backup.ExtractUpload(cr, ctype, &out)
			if cr.n != int64(len(body)) {
				t.Fatalf("consumed %d of %d bytes: a tee feeding it would block", cr.n, len(body))
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				if tt.name == "no data part" && !errors.Is(err, backup.ErrNoFilePart) {
					t.Fatalf("err %v is not ErrNoFilePart", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if n != int64(len(tt.data)) || !bytes.Equal(out.Bytes(), tt.data) {
				t.Fatalf("extracted %d bytes, want the %d file bytes exactly", n, len(tt.data))
			}
		})
	}
}

func boundaryOf(body []byte) string {
	line, _, _ := strings.Cut(string(body), "\r\n")
	return strings.TrimPrefix(line, "--")
}

// TestExtractUploadLargeConstantMemory streams a 200 MiB upload generated on
// the fly: the bytes come out identical and the heap allocated while doing it
// stays a few buffers, not the file.
func TestExtractUploadLargeConstantMemory(t *testing.T) {
	const size = 200 << 20
	chunk := randBytes(t, 1<<20)
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	want := sha256.New()
	go func() {
		part, err := mw.CreateFormFile("data", "big")
		if err != nil {
			pw.CloseWithError(err)
			return
		}
		for left := size; left > 0; left -= len(chunk) {
			c := chunk[:min(left, len(chunk))]
			want.Write(c)
			if _, err := part.Write(c); err != nil {
				pw.CloseWithError(err)
				return
			}
		}
		pw.CloseWithError(mw.Close())
	}()
	got := sha256.New()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	n, err := backup.ExtractUpload(pr, mw.FormDataContentType(), got)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if n != size || !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Fatalf("extracted %d bytes, want %d identical", n, size)
	}
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %d KiB while extracting %d MiB", allocated>>10, size>>20)
	if allocated > 16<<20 {
		t.Fatalf("allocated %d MiB extracting a %d MiB upload: it is being buffered", allocated>>20, size>>20)
	}
}
