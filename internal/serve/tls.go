package serve

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// certReloader serves a certificate from PEM files and re-reads them when
// they change (an ACME client renewing them), at most every checkEvery. A
// renewal that does not load keeps the old certificate and is logged.
type certReloader struct {
	certPath, keyPath string
	log               *slog.Logger
	checkEvery        time.Duration
	now               func() time.Time

	mu        sync.Mutex
	cert      *tls.Certificate
	certMod   time.Time
	keyMod    time.Time
	lastCheck time.Time
}

func newCertReloader(certPath, keyPath string, log *slog.Logger) (*certReloader, error) {
	r := &certReloader{certPath: certPath, keyPath: keyPath, log: log, checkEvery: 5 * time.Second, now: time.Now}
	if err := r.load(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *certReloader) load() error {
	cm, km, err := r.modTimes()
	if err != nil {
		return err
	}
	c, err := tls.LoadX509KeyPair(r.certPath, r.keyPath)
	if err != nil {
		return fmt.Errorf("tls: load %s and %s: %w", r.certPath, r.keyPath, err)
	}
	r.cert, r.certMod, r.keyMod = &c, cm, km
	return nil
}

func (r *certReloader) modTimes() (cert, key time.Time, err error) {
	cs, err := os.Stat(r.certPath)
	if err != nil {
		return cert, key, fmt.Errorf("tls: %w", err)
	}
	ks, err := os.Stat(r.keyPath)
	if err != nil {
		return cert, key, fmt.Errorf("tls: %w", err)
	}
	return cs.ModTime(), ks.ModTime(), nil
}

// getCertificate is tls.Config.GetCertificate.
func (r *certReloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := r.now(); now.Sub(r.lastCheck) >= r.checkEvery {
		r.lastCheck = now
		cm, km, err := r.modTimes()
		if err == nil && (!cm.Equal(r.certMod) || !km.Equal(r.keyMod)) {
			old := r.cert
			if err = r.load(); err == nil {
				r.log.Info("tls certificate reloaded", "cert", r.certPath)
			} else {
				r.cert = old
			}
		}
		if err != nil {
			r.log.Error("tls certificate not reloaded; serving the previous one", "err", err)
		}
	}
	return r.cert, nil
}

// tlsConfig is the HTTPS front door's: TLS 1.2 or newer, HTTP/1.1 only (the
// proxy streams bodies; charm clients speak HTTP/1.1).
func (r *certReloader) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: r.getCertificate,
		NextProtos:     []string{"http/1.1"},
	}
}
