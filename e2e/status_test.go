package e2e

import (
	"encoding/json"
	"net/http"
	"regexp"
	"testing"
)

// TestStatusKeys: every key of /status is snake_case, whichever part of the
// proxy reports it (health, healer, backup queue). Map keys that are node
// names ("node1") fit the same pattern.
func TestStatusKeys(t *testing.T) {
	bt := fileBackup(t, "async")
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2, heal: true, backup: bt.cfg})
	u := tc.newUser(t)
	u.put(t, "k", []byte("v"))
	resp, err := http.Get("http://" + tc.admin + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	for _, section := range []string{"nodes", "heal", "backup"} {
		if _, ok := st[section]; !ok {
			t.Fatalf("/status lacks %q: %v", section, st)
		}
	}
	snake := regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if !snake.MatchString(k) {
					t.Errorf("/status key %s.%s is not snake_case", path, k)
				}
				walk(path+"."+k, x)
			}
		case []any:
			for _, x := range v {
				walk(path+"[]", x)
			}
		}
	}
	walk("", st)
}
