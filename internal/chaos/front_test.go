package chaos

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestFront: each fault does to a real HTTP server behind the front what
// it says, and clear undoes it.
func TestFront(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "pong")
	}))
	t.Cleanup(srv.Close)
	fs := newFronts()
	f, err := fs.open("n1", strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.close)
	url := "http://" + f.addr(0) + "/"

	for _, tt := range []struct {
		name  string
		apply func() error
		check func(d time.Duration, err error) string // "" when as expected
	}{
		{"clean", func() error { return nil }, func(d time.Duration, err error) string {
			if err != nil {
				return "want an answer, got " + err.Error()
			}
			return ""
		}},
		{"latency", func() error { return f.latency(300 * time.Millisecond) }, func(d time.Duration, err error) string {
			if err != nil || d < 250*time.Millisecond {
				return "want an answer after about 300ms, got " + d.String() + " " + errString(err)
			}
			return ""
		}},
		{"blackhole", f.blackhole, func(d time.Duration, err error) string {
			if !errors.Is(err, context.DeadlineExceeded) {
				return "want the request to time out, got " + errString(err)
			}
			return ""
		}},
		{"reset", f.reset, func(d time.Duration, err error) string {
			var op *net.OpError
			if err == nil || errors.Is(err, context.DeadlineExceeded) || (!errors.As(err, &op) && !strings.Contains(err.Error(), "EOF") && !strings.Contains(err.Error(), "reset")) {
				return "want a reset connection, got " + errString(err)
			}
			return ""
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.apply(); err != nil {
				t.Fatal(err)
			}
			d, err := fetch(url, 2*time.Second)
			if msg := tt.check(d, err); msg != "" {
				t.Fatal(msg)
			}
			f.clear()
			if f.state() != "" {
				t.Fatalf("state %q after clear", f.state())
			}
			if _, err := fetch(url, 5*time.Second); err != nil {
				t.Fatalf("after clear: %v", err)
			}
		})
	}
}

// fetch GETs url on a fresh connection and returns how long it took.
func fetch(url string, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return time.Since(start), err
	}
	defer resp.Body.Close()
	_, err = io.ReadAll(resp.Body)
	return time.Since(start), err
}

func errString(err error) string {
	if err == nil {
		return "no error"
	}
	return err.Error()
}
