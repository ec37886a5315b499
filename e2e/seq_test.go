package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/token"
)

// TestSeqUniqueAcrossProxies: increments of one user's sequence through two
// proxies at once never hand out the same number, and each client's
// numbers only grow. Each proxy takes its own requests in turn, but the two
// interleave on the nodes (stock nodes each keep their own counter).
func TestSeqUniqueAcrossProxies(t *testing.T) {
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2})
	b := tc.startProxy(clusterOpts{nodes: 3, replicas: 3, quorum: 2}, 3, "")
	u := tc.newUser(t)
	signer, err := token.LoadSigner(tc.dc.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	jwt, err := signer.Sign(u.id, tc.cfg.PublicURL, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	increment := func(base string) (uint64, error) {
		req, err := http.NewRequest(http.MethodPost, base+"/v1/seq/counter", nil)
		if err != nil {
			return 0, err
		}
		req.Header.Set("Authorization", "bearer "+jwt)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			msg, _ := io.ReadAll(resp.Body)
			return 0, fmt.Errorf("%d %s", resp.StatusCode, msg)
		}
		var m struct {
			Seq uint64 `json:"seq"`
		}
		return m.Seq, json.NewDecoder(resp.Body).Decode(&m)
	}
	const clients, each = 6, 40
	proxies := []string{"http://" + tc.httpAddr, "http://" + b.httpAddr}
	got := make([][]uint64, clients)
	errs := make([]error, clients)
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				v, err := increment(proxies[c%2])
				if err != nil {
					errs[c] = err
					return
				}
				got[c] = append(got[c], v)
			}
		}()
	}
	wg.Wait()
	seen := map[uint64]int{}
	for c := range clients {
		if errs[c] != nil {
			t.Fatalf("client %d: %v", c, errs[c])
		}
		for k, v := range got[c] {
			if k > 0 && v <= got[c][k-1] {
				t.Fatalf("client %d: seq went from %d to %d", c, got[c][k-1], v)
			}
			if o, dup := seen[v]; dup {
				t.Fatalf("seq %d handed to client %d and client %d", v, o, c)
			}
			seen[v] = c
		}
	}
}
