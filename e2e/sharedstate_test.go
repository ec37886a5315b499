package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/charmbracelet/keygen"
	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/pgtest"
	"github.com/cring-dev/cring/internal/serve"
	"github.com/cring-dev/cring/internal/testwait"
	"github.com/cring-dev/cring/internal/token"
)

// TestSharedStateProxyLostForGood (issue 16, items 1 and 5): two `cring
// serve` processes, A and B, each with its own data dir and both with
// state: on one PostgreSQL, in front of three stock nodes; scans every
// hour, so only hints can repair in time. Node3 is stopped, writes go
// through A (A owes node3 hints, which it publishes), A is killed (-9) for
// good and its data dir removed, node3 returns: B brings every write A
// acknowledged to 3 copies without a scan, and shows A down in /status and
// `cring status`. A proxy C started afterwards, which never served a
// request, scans the user.
func TestSharedStateProxyLostForGood(t *testing.T) {
	bin := cringBinary(t)
	pgURL := pgtest.Start(t)
	dc, _, _, _ := localNodes(t, 3)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "cring.yaml")
	writeFile(t, cfgPath, balancerCringYAML(dc))
	const adminToken = "shared-state-test-admin-token"

	start := func(name string) *lbProxy {
		t.Helper()
		ports, err := devcluster.FreePorts("127.0.0.1", 3)
		if err != nil {
			t.Fatal(err)
		}
		p := &lbProxy{
			Name:    name,
			HTTP:    fmt.Sprintf("127.0.0.1:%d", ports[0]),
			SSH:     fmt.Sprintf("127.0.0.1:%d", ports[1]),
			Admin:   fmt.Sprintf("127.0.0.1:%d", ports[2]),
			dataDir: filepath.Join(dir, name+"-data"),
		}
		cmd := exec.Command(bin, "serve", "--config", cfgPath,
			"--address", p.HTTP, "--ssh-proxy-address", p.SSH, "--admin-address", p.Admin, "--admin-token", adminToken,
			"--data-dir", p.dataDir, "--server-key", dc.KeyPath, "--state", pgURL,
			// Scans hourly (the first 30 s after start): hints alone must
			// bring node3 back. No scrub either.
			"--scan-interval", "1h", "--scrub-interval", "0", "--health-interval", "500ms")
		cmd.Env = envWithout("CRING_", "CHARM_")
		p.kill = ciRun(t, name, cmd, "http://"+p.Admin+"/healthz")
		return p
	}
	a, b := start("A"), start("B")
	status := func(p *lbProxy) *sharedStatus {
		t.Helper()
		st, err := fetchSharedStatus(p.Admin, adminToken)
		if err != nil {
			t.Fatalf("%s /status: %v", p.Name, err)
		}
		return st
	}
	idOf := func(p *lbProxy) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(p.dataDir, "proxy-id"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	aID := idOf(a)
	testwait.For(t, 20*time.Second, "B seeing A's and its own heartbeat", func() bool {
		st := status(b)
		return len(st.Cluster.Proxies) == 2 && !slices.ContainsFunc(st.Cluster.Proxies, func(p serve.ProxyView) bool { return p.Down })
	})

	kp, err := keygen.New(filepath.Join(t.TempDir(), "user"), keygen.WithKeyType(keygen.Ed25519))
	if err != nil {
		t.Fatal(err)
	}
	id, err := dc.SeedUser(kp.RawAuthorizedKey())
	if err != nil {
		t.Fatal(err)
	}
	signer, err := token.LoadSigner(dc.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	jwt, err := signer.Sign(id, dc.PublicURL, time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	if err := dc.Stop(dc.Nodes[2]); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, 20*time.Second, "A seeing node3 down", func() bool { return ciHealthy(a.Admin) == 2 })
	var keys []lbKey
	for k := range 30 {
		size := 1 + k*997%4096
		if k%8 == 0 {
			size = 96 << 10 // streamed, with an intent record
		}
		data := make([]byte, size)
		_, _ = rand.NewChaCha8([32]byte{byte(k), 16}).Read(data)
		name := fmt.Sprintf("shared/%d/f%02d", k%3, k)
		if err := lbPost(a.HTTP, jwt, "", name, data); err != nil {
			t.Fatalf("upload %s through A: %v", name, err)
		}
		keys = append(keys, lbKey{label: name, path: name, want: data, via: "A"})
	}
	acked := time.Now()
	// Moments after the acks, A's hints are in the store and gone from its
	// own log: that window is what a proxy dying at once would cost.
	testwait.For(t, 20*time.Second, "A's hints for node3 published", func() bool {
		return status(a).Heal.HintsPending["node3"] == 0 && status(b).Cluster.HintsPending["node3"] >= int64(len(keys))
	})
	published := time.Since(acked)
	pending := status(b).Cluster.HintsPending["node3"]

	// A's machine is lost.
	a.kill()
	if err := os.RemoveAll(a.dataDir); err != nil {
		t.Fatal(err)
	}
	// B's first scan comes 30 s after its start, whatever the interval:
	// let it pass (node3 is down: it can't repair node3) so that no scan
	// runs once node3 is back.
	testwait.For(t, 60*time.Second, "B's first scan, with node3 down", func() bool { return status(b).Heal.LastScan != nil })

	if err := dc.Start(t.Context(), dc.Nodes[2]); err != nil {
		t.Fatal(err)
	}
	node3Up := time.Now()
	left := slices.Clone(keys)
	testwait.For(t, 30*time.Second, "every write A acknowledged on all 3 nodes, by B", func() bool {
		left = slices.DeleteFunc(left, func(k lbKey) bool { return k.replicated(dc, id) })
		return len(left) == 0
	})
	replayed := time.Since(node3Up)
	st := status(b)
	if st.Heal.LastScan.Started.After(node3Up) {
		t.Fatalf("B scanned after node3 returned (%s): the hints did not do it alone", st.Heal.LastScan.Started)
	}
	testwait.For(t, 10*time.Second, "no hint left in the store", func() bool { return len(status(b).Cluster.HintsPending) == 0 })
	t.Logf("A: %d uploads acknowledged with node3 down, %d hints in the store %s after the last ack (polled); B replayed them %s after node3 returned, claimed %d batches",
		len(keys), pending, published.Round(time.Millisecond), replayed.Round(time.Millisecond), st.Heal.Totals["hints_claimed"])

	// B shows A down once three heartbeats (5 s each) are missing.
	var seenA serve.ProxyView
	testwait.For(t, 30*time.Second, "B showing A down", func() bool {
		for _, p := range status(b).Cluster.Proxies {
			if p.ID == aID {
				seenA = p
				return p.Down
			}
		}
		return false
	})
	out, err := exec.Command(bin, "status", "--admin", b.Admin, "--admin-token", adminToken).CombinedOutput()
	if err != nil {
		t.Fatalf("cring status: %v\n%s", err, out)
	}
	var line string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "proxy "+aID) {
			line = l
		}
	}
	if !strings.Contains(line, "down") || !strings.Contains(string(out), "1 down") {
		t.Fatalf("cring status on B does not show A (%s) down:\n%s", aID, out)
	}
	t.Logf("cring status on B: %s (A last seen %s ago)", strings.TrimSpace(line), seenA.Age)
	testwait.For(t, 15*time.Second, "B's metrics counting A down", func() bool {
		_, m := adminGet(t, b.Admin, "/metrics", adminToken)
		return strings.Contains(m, "\ncring_proxies_down 1\n") && strings.Contains(m, "\ncring_state_hints_pending 0\n")
	})

	// A proxy added later scans every user without being told of them.
	c := start("C")
	testwait.For(t, 10*time.Second, "C counting the user", func() bool { return status(c).Heal.Users == 1 })
	testwait.For(t, 60*time.Second, "C's first scan walking the user", func() bool {
		r := status(c).Heal.LastScan
		return r != nil && r.Users == 1 && slices.ContainsFunc(r.UserUsage, func(u userUsage) bool { return u.User == id })
	})
	// So does cring repair, with the proxies' config and no data dir.
	repair := exec.Command(bin, "repair", "--config", cfgPath, "--server-key", dc.KeyPath, "--state", pgURL, "--dry-run", "--json")
	repair.Env = envWithout("CRING_", "CHARM_")
	rout, err := repair.Output()
	if err != nil {
		t.Fatalf("cring repair over the shared state's users: %v\n%s", err, rout)
	}
	var rep struct {
		Users int `json:"users"`
		Keys  int `json:"keys"`
	}
	if err := json.Unmarshal(rout, &rep); err != nil || rep.Users != 1 || rep.Keys < len(keys) {
		t.Fatalf("cring repair: %v %+v, want the user and its %d files", err, rep, len(keys))
	}
}

// sharedStatus is what this test reads of /status.
type sharedStatus struct {
	Heal struct {
		HintsPending map[string]int    `json:"hints_pending"`
		Users        int               `json:"users"`
		Totals       map[string]uint64 `json:"totals"`
		LastScan     *struct {
			Started   time.Time   `json:"started"`
			Users     int         `json:"users"`
			UserUsage []userUsage `json:"users_by_size"`
		} `json:"last_scan"`
	} `json:"heal"`
	Cluster serve.ClusterStatus `json:"cluster"`
}

type userUsage struct {
	User string `json:"user"`
}

func fetchSharedStatus(admin, adminToken string) (*sharedStatus, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+admin+"/status", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var st sharedStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	return &st, nil
}
