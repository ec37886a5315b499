package serve

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cring-dev/cring/internal/cluster"
	jose "gopkg.in/square/go-jose.v2"
)

// checkServerKey asks every node for its key set (at once, each bounded by
// getJSON's timeout) and fails when a node that answered does not publish
// the --server-key's public half: the healer's tokens would get 401 there,
// forever. checked is false when no node answered.
func (s *Server) checkServerKey(ctx context.Context, nodes []cluster.Node) (checked bool, err error) {
	var (
		mu      sync.Mutex
		wg      sync.WaitGroup
		foreign []string
	)
	for _, n := range nodes {
		wg.Go(func() {
			set := &jose.JSONWebKeySet{}
			if err := s.getJSON(ctx, n.URL+"/v1/public/jwks", set); err != nil {
				return // unreachable: checked later
			}
			mu.Lock()
			defer mu.Unlock()
			checked = true
			if !s.signer.In(set) {
				foreign = append(foreign, n.Name)
			}
		})
	}
	wg.Wait()
	if len(foreign) > 0 {
		slices.Sort(foreign)
		return true, fmt.Errorf("--server-key %s is not the nodes' key: %s publish another key set, so every repair would be refused (401); "+
			"give the charm_server_ed25519 the nodes share (in their data dir's .ssh/)", s.cfg.ServerKey, strings.Join(foreign, ", "))
	}
	return checked, nil
}

// watchServerKey checks the server key once a node answers, when none did
// at start; a wrong key then stops the proxy as it would have at start.
func (s *Server) watchServerKey(ctx context.Context, errc chan<- error) {
	s.log.Warn("no node answered for its key set: --server-key is checked once one does")
	tick := time.NewTicker(max(s.cfg.HealthInterval, 100*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		checked, err := s.checkServerKey(ctx, s.gen.Load().cfg.Nodes)
		if err != nil {
			select {
			case errc <- err:
			case <-ctx.Done():
			}
			return
		}
		if checked {
			return
		}
	}
}
