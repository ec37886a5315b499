package e2e

import (
	"os/exec"
	"testing"
)

// TestAlertRules: promtool's rule tests (testdata/alerts_test.yml) fire the
// alerts for a proxy down, parked backups, growing hints and keys under-
// replicated scan after scan when they should, and not before.
func TestAlertRules(t *testing.T) {
	cmd := exec.Command(promtool(t), "test", "rules", "alerts_test.yml")
	cmd.Dir = "testdata"
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}
