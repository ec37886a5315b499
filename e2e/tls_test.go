package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/cluster"
	"github.com/cring-dev/cring/internal/config"
	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/testwait"
)

// TestTLS: `cring serve` with --tls-cert/--tls-key serves HTTPS on the HTTP
// port, the nodes announce https (their public URL), and the real charm CLI,
// trusting only a test CA through SSL_CERT_FILE, runs fs cp, fs cat and kv
// set/get as a brand-new user. Without the CA it refuses the certificate,
// and a plain-HTTP request to the port gets no answer: no token in clear.
func TestTLS(t *testing.T) {
	charmBin := charmCLI(t)
	dir := t.TempDir()
	caPEM, certPEM, keyPEM := testCA(t, "127.0.0.1")
	for name, b := range map[string][]byte{"ca.pem": caPEM, "cert.pem": certPEM, "key.pem": keyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ports, err := devcluster.FreePorts("127.0.0.1", 3)
	if err != nil {
		t.Fatal(err)
	}
	httpAddr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	publicURL := "https://" + httpAddr
	dc, err := devcluster.New(t.TempDir(), devcluster.Options{Nodes: 3, PublicURL: publicURL, SharedAccounts: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dc.Close() })
	if err := dc.StartAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{
		PublicURL:       publicURL,
		Address:         httpAddr,
		SSHProxyAddress: fmt.Sprintf("127.0.0.1:%d", ports[1]),
		AdminAddress:    fmt.Sprintf("127.0.0.1:%d", ports[2]),
		HealthInterval:  200 * time.Millisecond,
		Accounts:        config.AccountsShared,
		DataDir:         t.TempDir(),
		ServerKey:       dc.KeyPath,
		TLSCert:         filepath.Join(dir, "cert.pem"),
		TLSKey:          filepath.Join(dir, "key.pem"),
	}
	for _, n := range dc.Nodes {
		cfg.Nodes = append(cfg.Nodes, cluster.Node{Name: n.Name, URL: n.HTTPURL(), SSH: n.SSHAddr(), Health: n.HealthURL()})
	}
	p := serveInProcess(t, cfg)
	testwait.For(t, 10*time.Second, "the condition", func() bool { return ciHealthy(p.admin) == 3 })

	home := t.TempDir()
	env := append(bootBaseEnv(home), "CHARM_HOST=127.0.0.1", fmt.Sprintf("CHARM_SSH_PORT=%d", ports[1]),
		fmt.Sprintf("CHARM_HTTP_PORT=%d", ports[0]), "CHARM_DATA_DIR="+filepath.Join(home, "charm"))
	charm := func(extra []string, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, charmBin, args...)
		cmd.Env, cmd.Dir = append(env[:len(env):len(env)], extra...), home
		b, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(b)), err
	}
	trust := []string{"SSL_CERT_FILE=" + filepath.Join(dir, "ca.pem"), "SSL_CERT_DIR=" + t.TempDir()}
	must := func(args ...string) string {
		t.Helper()
		out, err := charm(trust, args...)
		if err != nil {
			t.Fatalf("charm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	note := filepath.Join(home, "note.txt")
	if err := os.WriteFile(note, []byte("over tls\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	must("fs", "cp", note, "charm:note.txt")
	if got := must("fs", "cat", "charm:note.txt"); got != "over tls" {
		t.Fatalf("fs cat = %q", got)
	}
	must("kv", "set", "greeting", "hello")
	if got := must("kv", "get", "greeting"); got != "hello" {
		t.Fatalf("kv get = %q", got)
	}

	// Without the test CA the client must refuse the certificate.
	if out, err := charm([]string{"SSL_CERT_FILE=" + filepath.Join(dir, "none.pem"), "SSL_CERT_DIR=" + t.TempDir()}, "fs", "cat", "charm:note.txt"); err == nil || !strings.Contains(out, "certificate") {
		t.Fatalf("charm without the CA: %v\n%s; want a certificate error", err, out)
	}
	// Plain HTTP on the HTTPS port: the handshake fails, nothing is served.
	plain := &http.Client{Timeout: 5 * time.Second}
	if resp, err := plain.Get("http://" + httpAddr + "/v1/public/jwks"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("plain HTTP on the TLS port answered 200")
		}
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	secure := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := secure.Get(publicURL + "/v1/public/jwks")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.TLS == nil {
		t.Fatalf("GET jwks over TLS: %s", resp.Status)
	}
}

// testCA makes a throwaway CA and a server certificate for host (an IP or
// a name), all PEM.
func testCA(t *testing.T, host string) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cring test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: host},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{host}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}
