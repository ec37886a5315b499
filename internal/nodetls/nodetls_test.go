package nodetls

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestClientConfigErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, file, wantErr string
	}{
		{"missing file", filepath.Join(dir, "none.pem"), "no such file"},
		{"no certificate", notPEM, "no PEM certificate"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ClientConfig(tt.file)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), tt.file) {
				t.Fatalf("err = %v, want one naming %s and saying %q", err, tt.file, tt.wantErr)
			}
		})
	}
	if c, err := ClientConfig(""); c != nil || err != nil {
		t.Fatalf("no CA file: %v, %v; want nil, nil (Go's defaults)", c, err)
	}
}

// TestIssuedTrusted: a server with a certificate the CA issued is trusted by
// a client with ClientConfig(the CA's file), for each of the names it was
// issued for, and refused by a client without it or for another name.
func TestIssuedTrusted(t *testing.T) {
	now := time.Now()
	ca, err := NewCA("test nodes", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue([]string{"127.0.0.1", "charm1", "localhost"}, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("issued pair does not load: %v", err)
	}
	blk, _ := pem.Decode(certPEM)
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(leaf.DNSNames, []string{"charm1", "localhost"}) || len(leaf.IPAddresses) != 1 || leaf.NotAfter.After(now.Add(time.Hour)) {
		t.Fatalf("issued: DNS %v IPs %v until %v", leaf.DNSNames, leaf.IPAddresses, leaf.NotAfter)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{kp}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	port := ":" + strconv.Itoa(srv.Listener.Addr().(*net.TCPAddr).Port)

	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	trusting, err := ClientConfig(caFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name   string
		cfg    *tls.Config
		url    string
		wantOK bool
	}{
		{"by IP", trusting, "https://127.0.0.1" + port, true},
		{"by name", trusting, "https://localhost" + port, true},
		{"without the CA", nil, "https://127.0.0.1" + port, false},
		{"name not in the certificate", &tls.Config{RootCAs: trusting.RootCAs, ServerName: "charm2"}, "https://127.0.0.1" + port, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tt.cfg}}
			resp, err := c.Get(tt.url)
			if err == nil {
				resp.Body.Close()
			}
			if (err == nil) != tt.wantOK {
				t.Fatalf("GET %s: %v, want ok=%v", tt.url, err, tt.wantOK)
			}
			if !tt.wantOK && !strings.Contains(err.Error(), "certificate") {
				t.Fatalf("GET %s: %v, want a certificate error", tt.url, err)
			}
		})
	}
}
