// Command cring is high availability and backups for self-hosted Charm.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// usageError is bad input from the operator: one line on stderr, exit 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }

func main() {
	root := &cobra.Command{
		Use:           "cring",
		Short:         "High availability and backups for self-hosted Charm",
		Version:       buildVersion(),
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetVersionTemplate("cring {{.Version}}\n")
	root.AddCommand(newServeCmd(), newDevCmd(), newClusterCmd(), newRepairCmd(), newStatusCmd(), newStatsCmd(), newTopCmd(), newNodeCmd(), newAccountsCmd(), newBackupCmd(), newRestoreCmd(), newBenchCmd(), newChaosCmd(), newProbeCmd())
	root.AddCommand(newManCmd(root))
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "cring:", err)
		var ue usageError
		if errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command") {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// envName is a flag's CRING_* environment variable.
func envName(flag string) string {
	return "CRING_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// applyEnv sets every flag not given on the command line from its CRING_*
// variable, and reports which flags were set either way. List flags take
// comma-separated values.
func applyEnv(fs *pflag.FlagSet) (map[string]bool, error) {
	set := map[string]bool{}
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil {
			return
		}
		if f.Changed {
			set[f.Name] = true
			return
		}
		v, ok := os.LookupEnv(envName(f.Name))
		if !ok || v == "" {
			return
		}
		vals := []string{v}
		if f.Value.Type() == "stringArray" {
			vals = strings.Split(v, ",")
			for k := range vals {
				vals[k] = strings.TrimSpace(vals[k])
			}
		}
		// Replace, not append: this runs again on every config reload, and
		// a list set twice would name every node twice.
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			if serr := sv.Replace(vals); serr != nil {
				err = fmt.Errorf("%s=%q: %w", envName(f.Name), v, serr)
				return
			}
			set[f.Name] = true
			return
		}
		for _, x := range vals {
			if serr := f.Value.Set(strings.TrimSpace(x)); serr != nil {
				err = fmt.Errorf("%s=%q: %w", envName(f.Name), v, serr)
				return
			}
		}
		set[f.Name] = true
	})
	return set, err
}
