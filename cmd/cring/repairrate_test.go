package main

import (
	"strings"
	"testing"
)

// TestRepairByteRateFlag: --repair-byte-rate and CRING_REPAIR_BYTE_RATE are
// read as sizes per second; a value that is none says so, naming where it
// came from, before anything starts.
func TestRepairByteRateFlag(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		env  string
		want string
	}{
		{name: "flag", args: []string{"--repair-byte-rate", "lots"}, want: `invalid argument "lots" for "--repair-byte-rate" flag: want a size per second like 32MiB`},
		{name: "env", env: "lots", want: `CRING_REPAIR_BYTE_RATE="lots": want a size per second like 32MiB`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.env != "" {
				t.Setenv("CRING_REPAIR_BYTE_RATE", tt.env)
			}
			cmd := newServeCmd()
			cmd.SetArgs(append([]string{"--host", "http://127.0.0.1:1", "--data-dir", t.TempDir()}, tt.args...))
			cmd.SilenceUsage, cmd.SilenceErrors = true, true
			err := cmd.Execute()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}
