package proxy

import (
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// The streaming write path must cost memory per request, never per byte:
// BenchmarkWriteFanout pushes bodies of two sizes through the proxy's write
// path to three local sinks, and allocs/op and B/op must stay about the same
// as the body grows 64-fold.
//
//	go test ./internal/proxy -run '^$' -bench WriteFanout -benchmem
//
// The counts include the sinks' (in-process httptest servers) own work per
// request; they too are per request, not per byte.

// sinks starts n nodes that read and discard every body and answer 200.
func sinks(tb testing.TB, n int) []string {
	tb.Helper()
	var urls []string
	for range n {
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
		}))
		srv.Config.ErrorLog = log.New(io.Discard, "", 0)
		srv.Start()
		tb.Cleanup(srv.Close)
		urls = append(urls, srv.URL)
	}
	return urls
}

// fanoutProxy is a proxy with N=3, W=2 in front of three sinks, with a
// keep-alive transport like serve's.
func fanoutProxy(tb testing.TB) *Proxy {
	tb.Helper()
	urls := sinks(tb, 3)
	tr := &http.Transport{
		MaxIdleConnsPerHost:   16,
		DisableCompression:    true,
		WriteBufferSize:       64 << 10,
		ReadBufferSize:        64 << 10,
		ResponseHeaderTimeout: 10 * time.Second,
	}
	tb.Cleanup(tr.CloseIdleConnections)
	p, err := New(Options{
		Members:  testMembers(tb, urls, 2, &stubHealth{up: []bool{true, true, true}}),
		Verifier: stubVerifier{}, Transport: tr, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		StallTimeout: 10 * time.Second,
	})
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// zeros is an endless body that costs nothing to produce.
type zeros struct{ left int64 }

func (z *zeros) Read(b []byte) (int, error) {
	if z.left <= 0 {
		return 0, io.EOF
	}
	n := int(min(int64(len(b)), z.left))
	clear(b[:n])
	z.left -= int64(n)
	return n, nil
}

func (z *zeros) Close() error { return nil }

// upload sends one size-byte upload through p's handler directly (no client
// connection: only the proxy and the sinks are measured).
func fanoutOnce(tb testing.TB, p *Proxy, size int64) {
	req := httptest.NewRequest(http.MethodPost, "/v1/fs/bench/file?mode=420", nil)
	// A charm upload: the form around size bytes of file.
	const head = "--x\r\nContent-Disposition: form-data; name=\"data\"; filename=\"file\"\r\n\r\n"
	const tail = "\r\n--x--\r\n"
	req.Body = io.NopCloser(io.MultiReader(strings.NewReader(head), &zeros{left: size}, strings.NewReader(tail)))
	req.ContentLength = int64(len(head)) + size + int64(len(tail))
	req.Header.Set("Authorization", goodToken)
	req.Header.Set("Content-Type", "multipart/form-data; boundary=x")
	rec := httptest.NewRecorder()
	p.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		tb.Fatalf("upload of %d bytes: %d %s", size, rec.Code, rec.Body)
	}
}

func BenchmarkWriteFanout(b *testing.B) {
	for _, size := range []int64{1 << 20, 64 << 20} {
		b.Run(fmt.Sprintf("%dMiB", size>>20), func(b *testing.B) {
			p := fanoutProxy(b)
			fanoutOnce(b, p, 1<<20) // open the connections
			b.SetBytes(size)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				fanoutOnce(b, p, size)
			}
		})
	}
}

// TestWriteFanoutAllocsFlat: a 16x larger body costs (nearly) no more
// allocations per upload. One allocation per 64 KiB chunk would be 240 more.
func TestWriteFanoutAllocsFlat(t *testing.T) {
	p := fanoutProxy(t)
	fanoutOnce(t, p, 1<<20)
	small := testing.AllocsPerRun(5, func() { fanoutOnce(t, p, 1<<20) })
	large := testing.AllocsPerRun(5, func() { fanoutOnce(t, p, 16<<20) })
	t.Logf("allocations per upload: %.0f for 1 MiB, %.0f for 16 MiB", small, large)
	if large-small > 48 {
		t.Fatalf("a 16 MiB upload allocates %.0f times, a 1 MiB one %.0f: allocations grow with the body", large, small)
	}
}
