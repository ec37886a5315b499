// Command cring is high availability and backups for self-hosted Charm.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/cring-dev/cring/internal/config"
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

// applyEnv sets every flag not given on the command line from its CRING_*
// variable (config.ApplyEnv), and reports which flags were set either way.
// Flags bound to config settings are left to config.Flags.Resolve.
func applyEnv(fs *pflag.FlagSet) (map[string]bool, error) {
	return config.ApplyEnv(fs, os.LookupEnv)
}
