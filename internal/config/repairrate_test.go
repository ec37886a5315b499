package config

import (
	"os"
	"path/filepath"
	"testing"
)

// TestRepairByteRate: repair-byte-rate is read from cring.yaml, and absent
// it is the default, so hint replay is bounded by bytes as well as by count.
func TestRepairByteRate(t *testing.T) {
	for _, tt := range []struct {
		name, yaml string
		want       int64
	}{
		{"default", "", DefaultRepairByteRate},
		{"set", "repair-byte-rate: 1048576\n", 1 << 20},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "cring.yaml")
			if err := os.WriteFile(p, []byte(tt.yaml+"nodes:\n  - {name: one, url: \"http://10.0.0.1:35354\"}\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := Load(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Normalize(); err != nil {
				t.Fatal(err)
			}
			if c.RepairByteRate != tt.want || c.RepairRate != DefaultRepairRate {
				t.Fatalf("repair-byte-rate %d, repair-rate %g; want %d, %d", c.RepairByteRate, c.RepairRate, tt.want, DefaultRepairRate)
			}
		})
	}
}
