package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/heal"
	"github.com/cring-dev/cring/internal/testwait"
)

// TestRepairAndStatusCommands: `cring repair --dry-run` reports without
// touching anything, `cring repair` fixes, `cring status` shows the proxy.
func TestRepairAndStatusCommands(t *testing.T) {
	bin := cringBinary(t)
	tc := startCluster(t, healOpts())
	u := tc.newUser(t)
	data := randBytes(t, 10<<10)
	u.put(t, "cli/f", data)
	// Acked at quorum: let the last replica land before damaging one.
	identicalOn(t, tc, u, "cli/f", []string{"node1", "node2", "node3"}, 5*time.Second)
	ep, _ := u.fs.EncryptPath("cli/f")
	if err := os.Remove(tc.dc.Nodes[0].FilePath(u.id, ep)); err != nil {
		t.Fatal(err)
	}
	args := []string{"repair", "--server-key", tc.dc.KeyPath, "--public-url", tc.cfg.PublicURL, "--user", u.id, "--json"}
	for _, n := range tc.dc.Nodes {
		args = append(args, "--host", n.HTTPURL())
	}
	run := func(extra ...string) heal.Report {
		t.Helper()
		out, err := exec.Command(bin, append(args, extra...)...).Output()
		if err != nil {
			t.Fatalf("cring repair %v: %v\n%s", extra, err, out)
		}
		var r heal.Report
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("decode report: %v\n%s", err, out)
		}
		return r
	}
	if r := run("--dry-run"); r.UnderReplicated != 1 || r.UnderReplicatedLeft != 1 || r.Repaired != 0 || len(r.Fixes) != 1 {
		t.Fatalf("dry run report %+v", r)
	}
	if len(tc.onDisk(t, u, "cli/f")) != 2 {
		t.Fatal("dry run changed the cluster")
	}
	if r := run(); r.UnderReplicated != 1 || r.UnderReplicatedLeft != 0 || r.Repaired != 1 {
		t.Fatalf("repair report %+v", r)
	}
	identicalOn(t, tc, u, "cli/f", []string{"node1", "node2", "node3"}, time.Second)
	if r := run("--deep"); r.Healthy != r.Keys {
		t.Fatalf("after repair a deep scan still finds problems: %+v", r)
	}

	out, err := exec.Command(bin, "status", "--admin", tc.admin).CombinedOutput()
	if err != nil {
		t.Fatalf("cring status: %v\n%s", err, out)
	}
	for _, want := range []string{"3/3 nodes up", "node1", "node3", "healing: 1 users known"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("cring status lacks %q:\n%s", want, out)
		}
	}
	js, err := exec.Command(bin, "status", "--admin", tc.admin, "--json").Output()
	if err != nil || !json.Valid(js) || !bytes.Contains(js, []byte(`"hints_pending"`)) {
		t.Fatalf("cring status --json: %v\n%s", err, js)
	}
	// Stats come from the proxy's last scan.
	if _, err := tc.srv.Healer().Scan(context.Background(), heal.ScanOptions{}); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(bin, "stats", "--admin", tc.admin).CombinedOutput()
	if err != nil {
		t.Fatalf("cring stats: %v\n%s", err, out)
	}
	// Largest users are named only with the admin token (TestAdminToken).
	for _, want := range []string{"NODE", "node1", "node3", "+0.0%", "largest users: only with the admin token"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("cring stats lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), u.id) {
		t.Fatalf("cring stats names a user without the admin token:\n%s", out)
	}
	js, err = exec.Command(bin, "stats", "--admin", tc.admin, "--json").Output()
	var stats struct {
		LastScan heal.Report `json:"last_scan"`
	}
	if err != nil || json.Unmarshal(js, &stats) != nil || stats.LastScan.Nodes["node2"] == nil || stats.LastScan.Nodes["node2"].Files != 1 {
		t.Fatalf("cring stats --json: %v\n%s", err, js)
	}
	// Bad input: one line, exit 2.
	cmd := exec.Command(bin, "repair", "--host", tc.dc.Nodes[0].HTTPURL())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err == nil || cmd.ProcessState.ExitCode() != 2 || !strings.Contains(stderr.String(), "--server-key is required") {
		t.Fatalf("repair without key: %v %q", err, stderr.String())
	}
}

// TestRepairHonoursDrain: `cring repair --config` places keys as the proxy
// does: a node marked drain holds no replicas, so its copies are moved off
// it (the command the README gives before removing a drained node used to
// ignore drain and report nothing left to move).
func TestRepairHonoursDrain(t *testing.T) {
	bin := cringBinary(t)
	tc := startCluster(t, clusterOpts{nodes: 4, replicas: 3, quorum: 2, heal: true})
	u := tc.newUser(t)
	u.put(t, "drain/f", randBytes(t, 4<<10))
	var holders []string
	testwait.For(t, 5*time.Second, "the condition", func() bool {
		holders = holders[:0]
		for name := range tc.onDisk(t, u, "drain/f") {
			holders = append(holders, name)
		}
		return len(holders) == 3
	})
	drained := holders[0]
	var yaml strings.Builder
	fmt.Fprintf(&yaml, "public-url: %s\nserver-key: %s\nreplicas: 3\nwrite-quorum: 2\nnodes:\n", tc.cfg.PublicURL, tc.dc.KeyPath)
	for _, n := range tc.dc.Nodes {
		fmt.Fprintf(&yaml, "  - {name: %s, url: %s, drain: %v}\n", n.Name, n.HTTPURL(), n.Name == drained)
	}
	cfgPath := filepath.Join(t.TempDir(), "cring.yaml")
	if err := os.WriteFile(cfgPath, []byte(yaml.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "repair", "--config", cfgPath, "--user", u.id, "--json").Output()
	if err != nil {
		t.Fatalf("cring repair: %v\n%s", err, out)
	}
	var r heal.Report
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("decode report: %v\n%s", err, out)
	}
	if r.Repaired != 1 || len(r.Fixes) != 1 || !slices.Contains(r.Fixes[0].Removed, drained) {
		t.Fatalf("report %+v: want the copy on the drained %s moved", r, drained)
	}
	on := tc.onDisk(t, u, "drain/f")
	if _, still := on[drained]; still || len(on) != 3 {
		t.Fatalf("after repair the file is on %v, want 3 nodes without %s", keysOf(on), drained)
	}
}

func keysOf(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
