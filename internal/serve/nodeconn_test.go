package serve

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

// selfWriter is a body that can only write itself: a node connection must
// never read it through a copy buffer of its own.
type selfWriter struct{ data []byte }

func (s *selfWriter) Read([]byte) (int, error) { return 0, errors.New("read through a copy buffer") }

func (s *selfWriter) WriteTo(w io.Writer) (int64, error) {
	n, err := w.Write(s.data)
	s.data = s.data[n:]
	return int64(n), err
}

// TestNodeConnWritesBodies: a request body that writes itself goes to the
// node's socket as it is, never past its Content-Length; any other body
// through the pooled copy buffer.
func TestNodeConnWritesBodies(t *testing.T) {
	// The node answers with what it read.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		_, _ = w.Write(b)
	}))
	t.Cleanup(srv.Close)
	tr := &http.Transport{DialContext: dialNode(&net.Dialer{Timeout: 5 * time.Second})}
	t.Cleanup(tr.CloseIdleConnections)

	data := bytes.Repeat([]byte("0123456789abcdef"), 10<<10) // 160 KiB: past every buffer
	tests := []struct {
		name   string
		body   io.Reader
		length int64
		fails  bool // the transport must refuse it
	}{
		{"writes itself", &selfWriter{data: slices.Clone(data)}, int64(len(data)), false},
		{"writes itself past its length", &selfWriter{data: slices.Clone(data)}, int64(len(data)) - 1, true},
		{"copied", io.MultiReader(bytes.NewReader(data)), int64(len(data)), false},
		{"small, from memory", bytes.NewReader(data[:4<<10]), 4 << 10, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodPost, srv.URL, tt.body)
			if err != nil {
				t.Fatal(err)
			}
			req.ContentLength = tt.length
			resp, err := tr.RoundTrip(req)
			if tt.fails {
				if err == nil {
					resp.Body.Close()
					t.Fatal("a body longer than its Content-Length was sent")
				}
				if !strings.Contains(err.Error(), errBodyTooLong.Error()) && !strings.Contains(err.Error(), "ContentLength") {
					t.Errorf("error %v, want the body's length refused", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b, data[:tt.length]) {
				t.Errorf("node got %d bytes that differ from the %d sent", len(b), tt.length)
			}
		})
	}
}
