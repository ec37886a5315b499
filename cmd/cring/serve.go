package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cring-dev/cring/internal/config"
	"github.com/cring-dev/cring/internal/serve"
	"github.com/spf13/cobra"
)

func newServeCmd() *cobra.Command {
	cmd, _ := newServe()
	return cmd
}

func newServe() (*cobra.Command, *config.Flags) {
	var settings *config.Flags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the proxy in front of your Charm servers",
		Long: `Run the proxy: it listens like a Charm server (HTTP 35354, SSH 35353) and
replicates every file to N of the nodes behind it, acknowledging a write only
once W of them stored it. Every flag can also be set with CRING_<FLAG>, e.g.
CRING_HOST=http://a:35354,http://b:35354.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := serveConfig(settings, os.LookupEnv)
			if err != nil {
				return usageError{err}
			}
			log := newLogger(cfg.LogFormat, cfg.Debug)
			srv, err := serve.New(cfg, log)
			if err != nil {
				return usageError{err}
			}
			if err := srv.Listen(); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			go watch(ctx, cfg.File, func() (*config.Config, error) { return serveConfig(settings, os.LookupEnv) }, srv, log)
			return srv.Serve(ctx)
		},
	}
	settings = config.BindAll(cmd.Flags())
	return cmd, settings
}

// serveConfig is the proxy's configuration from its flags, CRING_*
// variables and cring.yaml (config.Flags.Resolve), checked; every reload
// calls it again and gets the same answer unless the file changed.
func serveConfig(settings *config.Flags, getenv func(string) (string, bool)) (*config.Config, error) {
	cfg, err := settings.Resolve(getenv)
	if err != nil {
		return nil, err
	}
	if cfg.DataDir == "" {
		cfg.DataDir = defaultDataDir("serve")
	}
	if err := cfg.Normalize(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func newLogger(format string, debug bool) *slog.Logger {
	lvl := slog.LevelInfo
	if debug {
		lvl = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: lvl}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// watch reloads the configuration on SIGHUP and when the config file at
// path changes.
func watch(ctx context.Context, path string, load func() (*config.Config, error), srv *serve.Server, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	last := modTime(path)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			log.Info("SIGHUP: reloading configuration")
		case <-tick.C:
			m := modTime(path)
			if m.Equal(last) {
				continue
			}
			last = m
			log.Info("config file changed: reloading", "path", path)
		}
		cfg, err := load()
		if err == nil {
			err = srv.Reload(cfg)
		}
		if err != nil {
			log.Error("reload refused; keeping the running configuration", "err", err)
		}
	}
}

func modTime(path string) time.Time {
	if path == "" {
		return time.Time{}
	}
	st, err := os.Stat(path)
	if err != nil {
		return time.Time{}
	}
	return st.ModTime()
}
