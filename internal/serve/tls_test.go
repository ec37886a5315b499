package serve

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// selfSigned writes a self-signed certificate for cn and its key.
func selfSigned(t *testing.T, certPath, keyPath, cn string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestCertReloader: a renewed certificate is served without a restart, a
// broken renewal keeps the previous one, and a missing file fails at start.
func TestCertReloader(t *testing.T) {
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if _, err := newCertReloader(certPath, keyPath, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil {
		t.Fatal("no certificate files: want an error at start")
	}
	selfSigned(t, certPath, keyPath, "first")
	now := time.Unix(1_800_000_000, 0)
	r, err := newCertReloader(certPath, keyPath, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	r.now = func() time.Time { return now }
	cn := func() string {
		t.Helper()
		c, err := r.getCertificate(nil)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		return leaf.Subject.CommonName
	}
	touch := func(p string, d time.Duration) {
		if err := os.Chtimes(p, now.Add(d), now.Add(d)); err != nil {
			t.Fatal(err)
		}
	}
	for _, step := range []struct {
		name    string
		change  func()
		advance time.Duration
		want    string
	}{
		{"unchanged", func() {}, 10 * time.Second, "first"},
		{"renewed, checked", func() { selfSigned(t, certPath, keyPath, "second"); touch(certPath, time.Minute) }, 10 * time.Second, "second"},
		{"renewed, not yet checked", func() { selfSigned(t, certPath, keyPath, "third"); touch(certPath, 2*time.Minute) }, time.Second, "second"},
		{"checked", func() {}, 10 * time.Second, "third"},
		{"broken renewal keeps the old one", func() {
			if err := os.WriteFile(certPath, []byte("garbage"), 0o600); err != nil {
				t.Fatal(err)
			}
			touch(certPath, 3*time.Minute)
		}, 10 * time.Second, "third"},
	} {
		step.change()
		now = now.Add(step.advance)
		if got := cn(); got != step.want {
			t.Fatalf("%s: serving %q, want %q", step.name, got, step.want)
		}
	}
}
