package serve

import (
	"bytes"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/charmbracelet/keygen"
	"github.com/cring-dev/cring/internal/cluster"
	"github.com/cring-dev/cring/internal/config"
	"github.com/cring-dev/cring/internal/pgtest"
)

// TestProxyIDKept: a proxy keeps its name in the shared state across
// restarts on one data dir; another data dir is another proxy.
func TestProxyIDKept(t *testing.T) {
	dir := t.TempDir()
	a, err := proxyID(dir)
	if err != nil {
		t.Fatal(err)
	}
	again, err := proxyID(dir)
	if err != nil || again != a {
		t.Fatalf("restarted as %q (%v), was %q", again, err, a)
	}
	other, err := proxyID(t.TempDir())
	if err != nil || other == a || len(other) != 12 {
		t.Fatalf("another data dir: %q (%v), first %q", other, err, a)
	}
}

// syncBuf is a log sink for slog.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestStartSaysWhereHintsLive: a healing proxy without state: says once,
// at start, that its hints and known users are its own; with it, where
// they are shared.
func TestStartSaysWhereHintsLive(t *testing.T) {
	key := filepath.Join(t.TempDir(), "charm_server_ed25519")
	if _, err := keygen.New(key, keygen.WithKeyType(keygen.Ed25519), keygen.WithWrite()); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, state, want, not string
	}{
		{"per proxy", "", "hints and known users are this proxy's alone", "shared state"},
		{"shared", pgtest.Start(t), "shared state: hints, known users and heartbeats in PostgreSQL", "this proxy's alone"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := &config.Config{Hosts: nil, Nodes: []cluster.Node{{URL: "http://127.0.0.1:1"}}, ServerKey: key,
				DataDir: t.TempDir(), State: tt.state, ScrubInterval: -1}
			if err := cfg.Normalize(); err != nil {
				t.Fatal(err)
			}
			var logs syncBuf
			s, err := New(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(s.healer.Close)
			if s.state != nil {
				t.Cleanup(s.state.Close)
			}
			out := logs.String()
			if strings.Count(out, tt.want) != 1 || strings.Contains(out, tt.not) {
				t.Fatalf("start logs:\n%s\nwant %q once, no %q", out, tt.want, tt.not)
			}
		})
	}
}
