package proxy

import (
	"bytes"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/stamp"
)

// BenchmarkSmallRequests: the proxy's own cost of a 4 KiB read and a 4 KiB
// upload (N=3, W=2), each served by its handler directly (no client
// connection) from three local nodes that answer like cring nodes. The
// allocations and the CPU profile are what cring adds per request; cring
// bench --workloads peers measures the whole processes.
//
//	go test ./internal/proxy -run '^$' -bench SmallRequests -benchmem -cpuprofile cpu.out
func BenchmarkSmallRequests(b *testing.B) {
	file := bytes.Repeat([]byte("x"), 4<<10)
	var urls []string
	for range 3 {
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost {
				_, _ = io.Copy(io.Discard, r.Body)
				w.Header().Set(stamp.Header, r.Header.Get(stamp.Header))
				return
			}
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", strconv.Itoa(len(file)))
			w.Header().Set(stamp.SHA256Header, "0")
			_, _ = w.Write(file)
		}))
		srv.Config.ErrorLog = log.New(io.Discard, "", 0)
		srv.Start()
		b.Cleanup(srv.Close)
		urls = append(urls, srv.URL)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 128, DisableCompression: true, WriteBufferSize: 64 << 10,
		ReadBufferSize: 64 << 10, ResponseHeaderTimeout: 10 * time.Second}
	b.Cleanup(tr.CloseIdleConnections)
	p, err := New(Options{
		Members:  testMembers(b, urls, 2, &stubHealth{up: []bool{true, true, true}}),
		Verifier: stubVerifier{}, Transport: tr, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		StallTimeout: 10 * time.Second,
	})
	if err != nil {
		b.Fatal(err)
	}
	body, ctype := multipartBody(b, 4<<10, 1)
	for _, tc := range []struct {
		name string
		req  func() *http.Request
	}{
		{"read", func() *http.Request { return httptest.NewRequest(http.MethodGet, "/v1/fs/bench/f", nil) }},
		{"upload", func() *http.Request {
			r := httptest.NewRequest(http.MethodPost, "/v1/fs/bench/f?mode=420", bytes.NewReader(body))
			r.Header.Set("Content-Type", ctype)
			return r
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				req := tc.req()
				req.Header.Set("Authorization", goodToken)
				rec := httptest.NewRecorder()
				p.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					b.Fatalf("%s: %d %s", tc.name, rec.Code, rec.Body)
				}
			}
		})
	}
}
