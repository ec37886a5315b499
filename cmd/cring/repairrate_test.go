package main

import (
	"strings"
	"testing"
)

// TestRepairByteRateFlag: --repair-byte-rate and CRING_REPAIR_BYTE_RATE are
// read as sizes per second; a value that is none says so before anything
// starts.
func TestRepairByteRateFlag(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		env  string
	}{
		{name: "flag", args: []string{"--repair-byte-rate", "lots"}},
		{name: "env", env: "lots"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.env != "" {
				t.Setenv("CRING_REPAIR_BYTE_RATE", tt.env)
			}
			cmd := newServeCmd()
			cmd.SetArgs(append([]string{"--host", "http://127.0.0.1:1", "--data-dir", t.TempDir()}, tt.args...))
			cmd.SilenceUsage, cmd.SilenceErrors = true, true
			err := cmd.Execute()
			if err == nil || !strings.Contains(err.Error(), `--repair-byte-rate "lots"`) {
				t.Fatalf("err = %v, want one naming --repair-byte-rate", err)
			}
		})
	}
}
