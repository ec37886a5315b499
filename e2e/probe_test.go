package e2e

import (
	"crypto/tls"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestProbe: `cring probe URL`, the generated compose file's health check,
// exits 0 on 2xx, 1 on anything else or no answer, 2 on a bad URL. An https
// URL (a node serving TLS) is checked against --ca besides the system's roots.
func TestProbe(t *testing.T) {
	bin := cringBinary(t)
	caPEM, certPEM, keyPEM := testCA(t, "127.0.0.1")
	kp, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	secure := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	secure.TLS = &tls.Config{Certificates: []tls.Certificate{kp}}
	secure.StartTLS()
	t.Cleanup(secure.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
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
		ca   string
		code int
	}{
		{"healthy", ok.URL + "/healthz", "", 0},
		{"503", down.URL + "/readyz", "", 1},
		{"nothing listening", gone.URL, "", 1},
		{"bad url", "://nope", "", 2},
		{"https with the CA", secure.URL + "/", ca, 0},
		{"https without the CA", secure.URL + "/", "", 1},
		{"missing CA file", secure.URL + "/", ca + ".none", 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"probe", "--timeout", "5s", tt.url}
			if tt.ca != "" {
				args = append(args, "--ca", tt.ca)
			}
			cmd := exec.Command(bin, args...)
			// The system's roots must not trust the test CA by accident.
			cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+filepath.Join(t.TempDir(), "none.pem"), "SSL_CERT_DIR="+t.TempDir())
			err := cmd.Run()
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
