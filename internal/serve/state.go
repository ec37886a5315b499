package serve

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/cring-dev/cring/internal/clusterstate"
)

// The cluster's shared state (config state:, docs/design.md "Hints and
// repairs"): the healer publishes hints and users there and claims any
// proxy's; this file opens it, names this proxy in it, writes its
// heartbeat and shows the cluster in /status.

// openState opens the shared store (it connects on first use, so a
// database down at start only delays what needs it) and this proxy's id.
func (s *Server) openState(dataDir, url string) error {
	store, err := clusterstate.New(url, clusterstate.Options{})
	if err != nil {
		return err
	}
	id, err := proxyID(dataDir)
	if err != nil {
		store.Close()
		return err
	}
	s.state, s.proxyID = store, id
	s.started = time.Now()
	s.log.Info("shared state: hints, known users and heartbeats in PostgreSQL", "host", store.Host(), "proxy_id", id)
	return nil
}

// proxyID is this proxy's name in the shared state, kept under the data
// dir so a restart is the same proxy (a new one without a data dir).
func proxyID(dataDir string) (string, error) {
	fresh := func() (string, error) {
		b := make([]byte, 6)
		if _, err := rand.Read(b); err != nil {
			return "", fmt.Errorf("proxy id: %w", err)
		}
		return hex.EncodeToString(b), nil
	}
	if dataDir == "" {
		return fresh()
	}
	p := filepath.Join(dataDir, "proxy-id")
	if b, err := os.ReadFile(p); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b)), nil
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("proxy id: %w", err)
	}
	id, err := fresh()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", fmt.Errorf("proxy id: %w", err)
	}
	if err := os.WriteFile(p, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("proxy id: %w", err)
	}
	return id, nil
}

// heartbeat writes this proxy's row every interval until ctx ends, and
// counts the proxies seen down meanwhile (for metrics).
func (s *Server) heartbeat(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	host, _ := os.Hostname()
	h, sh, a := s.Addrs()
	logged := time.Time{}
	for {
		var pending int64
		if s.healer != nil {
			for _, n := range s.healer.Status().HintsPending {
				pending += int64(n)
			}
		}
		bctx, cancel := context.WithTimeout(ctx, every)
		err := s.state.Heartbeat(bctx, clusterstate.Proxy{ID: s.proxyID, Host: host, Addresses: []string{h, sh, a},
			Version: buildVersion(), Started: s.started, Interval: every, HintsPending: pending})
		if err == nil {
			var ps []clusterstate.ProxyStatus
			if ps, err = s.state.Proxies(bctx); err == nil {
				s.proxiesDown.Store(int64(countDown(ps)))
			}
		}
		cancel()
		if err != nil && ctx.Err() == nil && time.Since(logged) > time.Minute {
			logged = time.Now()
			s.log.Warn("shared state: heartbeat failed; other proxies will show this one down", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func countDown(ps []clusterstate.ProxyStatus) int {
	n := 0
	for _, p := range ps {
		if p.Down {
			n++
		}
	}
	return n
}

// ClusterStatus is /status's view of the shared state: what every node is
// owed there, and every proxy by its heartbeat.
type ClusterStatus struct {
	// Shared: hints and known users are in the shared state (false: each
	// proxy keeps its own).
	Shared       bool             `json:"shared"`
	ProxyID      string           `json:"proxy_id,omitempty"`
	HintsPending map[string]int64 `json:"hints_pending,omitempty"`
	FullScanOwed []string         `json:"full_scan_owed,omitempty"`
	Users        int64            `json:"users,omitempty"`
	Proxies      []ProxyView      `json:"proxies,omitempty"`
	Error        string           `json:"error,omitempty"`
}

// ProxyView is one proxy's heartbeat; Self marks the one answering.
type ProxyView struct {
	clusterstate.ProxyStatus
	Self bool `json:"self,omitempty"`
}

func (s *Server) clusterStatus(ctx context.Context) *ClusterStatus {
	st := &ClusterStatus{}
	if s.state == nil {
		return st
	}
	st.Shared, st.ProxyID = true, s.proxyID
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var errs []error
	nodes, err := s.state.Nodes(ctx)
	errs = append(errs, err)
	for n, ns := range nodes {
		if ns.Hints > 0 {
			if st.HintsPending == nil {
				st.HintsPending = map[string]int64{}
			}
			st.HintsPending[n] = ns.Hints
		}
		if !ns.FullScanSince.IsZero() {
			st.FullScanOwed = append(st.FullScanOwed, n)
		}
	}
	slices.Sort(st.FullScanOwed)
	st.Users, err = s.state.UserCount(ctx)
	errs = append(errs, err)
	ps, err := s.state.Proxies(ctx)
	errs = append(errs, err)
	for _, p := range ps {
		st.Proxies = append(st.Proxies, ProxyView{ProxyStatus: p, Self: p.ID == s.proxyID})
	}
	if err := errors.Join(errs...); err != nil {
		st.Error = err.Error()
	}
	return st
}

// buildVersion is this binary's module version and commit, short.
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, kv := range bi.Settings {
		if kv.Key == "vcs.revision" && len(kv.Value) >= 12 {
			v += " " + kv.Value[:12]
		}
	}
	return v
}
