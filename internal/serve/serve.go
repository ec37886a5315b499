// Package serve assembles a running cring proxy from a config: the HTTP front
// door, the SSH front door, health checks and the admin endpoints.
package serve

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cring-dev/cring/internal/auth"
	"github.com/cring-dev/cring/internal/backup"
	"github.com/cring-dev/cring/internal/cluster"
	"github.com/cring-dev/cring/internal/clusterstate"
	"github.com/cring-dev/cring/internal/config"
	"github.com/cring-dev/cring/internal/heal"
	"github.com/cring-dev/cring/internal/health"
	"github.com/cring-dev/cring/internal/metrics"
	"github.com/cring-dev/cring/internal/nodetls"
	"github.com/cring-dev/cring/internal/proxy"
	"github.com/cring-dev/cring/internal/sshproxy"
	"github.com/cring-dev/cring/internal/stamp"
	"github.com/cring-dev/cring/internal/token"
	jose "gopkg.in/square/go-jose.v2"
)

// Server is a configured proxy, listening once Listen returns.
type Server struct {
	cfg       *config.Config // as started: addresses, keys, data dir
	log       *slog.Logger
	transport *http.Transport
	verifier  *auth.Verifier
	gen       atomic.Pointer[generation]
	runCtx    context.Context // set by Serve: generations' loops run under it
	reloadMu  sync.Mutex
	ssh       *sshproxy.Proxy
	admin     *http.ServeMux
	metrics   *metrics.Metrics
	healer    *heal.Healer
	signer    *token.Signer // --server-key; nil when healing is off
	backupQ   *backup.Queue
	sink      *backup.Sink
	clock     *stamp.Clock  // one per process: stamps never go back across reloads
	certs     *certReloader // nil: plain HTTP

	// The shared state (nil: hints and known users are this proxy's).
	state       *clusterstate.Store
	proxyID     string
	started     time.Time
	proxiesDown atomic.Int64 // proxies the last heartbeat saw down

	httpLn, sshLn, adminLn net.Listener
	httpConns              *sshproxy.Slots // client HTTP connections (its bounds need a restart)
}

// New builds a server from a normalized config. Nothing listens yet.
func New(cfg *config.Config, log *slog.Logger) (*Server, error) {
	s := &Server{cfg: cfg, log: log, clock: stamp.NewClock(nil)}
	s.transport = &http.Transport{
		Proxy:                 nil, // nodes are reached directly, never via HTTP_PROXY
		DialContext:           dialNode(&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}),
		MaxIdleConns:          512,
		MaxIdleConnsPerHost:   128,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: cfg.NodeTimeout,
		ExpectContinueTimeout: time.Second,
		TLSHandshakeTimeout:   10 * time.Second, // https nodes
		DisableCompression:    true,
		WriteBufferSize:       nodeBufSize,
		ReadBufferSize:        nodeBufSize,
	}
	// One transport for every node call (proxying, health, JWKS, the
	// healer's reads, writes and metadata), so https nodes are trusted alike.
	nodeTLS, err := nodetls.ClientConfig(cfg.NodeCA)
	if err != nil {
		return nil, fmt.Errorf("--node-ca: %w", err)
	}
	s.transport.TLSClientConfig = nodeTLS

	if cfg.TLSCert != "" {
		if s.certs, err = newCertReloader(cfg.TLSCert, cfg.TLSKey, log); err != nil {
			return nil, err
		}
		if strings.HasPrefix(cfg.PublicURL, "http://") {
			log.Warn("serving HTTPS but --public-url is http://: charm clients use the public URL's scheme and will fail; make it https://", "public_url", cfg.PublicURL)
		}
	}
	s.metrics = metrics.New()
	s.httpConns = &sshproxy.Slots{Max: cfg.MaxConns, PerAddr: cfg.MaxConnsPerAddress}
	s.metrics.GaugeFunc("cring_http_connections", "Client HTTP connections open now.", func() float64 { return float64(s.httpConns.Used()) })
	s.verifier = auth.NewVerifier(s.fetchKeys, cfg.PublicURL)
	if cfg.State != "" {
		if err := s.openState(cfg.DataDir, cfg.State); err != nil {
			return nil, err
		}
		s.metrics.GaugeFunc("cring_proxies_down", "Proxies of the cluster whose heartbeat is missing (not seen for 3 intervals).", func() float64 { return float64(s.proxiesDown.Load()) })
	}
	if cfg.ServerKey != "" {
		signer, err := token.LoadSigner(cfg.ServerKey)
		if err != nil {
			return nil, fmt.Errorf("--server-key: %w", err)
		}
		s.signer = signer
		s.healer, err = heal.New(heal.Options{
			Signer:         signer,
			Issuer:         s.issuer,
			Transport:      s.transport,
			DataDir:        filepath.Join(cfg.DataDir, "heal"),
			Logger:         log,
			StallTimeout:   cfg.NodeTimeout,
			ScanInterval:   cfg.ScanInterval,
			Rate:           cfg.RepairRate,
			ByteRate:       float64(cfg.RepairByteRate),
			TombstoneGrace: cfg.TombstoneGrace,
			ScrubInterval:  max(cfg.ScrubInterval, 0),
			ScrubRate:      float64(cfg.ScrubRate),
			Shared:         s.state,
			ProxyID:        s.proxyID,
		})
		if err != nil {
			return nil, err
		}
		s.registerHealMetrics()
		if s.state == nil {
			log.Info("hints and known users are this proxy's alone (no state: configured): a proxy lost for good leaves what it owed to a scan of the others; see docs/deploy.md")
		}
	} else {
		log.Warn("healing is off: give --server-key (the nodes' shared charm_server_ed25519) and --data-dir to repair replicas")
	}
	if cfg.Backup.URL != "" {
		if err := s.openBackup(cfg); err != nil {
			return nil, err
		}
	}
	g, err := s.newGeneration(cfg)
	if err != nil {
		return nil, err
	}
	s.install(g)
	s.ssh = &sshproxy.Proxy{
		Backends:    s.sshBackends,
		IdleTimeout: cfg.SSHIdleTimeout,
		MaxConns:    cfg.SSHMaxConns,
		Logger:      log,
		// One address can't take every slot, nor hold one without SSH.
		MaxConnsPerAddr:  cfg.SSHMaxConnsPerAddress,
		HandshakeTimeout: cfg.SSHHandshakeTimeout,
		OnDialError: func(addr string, err error) {
			g := s.gen.Load()
			for i, n := range g.cfg.Nodes {
				if n.SSH == addr {
					g.health.MarkDown(i, fmt.Errorf("ssh dial %s: %w", addr, err))
				}
			}
		},
		OnConnect: func(addr string, failover bool) {
			// A failover is any session not on the primary (the first
			// configured node): a primary known down is not even dialed,
			// so the dial order alone doesn't show it.
			if nodes := s.gen.Load().cfg.Nodes; len(nodes) > 0 && addr != nodes[0].SSH {
				failover = true
			}
			s.metrics.SSHConnect(failover)
			if failover {
				log.Warn("ssh failed over", "backend", addr)
			}
		},
		OnReject: func(string) { s.metrics.SSHRejected() },
	}
	s.metrics.GaugeFunc("cring_write_quorum", "Configured write quorum W.", func() float64 { return float64(s.gen.Load().cfg.WriteQuorum) })
	s.metrics.GaugeFunc("cring_replicas", "Configured replica count N.", func() float64 { return float64(s.gen.Load().cfg.Replicas) })
	s.metrics.GaugeFunc("cring_ssh_active_connections", "SSH connections being proxied now.", func() float64 { return float64(s.ssh.Active()) })
	s.admin = http.NewServeMux()
	s.admin.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	s.admin.HandleFunc("GET /readyz", s.handleReady)
	s.admin.HandleFunc("GET /status", s.handleStatus)
	s.admin.Handle("GET /metrics", s.metrics.Handler())
	if cfg.Pprof {
		// Profiles for operators chasing CPU or memory: opt-in, as the
		// admin address may be reachable by more than operators.
		s.admin.HandleFunc("GET /debug/pprof/", pprof.Index)
		s.admin.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		s.admin.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return s, nil
}

// generation is one node configuration: ring, health checks and the proxy
// built on them. A reload builds a new one and swaps it in whole; requests
// already running finish on the one they started with.
type generation struct {
	cfg     *config.Config
	members *cluster.Membership
	health  *health.Checker
	proxy   *proxy.Proxy
	stop    context.CancelFunc // ends its health loop
}

func (s *Server) newGeneration(cfg *config.Config) (*generation, error) {
	m, err := cluster.New(cfg.Nodes, cfg.Replicas, cfg.WriteQuorum)
	if err != nil {
		return nil, err
	}
	g := &generation{cfg: cfg, members: m}
	g.health = health.New(m.Nodes, health.Options{Interval: cfg.HealthInterval, Transport: s.transport, Logger: s.log,
		OnChange: func(i int, up bool) { s.metrics.NodeHealth(cfg.Nodes[i].Name, up) }})
	m.Health = g.health
	var healer proxy.Healer
	if s.healer != nil {
		healer = s.healer
		s.healer.Reconfigure(m)
	}
	g.proxy, err = proxy.New(proxy.Options{
		Members:           m,
		Verifier:          s.verifier,
		Transport:         s.transport,
		Logger:            s.log,
		StallTimeout:      cfg.NodeTimeout,
		PostQuorumTimeout: cfg.PostQuorumTimeout,
		BodyIdleTimeout:   cfg.BodyIdleTimeout,
		SharedAccounts:    cfg.Accounts == config.AccountsShared,
		Observer:          s.metrics,
		Healer:            healer,
		Backup:            s.backupSink(),
		Clock:             s.clock,
		VersionRecords:    m.AnyStock(),

		// Bounds hold per generation: a reload starts them afresh while
		// the old generation's requests drain.
		MaxRequestsPerClient: cfg.MaxRequestsPerClient,
		MaxRequests:          cfg.MaxRequests,
	})
	if err != nil {
		return nil, err
	}
	return g, nil
}

// install makes g current and starts its health loop when serving.
func (s *Server) install(g *generation) {
	for _, n := range g.cfg.Nodes {
		s.metrics.NodeHealth(n.Name, true)
	}
	if s.runCtx != nil {
		ctx, stop := context.WithCancel(s.runCtx)
		g.stop = stop
		go g.health.Run(ctx)
	}
	old := s.gen.Swap(g)
	if old != nil && old != g {
		if old.stop != nil {
			old.stop()
		}
		for _, n := range old.cfg.Nodes {
			if !slices.ContainsFunc(g.cfg.Nodes, func(m cluster.Node) bool { return m.Name == n.Name }) {
				s.metrics.ForgetNode(n.Name)
			}
		}
	}
}

// Reload switches to a new node list, replica count and quorum without a
// restart. Addresses, keys and the data dir need a restart; a changed one is
// reported and kept.
func (s *Server) Reload(cfg *config.Config) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	cur := s.gen.Load().cfg
	var kept []string
	for _, f := range []struct {
		name     string
		old, new string
	}{
		{"address", cur.Address, cfg.Address},
		{"ssh-proxy-address", cur.SSHProxyAddress, cfg.SSHProxyAddress},
		{"admin-address", cur.AdminAddress, cfg.AdminAddress},
		{"admin-token", cur.AdminToken, cfg.AdminToken},
		{"public-url", cur.PublicURL, cfg.PublicURL},
		{"server-key", cur.ServerKey, cfg.ServerKey},
		{"data-dir", cur.DataDir, cfg.DataDir},
		{"tls-cert", cur.TLSCert, cfg.TLSCert},
		{"tls-key", cur.TLSKey, cfg.TLSKey},
		{"node-ca", cur.NodeCA, cfg.NodeCA},
		{"state", cur.State, cfg.State},
		{"max-conns", strconv.Itoa(cur.MaxConns), strconv.Itoa(cfg.MaxConns)},
		{"max-conns-per-address", strconv.Itoa(cur.MaxConnsPerAddress), strconv.Itoa(cfg.MaxConnsPerAddress)},
	} {
		if f.old != f.new {
			kept = append(kept, f.name)
		}
	}
	next := *cfg
	next.Address, next.SSHProxyAddress, next.AdminAddress, next.AdminToken = cur.Address, cur.SSHProxyAddress, cur.AdminAddress, cur.AdminToken
	next.PublicURL, next.ServerKey, next.DataDir = cur.PublicURL, cur.ServerKey, cur.DataDir
	next.TLSCert, next.TLSKey, next.NodeCA, next.State = cur.TLSCert, cur.TLSKey, cur.NodeCA, cur.State
	next.MaxConns, next.MaxConnsPerAddress = cur.MaxConns, cur.MaxConnsPerAddress
	g, err := s.newGeneration(&next)
	if err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	if s.signer != nil {
		// New nodes must accept the healer's tokens too.
		if _, err := s.checkServerKey(context.Background(), next.Nodes); err != nil {
			return fmt.Errorf("reload: %w", err)
		}
	}
	s.install(g)
	if len(kept) > 0 {
		s.log.Warn("reload: these settings need a restart and were kept", "settings", strings.Join(kept, ", "))
	}
	s.log.Info("reloaded", "nodes", len(next.Nodes), "replicas", next.Replicas, "write_quorum", next.WriteQuorum)
	return nil
}

// HandleAdmin adds a route to the admin server (before Serve).
func (s *Server) HandleAdmin(pattern string, h http.HandlerFunc) { s.admin.HandleFunc(pattern, h) }

// sshBackends is the SSH primary order as addresses.
func (s *Server) sshBackends() []string {
	var out []string
	g := s.gen.Load()
	for _, i := range g.primaryOrder() {
		out = append(out, g.cfg.Nodes[i].SSH)
	}
	return out
}

// fetchKeys asks healthy nodes, in order, for the key set and issuer.
func (s *Server) fetchKeys(ctx context.Context) (*jose.JSONWebKeySet, string, error) {
	var errs []error
	g := s.gen.Load()
	for _, i := range g.primaryOrder() {
		n := g.cfg.Nodes[i]
		set := &jose.JSONWebKeySet{}
		if err := s.getJSON(ctx, n.URL+"/v1/public/jwks", set); err != nil {
			errs = append(errs, err)
			continue
		}
		// Charm's OpenID configuration has no issuer; its jwks_uri is the
		// issuer (the node's public URL) plus /v1/public/jwks.
		var oidc struct {
			Issuer  string `json:"issuer"`
			JWKSURI string `json:"jwks_uri"`
		}
		if err := s.getJSON(ctx, n.URL+"/.well-known/openid-configuration", &oidc); err != nil {
			errs = append(errs, err)
			continue
		}
		iss := oidc.Issuer
		if iss == "" {
			iss = strings.TrimSuffix(oidc.JWKSURI, "/v1/public/jwks")
		}
		return set, iss, nil
	}
	return nil, "", errors.Join(errs...)
}

// primaryOrder is healthy nodes in configured order, then the rest: SSH's
// sticky primary is its first entry, and a failed dial moves to the next.
func (g *generation) primaryOrder() []int {
	var up, down []int
	for i := range g.cfg.Nodes {
		if g.health.Healthy(i) {
			up = append(up, i)
		} else {
			down = append(down, i)
		}
	}
	return append(up, down...)
}

func (s *Server) getJSON(ctx context.Context, u string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := s.transport.RoundTrip(req)
	if err != nil {
		return fmt.Errorf("get %s: %w", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("get %s: %s", u, resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(v); err != nil {
		return fmt.Errorf("decode %s: %w", u, err)
	}
	return nil
}

// Listen opens the three listeners; a port in use fails here, before serving.
func (s *Server) Listen() error {
	var err error
	if s.httpLn, err = net.Listen("tcp", s.cfg.Address); err != nil {
		return fmt.Errorf("listen http %s: %w", s.cfg.Address, err)
	}
	cl := &connLimit{Listener: s.httpLn, slots: s.httpConns, rejected: s.metrics.ConnRejected}
	if s.certs == nil {
		cl.refuse = refuseHTTP
	}
	s.httpLn = cl
	if s.certs != nil {
		s.httpLn = tls.NewListener(s.httpLn, s.certs.tlsConfig())
	}
	if s.sshLn, err = net.Listen("tcp", s.cfg.SSHProxyAddress); err != nil {
		s.httpLn.Close()
		return fmt.Errorf("listen ssh %s: %w", s.cfg.SSHProxyAddress, err)
	}
	if s.adminLn, err = net.Listen("tcp", s.cfg.AdminAddress); err != nil {
		s.httpLn.Close()
		s.sshLn.Close()
		return fmt.Errorf("listen admin %s: %w", s.cfg.AdminAddress, err)
	}
	return nil
}

// Addrs are the bound addresses (useful with port 0).
func (s *Server) Addrs() (httpAddr, sshAddr, adminAddr string) {
	return s.httpLn.Addr().String(), s.sshLn.Addr().String(), s.adminLn.Addr().String()
}

// Serve runs until ctx ends, then shuts down gracefully.
func (s *Server) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hs := &http.Server{
		// Each request goes to the generation current when it arrives.
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.gen.Load().proxy.ServeHTTP(w, r) }),
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	as := &http.Server{Handler: s.adminHandler(), ReadHeaderTimeout: 10 * time.Second}

	// A --server-key the nodes don't publish would have every repair
	// refused: refuse to start instead (later, if no node answers yet).
	keyUnchecked := false
	if s.signer != nil {
		checked, err := s.checkServerKey(ctx, s.cfg.Nodes)
		if err != nil {
			s.httpLn.Close()
			s.sshLn.Close()
			s.adminLn.Close()
			return err
		}
		keyUnchecked = !checked
	}

	go func() {
		if err := s.verifier.Prime(ctx); err != nil {
			s.log.Warn("no node answered for the key set yet; will retry on the first request", "err", err)
			return
		}
		if d := s.verifier.DiscoveredIssuer(); s.cfg.PublicURL != "" && d != "" && d != strings.TrimRight(s.cfg.PublicURL, "/") {
			s.log.Warn("nodes sign tokens for a different public URL than --public-url: clients will get 401",
				"nodes", d, "public_url", s.cfg.PublicURL)
		}
	}()

	var wg sync.WaitGroup
	errc := make(chan error, 4)
	if keyUnchecked {
		go s.watchServerKey(ctx, errc)
	}
	if s.state != nil {
		// Closed last: the healer publishes what is left as it stops.
		defer s.state.Close()
		wg.Add(1)
		go func() { defer wg.Done(); s.heartbeat(ctx, clusterstate.DefaultHeartbeat) }()
	}
	if s.healer != nil {
		wg.Add(1)
		go func() { defer wg.Done(); s.healer.Run(ctx) }()
		defer s.healer.Close()
	}
	if s.backupQ != nil {
		wg.Add(1)
		go func() { defer wg.Done(); _ = s.backupQ.Run(ctx) }()
		defer s.backupQ.Close()
	}
	s.reloadMu.Lock()
	s.runCtx = ctx
	s.install(s.gen.Load()) // starts its health loop
	s.reloadMu.Unlock()
	wg.Add(3)
	go func() {
		defer wg.Done()
		if err := hs.Serve(s.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("http: %w", err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := as.Serve(s.adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("admin: %w", err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := s.ssh.Serve(ctx, s.sshLn); err != nil {
			errc <- fmt.Errorf("ssh: %w", err)
		}
	}()
	s.log.Info("cring serving", "http", s.httpLn.Addr().String(), "tls", s.certs != nil, "ssh", s.sshLn.Addr().String(),
		"admin", s.adminLn.Addr().String(), "nodes", len(s.cfg.Nodes), "replicas", s.cfg.Replicas, "write_quorum", s.cfg.WriteQuorum,
		"healing", s.healer != nil)

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	cancel()
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	_ = hs.Shutdown(sctx)
	_ = as.Shutdown(sctx)
	wg.Wait()
	s.transport.CloseIdleConnections()
	return err
}

func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	g := s.gen.Load()
	up := g.health.HealthyCount()
	ready := up >= g.cfg.WriteQuorum
	status := http.StatusOK
	if !ready {
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, map[string]any{
		"ready":    ready,
		"healthy":  up,
		"required": g.cfg.WriteQuorum,
		"nodes":    g.health.Snapshot(),
	})
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	g := s.gen.Load()
	st := map[string]any{
		"nodes":          g.health.Snapshot(),
		"replicas":       g.cfg.Replicas,
		"write_quorum":   g.cfg.WriteQuorum,
		"ssh_active":     s.ssh.Active(),
		"peak_rss_bytes": peakRSS(),
		"node_errors":    s.metrics.NodeErrors(),
	}
	// Who stores what is for operators: only with the admin token.
	st["users_shown"] = adminAuthed(r)
	if s.healer != nil {
		hs := s.healer.Status()
		if !adminAuthed(r) {
			hs = aggregateHeal(hs)
		}
		st["heal"] = hs
	}
	if s.backupQ != nil {
		st["backup"] = s.backupQ.Stats()
	}
	st["cluster"] = s.clusterStatus(r.Context())
	writeJSON(w, http.StatusOK, st)
}

// issuer is the issuer the nodes accept: configured, or what they announce.
func (s *Server) issuer() string {
	if s.cfg.PublicURL != "" {
		return strings.TrimRight(s.cfg.PublicURL, "/")
	}
	return s.verifier.DiscoveredIssuer()
}

// openBackup connects the backup target (failing now, with a clear line, on
// a bad endpoint or credentials) and opens its durable queue.
func (s *Server) openBackup(cfg *config.Config) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	t, err := backup.Open(ctx, backup.Config{URL: cfg.Backup.URL, Bucket: cfg.Backup.Bucket, Region: cfg.Backup.Zone, PathStyle: cfg.Backup.PathStyle})
	switch {
	case err != nil && errors.Is(err, backup.ErrUnreachable) && t != nil && cfg.Backup.Mode == "async":
		// The queue is durable: writes wait on disk until it is back.
		s.log.Warn("backup target unreachable at start; queueing until it returns", "err", err)
	case err != nil:
		return err
	}
	q, err := backup.OpenQueue(filepath.Join(cfg.DataDir, "backup"), t, s.log)
	if err != nil {
		return fmt.Errorf("backup queue: %w", err)
	}
	s.backupQ = q
	s.sink = &backup.Sink{Queue: q, Target: t, Sync: cfg.Backup.Mode == "sync"}
	s.metrics.GaugeFunc("cring_backup_queue_depth", "Backup operations queued, not yet stored.", func() float64 { return float64(q.Stats().Depth) })
	s.metrics.GaugeFunc("cring_backup_queue_lag_seconds", "Age of the oldest queued backup operation.", func() float64 {
		if o := q.Stats().Oldest; !o.IsZero() {
			return time.Since(o).Seconds()
		}
		return 0
	})
	s.metrics.CounterFunc("cring_backup_failures_total", "Failed attempts to store or delete a backup object.", func() float64 { return float64(q.Stats().Failures) })
	s.metrics.GaugeFunc("cring_backup_parked", "Backup operations set aside for an operator (body lost).", func() float64 { return float64(q.Stats().Parked) })
	s.log.Info("backups on", "target", t.String(), "mode", cfg.Backup.Mode)
	return nil
}

// backupSink is the proxy's backup, nil (no interface value) when off.
func (s *Server) backupSink() proxy.Backup {
	if s.sink == nil {
		return nil
	}
	return s.sink
}

// Healer is the running healer, nil when healing is off.
func (s *Server) Healer() *heal.Healer { return s.healer }

func (s *Server) registerHealMetrics() {
	h := s.healer
	s.metrics.GaugeFunc("cring_heal_hints_pending", "Missed writes and deletes owed to nodes.", func() float64 {
		n := 0
		for _, c := range h.Status().HintsPending {
			n += c
		}
		return float64(n)
	})
	s.metrics.GaugeFunc("cring_heal_users", "Users whose files the scan walks.", func() float64 { return float64(h.Status().Users) })
	if s.state != nil {
		s.metrics.GaugeFunc("cring_state_hints_pending", "Missed writes and deletes owed to nodes in the shared state, every proxy's (at most a second old).", func() float64 {
			var n int64
			for _, c := range h.SharedHintsPending() {
				n += c
			}
			return float64(n)
		})
	}
	for _, k := range []string{"copied", "removed", "hints_replayed", "read_repairs"} {
		s.metrics.CounterFunc("cring_heal_"+k+"_total", "Healer total: "+strings.ReplaceAll(k, "_", " ")+".", func() float64 {
			return float64(h.Status().Totals[k])
		})
	}
	s.metrics.GaugeFunc("cring_heal_scan_progress_ratio", "Share of users the running scan (rebalancing included) has done; 1 when idle.", func() float64 {
		if p := h.Status().Scanning; p != nil && p.UsersTotal > 0 {
			return float64(p.UsersDone) / float64(p.UsersTotal)
		}
		return 1
	})
	scrub := func(f func(heal.ScrubStatus) float64) func() float64 {
		return func() float64 {
			if st := h.Status().Scrub; st != nil {
				return f(*st)
			}
			return 0
		}
	}
	s.metrics.CounterFunc("cring_scrub_bytes_total", "Bytes of copies the scrub hashed.", scrub(func(st heal.ScrubStatus) float64 { return float64(st.Bytes) }))
	s.metrics.CounterFunc("cring_scrub_corrupt_total", "Copies the scrub found not matching the version they hold (silent corruption).", scrub(func(st heal.ScrubStatus) float64 { return float64(st.Corrupt) }))
	s.metrics.CounterFunc("cring_scrub_repaired_total", "Copies the scrub replaced with a good one.", scrub(func(st heal.ScrubStatus) float64 { return float64(st.Repaired) }))
	s.metrics.GaugeFunc("cring_scrub_last_full_pass_timestamp_seconds", "When the last complete scrub pass ended (0: none yet).", scrub(func(st heal.ScrubStatus) float64 {
		if st.LastFullPass.IsZero() {
			return 0
		}
		return float64(st.LastFullPass.Unix())
	}))
	s.metrics.GaugeFunc("cring_heal_last_scan_under_replicated", "Keys the last scan found missing a replica and could not repair: still under-replicated after it.", func() float64 {
		if r := h.Status().LastScan; r != nil {
			return float64(r.UnderReplicatedLeft)
		}
		return 0
	})
}

// peakRSS is this process's peak resident set size. On Linux it is VmHWM:
// getrusage's maxrss survives exec, so a proxy started by a big process
// would report its parent's peak (and it can't be reset through
// /proc/<pid>/clear_refs).
func peakRSS() int64 {
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				if err == nil {
					return kb << 10
				}
			}
		}
	}
	var ru syscall.Rusage // KiB on Linux
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Maxrss * 1024
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
