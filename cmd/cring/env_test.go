package main

import (
	"slices"
	"testing"

	"github.com/spf13/pflag"
)

// TestApplyEnvIdempotent: CRING_* lists are applied again on every reload;
// they must replace the flag's value, not append to it (with CRING_HOST=a,b
// every reload was refused: "duplicate node name").
func TestApplyEnvIdempotent(t *testing.T) {
	t.Setenv("CRING_HOST", "http://a:35354, http://b:35354")
	t.Setenv("CRING_REPLICAS", "2")
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	hosts := fs.StringArray("host", nil, "")
	replicas := fs.Int("replicas", 3, "")
	for reload := range 3 {
		set, err := applyEnv(fs)
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"http://a:35354", "http://b:35354"}; !slices.Equal(*hosts, want) {
			t.Fatalf("after %d applications: hosts %v, want %v", reload+1, *hosts, want)
		}
		if *replicas != 2 || !set["host"] || !set["replicas"] {
			t.Fatalf("replicas %d, set %v", *replicas, set)
		}
	}
}
