package clusterinit

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/config"
	"github.com/cring-dev/cring/internal/nodetls"
)

// TestGenerateNodeTLS: with --node-tls every node serves TLS with a
// certificate from the cluster's own CA for the names the proxy and compose
// reach it by, and the proxy's configs reach every node port over https
// trusting that CA; the env files, compose mounts and health checks name the
// files that were written.
func TestGenerateNodeTLS(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tt := range []struct {
		name  string
		stock bool
	}{
		{"cring nodes", false},
		{"stock nodes", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "cluster")
			o := Options{Dir: dir, PublicURL: "https://charm.example.com:35354", Hosts: []string{"10.0.0.1", "charm-b.internal"},
				NodeTLS: true, Stock: tt.stock, Now: func() time.Time { return now }}
			if !tt.stock {
				o.Accounts = "postgres://charm:pw@db/charm"
			}
			res, err := Generate(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			if want := now.Add(NodeCertValidity); !res.NodeTLSUntil.Equal(want) {
				t.Errorf("NodeTLSUntil %v, want %v", res.NodeTLSUntil, want)
			}
			for _, p := range []struct {
				rel  string
				perm os.FileMode
			}{
				{"keys/node-ca.pem", 0o644},
				{"keys/node-ca.key", 0o600},
				{"nodes/charm1/tls/node.pem", 0o644},
				{"nodes/charm1/tls/node.key", 0o600},
				{"nodes/charm1/tls/ca.pem", 0o644},
			} {
				st, err := os.Stat(filepath.Join(dir, p.rel))
				if err != nil || st.Mode().Perm() != p.perm || !slices.Contains(res.Files, filepath.FromSlash(p.rel)) {
					t.Errorf("%s: %v %v, want mode %v and listed in Files", p.rel, st, err, p.perm)
				}
			}
			caPEM := read(t, dir, "keys/node-ca.pem")
			roots := x509.NewCertPool()
			if !roots.AppendCertsFromPEM(caPEM) {
				t.Fatal("keys/node-ca.pem holds no certificate")
			}
			cfg, err := config.Load(filepath.Join(dir, "cring.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			if err := cfg.Normalize(); err != nil {
				t.Fatal(err)
			}
			if cfg.NodeCA != NodeCAPath {
				t.Errorf("cring.yaml node-ca %q, want %q", cfg.NodeCA, NodeCAPath)
			}
			// The CA the proxy loads (nodetls, as serve does) is the one
			// that issued every node's certificate.
			caFile := filepath.Join(dir, "keys", "node-ca.pem")
			if _, err := nodetls.ClientConfig(caFile); err != nil {
				t.Fatal(err)
			}
			for i, n := range res.Nodes {
				if !bytes.Equal(read(t, dir, filepath.Join(n.Dir, "tls", "ca.pem")), caPEM) {
					t.Errorf("%s tls/ca.pem is not the node CA", n.Name)
				}
				leaf := parseCert(t, read(t, dir, filepath.Join(n.Dir, "tls", "node.pem")))
				if !leaf.NotAfter.Equal(now.Add(NodeCertValidity)) {
					t.Errorf("%s certificate until %v", n.Name, leaf.NotAfter)
				}
				// Reached by its host (cring.yaml), its name (compose) and
				// loopback (health checks on the node itself).
				for _, host := range []string{n.Host, n.Name, "127.0.0.1", "localhost"} {
					if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: host, CurrentTime: now.Add(time.Hour)}); err != nil {
						t.Errorf("%s certificate for %s: %v", n.Name, host, err)
					}
				}
				if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "charm9", CurrentTime: now.Add(time.Hour)}); err == nil {
					t.Errorf("%s certificate is valid for another name", n.Name)
				}
				env := parseEnv(t, read(t, dir, filepath.Join(n.Dir, "charm.env")))
				if env["CHARM_SERVER_USE_TLS"] != "true" || env["CHARM_SERVER_TLS_CERT_FILE"] != NodeCertPath || env["CHARM_SERVER_TLS_KEY_FILE"] != NodeKeyPath {
					t.Errorf("%s charm.env TLS settings: %v", n.Name, env)
				}
				cn := cfg.Nodes[i]
				wantMeta := "https://" + hostPort(n.Host, MetaPort)
				if tt.stock {
					wantMeta = "" // stock nodes have no metadata endpoint
				}
				for _, u := range []struct{ got, want string }{
					{cn.URL, "https://" + hostPort(n.Host, HTTPPort)},
					{cn.Health, "https://" + hostPort(n.Host, HealthPort) + "/"},
					{cn.Meta, wantMeta},
				} {
					if u.got != u.want {
						t.Errorf("%s: cring.yaml reaches it at %q, want %q", n.Name, u.got, u.want)
					}
				}
			}

			c := loadCompose(t, read(t, dir, "compose.yaml"))
			for _, n := range res.Nodes {
				s := c.Services[n.Name]
				if !slices.Contains(s.Volumes, "./nodes/"+n.Name+"/tls:"+NodeTLSDir+":ro") {
					t.Errorf("compose %s does not mount its tls/: %v", n.Name, s.Volumes)
				}
				if !slices.Equal(s.Healthcheck.Test, []string{"CMD", "/cring", "probe", "--ca", NodeLocalCAPath, "https://127.0.0.1:35356/"}) {
					t.Errorf("compose %s health check %v", n.Name, s.Healthcheck.Test)
				}
			}
			if !slices.Contains(c.Services["cring"].Volumes, "./keys/node-ca.pem:"+NodeCAPath+":ro") {
				t.Errorf("compose cring does not mount the node CA: %v", c.Services["cring"].Volumes)
			}
			cc, err := config.Load(filepath.Join(dir, "compose", "cring.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			if cc.NodeCA != NodeCAPath || cc.Nodes[0].URL != "https://charm1:35354" || cc.Nodes[0].Health != "https://charm1:35356/" {
				t.Errorf("compose/cring.yaml: node-ca %q, %+v", cc.NodeCA, cc.Nodes[0])
			}
			readme := string(read(t, dir, "README.txt"))
			for _, s := range []string{NodeTLSDir, NodeCAPath, "keys/node-ca.key", now.Add(NodeCertValidity).Format("2006-01-02")} {
				if !strings.Contains(readme, s) {
					t.Errorf("README.txt does not mention %q", s)
				}
			}
		})
	}

	t.Run("off by default", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "cluster")
		res, err := Generate(context.Background(), Options{Dir: dir, PublicURL: "http://proxy:35354", Stock: true})
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(filepath.Join(dir, "cring.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		env := parseEnv(t, read(t, dir, "nodes/charm1/charm.env"))
		if cfg.NodeCA != "" || !strings.HasPrefix(cfg.Nodes[0].URL, "http://") || env["CHARM_SERVER_USE_TLS"] != "" || !res.NodeTLSUntil.IsZero() {
			t.Errorf("without --node-tls: node-ca %q, url %q, USE_TLS %q", cfg.NodeCA, cfg.Nodes[0].URL, env["CHARM_SERVER_USE_TLS"])
		}
		if _, err := os.Stat(filepath.Join(dir, "keys", "node-ca.pem")); err == nil {
			t.Error("a node CA without --node-tls")
		}
	})
}

func parseCert(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("no PEM block")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
