package e2e

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	charm "github.com/charmbracelet/charm/proto"
	"github.com/cring-dev/cring/internal/token"
)

// TestReadOnlyRootListing: with every node down, the user's root listing
// comes from the backup too (it answered 503 "invalid key"), for charm's
// client library and for a plain HTTP client with a token, and cring's own
// files never show in it.
func TestReadOnlyRootListing(t *testing.T) {
	bt := fileBackup(t, "sync")
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2, backup: bt.cfg})
	u := tc.newUser(t)
	u.put(t, "top.txt", []byte("top"))
	u.put(t, "docs/a", []byte("a"))
	before := u.ls(t, "")
	slices.Sort(before)
	if !slices.Equal(before, []string{"docs", "top.txt"}) {
		t.Fatalf("root listing with the nodes up = %v", before)
	}
	for i := range tc.dc.Nodes {
		tc.stop(i)
	}
	tc.waitReady(0)

	got := u.ls(t, "")
	slices.Sort(got)
	if !slices.Equal(got, before) {
		t.Fatalf("root listing from the backup = %v, want %v", got, before)
	}

	signer, err := token.LoadSigner(tc.dc.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	jwt, err := signer.Sign(u.id, tc.dc.PublicURL, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+tc.httpAddr+"/v1/fs/", nil)
	req.Header.Set("Authorization", "Bearer "+jwt)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var fi charm.FileInfo
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Cring-Source") != "backup" {
		t.Fatalf("GET /v1/fs/ with every node down: %s, source %q", resp.Status, resp.Header.Get("X-Cring-Source"))
	}
	if err := json.NewDecoder(resp.Body).Decode(&fi); err != nil || !fi.IsDir || len(fi.Files) != 2 {
		t.Fatalf("root from the backup: %+v %v", fi, err)
	}
	for _, f := range fi.Files {
		if f.Name == ".cring" {
			t.Fatal("the root listing shows .cring")
		}
	}
}
