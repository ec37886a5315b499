package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/cring-dev/cring/internal/top"
)

func newTopCmd() *cobra.Command {
	var (
		admin    string
		token    string
		interval time.Duration
	)
	cmd := &cobra.Command{
		Use:   "top",
		Short: "Live view of a running proxy: nodes, health, traffic, latency, errors, queues",
		Long: `Watch a running cring proxy from its admin address: every node's health,
request rate, latency (p50/p99) and errors, client traffic, quorum and replica
failures, SSH connections and failovers, and backup and hint queues.
Rates and latencies cover the last refresh interval. Keys: q quits, p pauses.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := applyEnv(cmd.Flags()); err != nil {
				return usageError{err}
			}
			if interval < 100*time.Millisecond {
				return usageError{fmt.Errorf("--interval must be at least 100ms, got %s", interval)}
			}
			client, err := top.NewClient(admin, min(max(interval, time.Second), 5*time.Second))
			if err != nil {
				return usageError{err}
			}
			client.Token = token
			if !term.IsTerminal(int(os.Stdout.Fd())) {
				return errors.New("cring top needs a terminal; scripts can read /metrics or /status on the admin address")
			}
			m := top.New(top.Options{Admin: admin, Interval: interval, Scrape: client.Scrape})
			_, err = tea.NewProgram(m, tea.WithAltScreen()).Run()
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&admin, "admin", "127.0.0.1:35356", "the proxy's admin address (host:port or URL)")
	adminTokenFlag(fl, &token)
	fl.DurationVar(&interval, "interval", time.Second, "refresh interval")
	return cmd
}
