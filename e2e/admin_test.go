package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/cluster"
	"github.com/cring-dev/cring/internal/config"
	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/heal"
)

const adminToken = "an-admin-token-for-the-tests"

// adminCluster is three healing nodes behind a proxy whose admin endpoint
// listens on adminHost with token ("" for none), with one user who stored
// a file and a scan that counted it.
func adminCluster(t *testing.T, adminHost, token string) (*testCluster, *user) {
	t.Helper()
	dc, httpAddr, sshAddr, _ := localNodes(t, 3)
	ports, err := devcluster.FreePorts("127.0.0.1", 1)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{
		Replicas: 3, WriteQuorum: 2, PublicURL: dc.PublicURL,
		Address: httpAddr, SSHProxyAddress: sshAddr,
		AdminAddress: fmt.Sprintf("%s:%d", adminHost, ports[0]), AdminToken: token,
		HealthInterval: 200 * time.Millisecond, ServerKey: dc.KeyPath, DataDir: t.TempDir(),
		ScanInterval: time.Hour, ScrubInterval: -1,
	}
	for _, n := range dc.Nodes {
		cfg.Nodes = append(cfg.Nodes, cluster.Node{Name: n.Name, URL: n.HTTPURL(), SSH: n.SSHAddr(), Health: n.HealthURL()})
	}
	p := serveInProcess(t, cfg)
	tc := &testCluster{t: t, dc: dc, cfg: cfg, srv: p.srv, httpAddr: p.httpAddr, sshAddr: p.sshAddr, admin: p.admin, srvStop: p.stop}
	if adminHost == "0.0.0.0" {
		tc.admin = fmt.Sprintf("127.0.0.1:%d", ports[0])
	}
	u := tc.newUser(t)
	u.put(t, "notes", []byte("who stores what is for operators"))
	if _, err := tc.srv.Healer().Scan(context.Background(), heal.ScanOptions{}); err != nil {
		t.Fatal(err)
	}
	return tc, u
}

// adminGet GETs path on the admin address with token ("" for none).
func adminGet(t *testing.T, admin, path, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+admin+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// TestAdminStatusNamesNoUser: on the default loopback admin address with no
// token, /status counts users and files but names none (its last scan's
// fixes and largest users, the scrub's position are left out), and cring
// stats says what would show them.
func TestAdminStatusNamesNoUser(t *testing.T) {
	tc, u := adminCluster(t, "127.0.0.1", "")
	st, body := adminGet(t, tc.admin, "/status", "")
	if st != http.StatusOK {
		t.Fatalf("/status: %d %s", st, body)
	}
	if strings.Contains(body, u.id) {
		t.Fatalf("/status without the admin token names the user %s:\n%s", u.id, body)
	}
	var doc struct {
		UsersShown bool `json:"users_shown"`
		Heal       struct {
			Users    int `json:"users"`
			LastScan struct {
				Users int `json:"users"`
				Keys  int `json:"keys"`
			} `json:"last_scan"`
		} `json:"heal"`
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.UsersShown || doc.Heal.Users != 1 || doc.Heal.LastScan.Users != 1 || doc.Heal.LastScan.Keys == 0 {
		t.Fatalf("aggregate /status: %+v", doc)
	}
	out, err := exec.Command(cringBinary(t), "stats", "--admin", tc.admin).CombinedOutput()
	if err != nil || strings.Contains(string(out), u.id) || !strings.Contains(string(out), "largest users: only with the admin token") {
		t.Fatalf("cring stats: %v\n%s", err, out)
	}
}

// TestAdminToken: an admin endpoint on every interface needs its token for
// everything but health and the aggregate status; with the token, /status
// names users and the CLI (cring status, cring stats) sends it from
// CRING_ADMIN_TOKEN.
func TestAdminToken(t *testing.T) {
	tc, u := adminCluster(t, "0.0.0.0", adminToken)
	for _, tt := range []struct {
		path, token string
		want        int
	}{
		{"/healthz", "", http.StatusOK},
		{"/readyz", "", http.StatusOK},
		{"/status", "", http.StatusOK},
		{"/metrics", "", http.StatusUnauthorized},
		{"/metrics", "wrong-token-of-some-length", http.StatusUnauthorized},
		{"/status", "wrong-token-of-some-length", http.StatusUnauthorized},
		{"/metrics", adminToken, http.StatusOK},
		{"/status", adminToken, http.StatusOK},
	} {
		st, body := adminGet(t, tc.admin, tt.path, tt.token)
		if st != tt.want {
			t.Errorf("GET %s with token %q: %d, want %d (%s)", tt.path, tt.token, st, tt.want, body)
		}
	}
	if _, body := adminGet(t, tc.admin, "/status", ""); strings.Contains(body, u.id) {
		t.Errorf("/status without the token names the user")
	}
	if _, body := adminGet(t, tc.admin, "/status", adminToken); !strings.Contains(body, u.id) || !strings.Contains(body, `"users_shown": true`) {
		t.Errorf("/status with the token does not name the user %s:\n%s", u.id, body)
	}
	bin := cringBinary(t)
	for _, args := range [][]string{{"stats"}, {"status", "--json"}} {
		cmd := exec.Command(bin, append(args, "--admin", tc.admin)...)
		cmd.Env = append(os.Environ(), "CRING_ADMIN_TOKEN="+adminToken)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), u.id) {
			t.Errorf("cring %s with CRING_ADMIN_TOKEN: %v\n%s", args[0], err, out)
		}
	}
	cmd := exec.Command(bin, "status", "--admin", tc.admin, "--admin-token", "wrong-token-of-some-length")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "wants its token") {
		t.Errorf("cring status with a wrong token: %v\n%s", err, out)
	}
}
