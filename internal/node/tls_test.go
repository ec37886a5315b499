package node

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/charmbracelet/charm/server"
	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/node/versioned"
	"github.com/cring-dev/cring/internal/nodetls"
)

// TestRunServesTLS: with CHARM_SERVER_USE_TLS a cring node serves every HTTP
// port over TLS — the API, health and the metadata endpoint the healer sends
// tokens to — with the configured certificate; plain HTTP gets nothing. A
// certificate pair that does not load stops the node at start, naming it.
func TestRunServesTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := nodetls.NewCA("test nodes", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue([]string{"127.0.0.1"}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFile, certFile, keyFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "node.pem"), filepath.Join(dir, "node.key")
	for f, b := range map[string][]byte{caFile: ca.CertPEM, certFile: certPEM, keyFile: keyPEM} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	newCfg := func(t *testing.T) (*server.Config, int) {
		ports, err := devcluster.FreePorts("127.0.0.1", 5)
		if err != nil {
			t.Fatal(err)
		}
		cfg := server.DefaultConfig()
		cfg.BindAddr, cfg.Host = "127.0.0.1", "127.0.0.1"
		cfg.HTTPPort, cfg.SSHPort, cfg.HealthPort, cfg.StatsPort = ports[0], ports[1], ports[2], ports[3]
		cfg.DataDir = t.TempDir()
		cfg.PublicURL = "https://proxy.example:35354"
		cfg.UseTLS, cfg.TLSCertFile, cfg.TLSKeyFile = true, certFile, keyFile
		return cfg, ports[4]
	}

	t.Run("bad pair", func(t *testing.T) {
		cfg, meta := newCfg(t)
		cfg.TLSKeyFile = filepath.Join(dir, "missing.key")
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err := Run(ctx, Options{Config: cfg, MetaPort: meta, ShutdownTimeout: time.Second})
		if err == nil || !strings.Contains(err.Error(), "CHARM_SERVER_TLS_KEY_FILE") || !strings.Contains(err.Error(), "missing.key") {
			t.Fatalf("Run with a missing key file: %v, want an error naming it", err)
		}
	})

	cfg, meta := newCfg(t)
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{Config: cfg, MetaPort: meta, ShutdownTimeout: time.Second, Ready: func() { close(ready) }})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("node: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("node did not start: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("node not ready in 60s")
	}
	trust, err := nodetls.ClientConfig(caFile)
	if err != nil {
		t.Fatal(err)
	}
	secure := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: trust}}
	plain := &http.Client{Timeout: 10 * time.Second}
	for _, tt := range []struct {
		name, path string
		port       int
		want       int // over TLS
	}{
		{"api", "/v1/public/jwks", cfg.HTTPPort, http.StatusOK},
		{"health", "/", cfg.HealthPort, http.StatusOK},
		{"meta", versioned.MetaPath + "x", meta, http.StatusUnauthorized}, // answered: no token
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := secure.Get(fmt.Sprintf("https://127.0.0.1:%d%s", tt.port, tt.path))
			if err != nil {
				t.Fatalf("over TLS: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want || resp.TLS == nil {
				t.Fatalf("over TLS: %s, want %d", resp.Status, tt.want)
			}
			if resp, err := plain.Get(fmt.Sprintf("http://127.0.0.1:%d%s", tt.port, tt.path)); err == nil {
				resp.Body.Close()
				if resp.StatusCode == tt.want {
					t.Fatalf("plain HTTP answered %s", resp.Status)
				}
			}
		})
	}
}
