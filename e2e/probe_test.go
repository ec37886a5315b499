package e2e

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"testing"
)

// TestProbe: `cring probe URL`, the generated compose file's health check,
// exits 0 on 2xx, 1 on anything else or no answer, 2 on a bad URL.
func TestProbe(t *testing.T) {
	bin := cringBinary(t)
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(ok.Close)
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
	}))
	t.Cleanup(down.Close)
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close() // nothing listens there any more
	for _, tt := range []struct {
		name string
		url  string
		code int
	}{
		{"healthy", ok.URL + "/healthz", 0},
		{"503", down.URL + "/readyz", 1},
		{"nothing listening", gone.URL, 1},
		{"bad url", "://nope", 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := exec.Command(bin, "probe", "--timeout", "5s", tt.url).Run()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tt.code {
				t.Fatalf("cring probe %s: exit %d, want %d", tt.url, code, tt.code)
			}
		})
	}
}
