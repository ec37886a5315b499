// Package versioned is the HTTP side of cring node: charm's own server
// (server.NewServer) behind a front that answers charm's file API from the
// versioned file store (package filestore), where a write's stamp is
// visible, and passes every other route to charm. It also serves the
// metadata endpoint the healer uses. See docs/node.md.
package versioned

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/charmbracelet/charm/server"
	jose "gopkg.in/square/go-jose.v2"

	"github.com/cring-dev/cring/internal/auth"
	"github.com/cring-dev/cring/internal/node/filestore"
	"github.com/cring-dev/cring/internal/token"
)

// ServerOptions configure NewServer.
type ServerOptions struct {
	// TombstoneGrace: how long a delete refuses older writes
	// (filestore.DefaultGrace when 0).
	TombstoneGrace time.Duration
	// CollectEvery: how often expired tombstones are collected (an hour
	// when 0).
	CollectEvery time.Duration
	Logger       *slog.Logger
}

// Server is charm's server with cring's versioned file store. It answers
// charm's public HTTP port itself: /v1/fs from the store (where a write's
// stamp is visible, which charm's FileStore interface never sees), every
// other route passed on to charm's own HTTP server on an internal port.
// Charm's handler there uses the same store, for unstamped writes.
type Server struct {
	charm    *server.Server
	store    *filestore.Store
	public   *http.Server
	ln       net.Listener
	publicIn string   // host:port to reach the public listener locally
	internal *url.URL // charm's own HTTP server
	issuer   string
	tls      bool
	certFile string
	keyFile  string
	every    time.Duration
	log      *slog.Logger

	stop context.CancelFunc // ends the tombstone collector
	done context.Context
}

// NewServer prepares a node on cfg, which has its keys (WithKeys) and
// usually its account store (WithDB). cfg.HTTPPort is the public port:
// NewServer binds it at once. Charm's HTTP server gets a free port of its
// own, on cfg.BindAddr too: charm binds HTTP, SSH and health on the one
// BindAddr, so it is loopback only when BindAddr is. It serves the same
// store with charm's own authentication, so it grants nothing the public
// port doesn't, but firewall it anyway (docs/node.md). cfg is not changed.
func NewServer(cfg *server.Config, o ServerOptions) (*Server, error) {
	if len(cfg.PrivateKey) == 0 {
		return nil, errors.New("cring node: the server key is not set (Config.WithKeys)")
	}
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	c := *cfg // charm's config has no lock; the copy keeps its unexported settings
	if c.PublicURL == "" {
		// What charm derives the JWT issuer from when unset; fixed here
		// before the HTTP port becomes the internal one.
		c.PublicURL = fmt.Sprintf("http://%s:%d", c.Host, c.HTTPPort)
	}
	signer, err := token.NewSigner(c.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("cring node: %w", err)
	}
	store, err := filestore.Open(c.DataDir, filestore.Options{Grace: o.TombstoneGrace, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("cring node: %w", err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(c.BindAddr, strconv.Itoa(c.HTTPPort)))
	if err != nil {
		return nil, fmt.Errorf("http port: %w", err)
	}
	s, err := newServer(&c, store, signer, ln, o, log)
	if err != nil {
		ln.Close()
		return nil, err
	}
	return s, nil
}

func newServer(c *server.Config, store *filestore.Store, signer *token.Signer, ln net.Listener, o ServerOptions, log *slog.Logger) (*Server, error) {
	port, err := freePort(c.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("charm's internal http port: %w", err)
	}
	publicPort := ln.Addr().(*net.TCPAddr).Port
	c.HTTPPort = port
	c.WithFileStore(store)
	srv, err := server.NewServer(c)
	if err != nil {
		return nil, fmt.Errorf("start charm server: %w", err)
	}
	scheme := "http"
	if c.UseTLS {
		scheme = "https"
	}
	local := loopbackFor(c.BindAddr)
	s := &Server{
		charm:    srv,
		store:    store,
		ln:       ln,
		publicIn: net.JoinHostPort(local, strconv.Itoa(publicPort)),
		internal: &url.URL{Scheme: scheme, Host: net.JoinHostPort(local, strconv.Itoa(port))},
		issuer:   strings.TrimRight(c.PublicURL, "/"),
		tls:      c.UseTLS,
		certFile: c.TLSCertFile,
		keyFile:  c.TLSKeyFile,
		every:    o.CollectEvery,
		log:      log,
	}
	if s.every <= 0 {
		s.every = time.Hour
	}
	s.done, s.stop = context.WithCancel(context.Background())
	set := &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{signer.JWK()}}
	fsh := &fsHandler{
		store: store,
		// Charm checks the issuer as configured; so does the verifier
		// (both ignore a trailing slash's absence the same way for the
		// URLs cring generates).
		verifier:   auth.NewVerifier(func(context.Context) (*jose.JSONWebKeySet, string, error) { return set, s.issuer, nil }, s.issuer),
		users:      srv.Config.DB, // charm's own when none was given
		maxStorage: c.UserMaxStorage,
		log:        log,
	}
	rp := s.charmProxy()
	s.public = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if isFSRequest(r) {
				fsh.ServeHTTP(w, r)
				return
			}
			rp.ServeHTTP(w, r)
		}),
		// No read or write timeout: bodies up to charm's 1 GiB move at the
		// client's pace, as with charm itself.
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// charmProxy streams every route but /v1/fs to charm's own HTTP server.
func (s *Server) charmProxy() *httputil.ReverseProxy {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
	if s.tls {
		// Our own charm server on this host, with the public port's certificate.
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // loopback to ourselves
	}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(s.internal)
			pr.Out.Host = pr.In.Host
		},
		Transport: tr,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() != nil {
				return // the client left
			}
			s.log.Warn("charm's internal http server", "path", r.URL.Path, "err", err)
			reply(w, http.StatusBadGateway, message{Message: "charm server unavailable"})
		},
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
}

// freePort asks the kernel for a free port on host. Kernel-chosen ports
// come from the ephemeral range, away from the fixed ports of other nodes
// a test or `cring dev` picked below it.
func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// loopbackFor is the address that reaches a listener bound to host from
// this machine.
func loopbackFor(host string) string {
	switch host {
	case "", "0.0.0.0":
		return "127.0.0.1"
	case "::":
		return "::1"
	}
	return host
}

// Store is the node's file store.
func (s *Server) Store() *filestore.Store { return s.store }

// Charm is charm's own server inside (cring node --closed guards its SSH
// handler before Start).
func (s *Server) Charm() *server.Server { return s.charm }

// Issuer is the issuer (the public URL) tokens must carry.
func (s *Server) Issuer() string { return s.issuer }

// InternalURL is charm's own HTTP server, behind the public port.
func (s *Server) InternalURL() string { return s.internal.String() }

// Start serves until Shutdown or Close, like charm's Start: it returns
// when the servers stopped, or at the first one that failed.
func (s *Server) Start() error {
	go s.store.CollectLoop(s.done, s.every)
	errc := make(chan error, 2)
	go func() { errc <- s.charm.Start() }()
	go func() {
		var err error
		if s.tls {
			err = s.public.ServeTLS(s.ln, s.certFile, s.keyFile)
		} else {
			err = s.public.Serve(s.ln)
		}
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		if err != nil {
			err = fmt.Errorf("http port: %w", err)
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		return err
	}
	return <-errc
}

// WaitReady waits until the public port answers charm's key set, which
// proves the whole path: our listener, the proxy, charm's own server.
func (s *Server) WaitReady(ctx context.Context) error {
	scheme := "http"
	tr := &http.Transport{}
	if s.tls {
		scheme = "https"
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // loopback readiness probe
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Timeout: time.Second, Transport: tr}
	u := scheme + "://" + s.publicIn + "/v1/public/jwks"
	for {
		resp, err := client.Get(u)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("charm's http server behind %s did not answer: %w", s.publicIn, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Shutdown stops gracefully: the public port first, then charm.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stop()
	perr := s.public.Shutdown(ctx)
	cerr := s.charm.Shutdown(ctx)
	return errors.Join(perr, cerr)
}

// Close stops at once and closes the account store, like charm's Close.
func (s *Server) Close() error {
	s.stop()
	perr := s.public.Close()
	_ = s.ln.Close() // when Start never ran
	cerr := s.charm.Close()
	return errors.Join(perr, cerr)
}
