package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/charmbracelet/keygen"
	"github.com/cring-dev/cring/internal/cluster"
	"github.com/cring-dev/cring/internal/config"
	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/serve"
	"github.com/cring-dev/cring/internal/testwait"
)

// foreignKey is a valid charm server key no node uses.
func foreignKey(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "charm_server_ed25519")
	if _, err := keygen.New(p, keygen.WithKeyType(keygen.Ed25519), keygen.WithWrite()); err != nil {
		t.Fatal(err)
	}
	return p
}

// keyProxy is a healing proxy over dc's nodes with serverKey, listening but
// not serving yet.
func keyProxy(t *testing.T, dc *devcluster.Cluster, httpAddr, sshAddr, admin, serverKey string) *serve.Server {
	t.Helper()
	cfg := &config.Config{
		PublicURL: dc.PublicURL, Address: httpAddr, SSHProxyAddress: sshAddr, AdminAddress: admin,
		HealthInterval: 100 * time.Millisecond, ServerKey: serverKey, DataDir: t.TempDir(), ScrubInterval: -1,
	}
	for _, n := range dc.Nodes {
		cfg.Nodes = append(cfg.Nodes, cluster.Node{Name: n.Name, URL: n.HTTPURL(), SSH: n.SSHAddr(), Health: n.HealthURL()})
	}
	if err := cfg.Normalize(); err != nil {
		t.Fatal(err)
	}
	srv, err := serve.New(cfg, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	return srv
}

// serveAsync runs srv.Serve until the test ends; its result comes on the
// channel.
func serveAsync(t *testing.T, srv *serve.Server) <-chan error {
	ctx, cancel := context.WithCancel(context.Background())
	errc, done := make(chan error, 1), make(chan struct{})
	go func() { errc <- srv.Serve(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("Serve did not return")
		}
	})
	return errc
}

// TestServerKeyChecked: a valid --server-key that is not the nodes' key
// (every repair would get 401) stops the proxy with a message naming it: at
// start, or as soon as a node answers when none did at start. A reload that
// adds a node with another key is refused.
func TestServerKeyChecked(t *testing.T) {
	t.Run("at start", func(t *testing.T) {
		dc, httpAddr, sshAddr, admin := localNodes(t, 2)
		key := foreignKey(t)
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // the old code served on
		defer cancel()
		err := keyProxy(t, dc, httpAddr, sshAddr, admin, key).Serve(ctx)
		if err == nil || !strings.Contains(err.Error(), "--server-key "+key+" is not the nodes' key: node1, node2") {
			t.Fatalf("Serve with a foreign key = %v", err)
		}
		t.Logf("refused after %s: %v", time.Since(start).Round(time.Millisecond), err)
	})
	t.Run("no node up at start", func(t *testing.T) {
		dc, httpAddr, sshAddr, admin := localNodes(t, 2)
		for _, n := range dc.Nodes {
			if err := dc.Stop(n); err != nil {
				t.Fatal(err)
			}
		}
		errc := serveAsync(t, keyProxy(t, dc, httpAddr, sshAddr, admin, foreignKey(t)))
		// Serving meanwhile: the admin endpoint answers.
		testwait.For(t, 10*time.Second, "the condition", func() bool { st, _ := adminGetErr(admin, "/healthz"); return st == 200 })
		select {
		case err := <-errc:
			t.Fatalf("Serve returned with every node down: %v", err)
		default:
		}
		if err := dc.Start(context.Background(), dc.Nodes[1]); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-errc:
			if err == nil || !strings.Contains(err.Error(), "is not the nodes' key: node2") {
				t.Fatalf("Serve = %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("a node came up with another key and the proxy went on")
		}
	})
	t.Run("right key, reload with a foreign node", func(t *testing.T) {
		dc, httpAddr, sshAddr, admin := localNodes(t, 2)
		srv := keyProxy(t, dc, httpAddr, sshAddr, admin, dc.KeyPath)
		errc := serveAsync(t, srv)
		other, _, _, _ := localNodes(t, 1) // its own key
		cfg := &config.Config{PublicURL: dc.PublicURL, HealthInterval: 100 * time.Millisecond, ServerKey: dc.KeyPath, DataDir: "unused", ScrubInterval: -1}
		for _, n := range dc.Nodes {
			cfg.Nodes = append(cfg.Nodes, cluster.Node{Name: n.Name, URL: n.HTTPURL(), SSH: n.SSHAddr(), Health: n.HealthURL()})
		}
		n := other.Nodes[0]
		cfg.Nodes = append(cfg.Nodes, cluster.Node{Name: "node3", URL: n.HTTPURL(), SSH: n.SSHAddr(), Health: n.HealthURL()})
		if err := cfg.Normalize(); err != nil {
			t.Fatal(err)
		}
		err := srv.Reload(cfg)
		if err == nil || !strings.Contains(err.Error(), "is not the nodes' key: node3") {
			t.Fatalf("Reload adding a node with another key = %v", err)
		}
		select {
		case err := <-errc:
			t.Fatalf("the proxy stopped: %v", err)
		default:
		}
		cfg.Nodes = cfg.Nodes[:2]
		if err := srv.Reload(cfg); err != nil {
			t.Fatalf("Reload with the nodes' own key: %v", err)
		}
	})
}

// adminGetErr GETs path on the admin address: status, or an error.
func adminGetErr(admin, path string) (int, error) {
	resp, err := http.Get(fmt.Sprintf("http://%s%s", admin, path))
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
