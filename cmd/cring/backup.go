package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/charmbracelet/lipgloss"
	"github.com/cring-dev/cring/internal/backup"
	"github.com/cring-dev/cring/internal/backup/restore"
	"github.com/cring-dev/cring/internal/config"
	"github.com/cring-dev/cring/internal/nodetls"
	"github.com/cring-dev/cring/internal/token"
	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// backupStyles is the look of the backup and restore commands. lipgloss
// drops the colors when stdout is not a terminal.
type backupStyles struct {
	ok, warn, err, dim, head lipgloss.Style
}

func newBackupStyles() backupStyles {
	return backupStyles{
		ok:   lipgloss.NewStyle().Foreground(lipgloss.Color("42")).Bold(true),
		warn: lipgloss.NewStyle().Foreground(lipgloss.Color("214")).Bold(true),
		err:  lipgloss.NewStyle().Foreground(lipgloss.Color("203")).Bold(true),
		dim:  lipgloss.NewStyle().Faint(true),
		head: lipgloss.NewStyle().Bold(true),
	}
}

func newBackupCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "backup",
		Short: "Prepare and check the backup target",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newBackupInitCmd(), newBackupVerifyCmd())
	return cmd
}

// backupTargetFlags name the backup target, as `cring serve` does.
type backupTargetFlags struct {
	url, bucket, zone string
	pathStyle         bool
}

func (f *backupTargetFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&f.url, "backup-url", "", "backup target: S3 endpoint URL (http(s)://host:port) or file:///dir")
	fl.StringVar(&f.bucket, "backup-bucket", "", "S3 backup bucket")
	fl.StringVar(&f.zone, "backup-zone", config.DefaultBackupZone, "S3 backup region")
	fl.BoolVar(&f.pathStyle, "backup-path-style", false, "path-style S3 requests (http://host/bucket/key); automatic for IP addresses and localhost")
}

func (f *backupTargetFlags) config() (backup.Config, error) {
	if f.url == "" {
		return backup.Config{}, errors.New("--backup-url is required (file:///dir or http(s)://host:port; credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
	}
	return backup.Config{URL: f.url, Bucket: f.bucket, Region: f.zone, PathStyle: f.pathStyle}, nil
}

// open connects to the target; a target that can't be used is bad input.
func (f *backupTargetFlags) open(ctx context.Context) (backup.Target, error) {
	cfg, err := f.config()
	if err != nil {
		return nil, usageError{err}
	}
	t, err := backup.Open(ctx, cfg)
	if err != nil {
		return nil, usageError{err}
	}
	return t, nil
}

// backupClusterFlags say how to act for users on the cluster.
type backupClusterFlags struct {
	serverKey string
	publicURL string
	url       string
	ca        string
}

func (f *backupClusterFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&f.serverKey, "server-key", "", "the cluster's shared server private key (charm_server_ed25519), to sign tokens")
	fl.StringVar(&f.publicURL, "public-url", "", "the issuer the nodes expect in tokens: their CHARM_SERVER_PUBLIC_URL (default: asked from --url)")
	fl.StringVar(&f.url, "url", "http://127.0.0.1:35354", "the cluster's HTTP API: the proxy (or a node)")
	fl.StringVar(&f.ca, "ca", "", "PEM CA certificate(s) trusted for an https --url, besides the system's roots (a private CA's)")
}

func (f *backupClusterFlags) cluster(ctx context.Context) (*restore.Cluster, error) {
	if f.serverKey == "" {
		return nil, usageError{errors.New("--server-key is required: the charm_server_ed25519 every node shares")}
	}
	signer, err := token.LoadSigner(f.serverKey)
	if err != nil {
		return nil, usageError{err}
	}
	tlsConf, err := nodetls.ClientConfig(f.ca)
	if err != nil {
		return nil, usageError{fmt.Errorf("--ca: %w", err)}
	}
	issuer := f.publicURL
	if issuer == "" {
		if issuer, err = restore.DiscoverIssuer(ctx, f.url, tlsConf); err != nil {
			return nil, fmt.Errorf("%w (or give --public-url)", err)
		}
	}
	c, err := restore.NewCluster(f.url, issuer, signer, tlsConf)
	if err != nil {
		return nil, usageError{err}
	}
	return c, nil
}

func backupSignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func newBackupInitCmd() *cobra.Command {
	var tf backupTargetFlags
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create the backup bucket and enable versioning",
		Long: `Create the backup bucket (or directory) if it is missing and turn on bucket
versioning, so overwritten and deleted files keep their history and
"cring restore --as-of" can go back in time. Safe to run again.
Credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; every flag
can also be set with CRING_<FLAG>.`,
		Example: `  cring backup init --backup-url https://s3.example.com --backup-bucket charm-backups
  cring backup init --backup-url file:///var/backups/cring`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := applyEnv(cmd.Flags()); err != nil {
				return usageError{err}
			}
			ctx, stop := backupSignalContext()
			defer stop()
			t, err := tf.open(ctx)
			if err != nil {
				return err
			}
			w, st := cmd.OutOrStdout(), newBackupStyles()
			fmt.Fprintf(w, "%s %s is ready\n", st.ok.Render("✓"), t)
			err = t.EnableVersioning(ctx)
			switch {
			case errors.Is(err, backup.ErrVersioningUnsupported):
				fmt.Fprintf(w, "%s no versioning: %s\n", st.warn.Render("!"), err)
			case err != nil:
				return err
			default:
				fmt.Fprintf(w, "%s versioning enabled: overwrites and deletes keep history (restore --as-of)\n", st.ok.Render("✓"))
			}
			return nil
		},
	}
	tf.register(cmd.Flags())
	return cmd
}

type backupVerifyFlags struct {
	target   backupTargetFlags
	cluster  backupClusterFlags
	users    []string
	quick    bool
	parallel int
}

func newBackupVerifyCmd() *cobra.Command {
	var f backupVerifyFlags
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Compare the backup with the cluster and report differences",
		Long: `Compare the backup with what the cluster serves, user by user: files missing
from either side and files whose bytes differ (sha256 of both). Exits 1 when
there are differences. Without --user it checks every user the backup holds.
It reads the cluster through its HTTP API with tokens signed by --server-key.`,
		Example: `  cring backup verify --backup-url http://127.0.0.1:9000 --backup-bucket charm \
    --server-key /var/lib/charm/data/.ssh/charm_server_ed25519 --url http://127.0.0.1:35354`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := applyEnv(cmd.Flags()); err != nil {
				return usageError{err}
			}
			if f.parallel < 1 {
				return usageError{fmt.Errorf("--parallel must be at least 1, got %d", f.parallel)}
			}
			ctx, stop := backupSignalContext()
			defer stop()
			t, err := f.target.open(ctx)
			if err != nil {
				return err
			}
			c, err := f.cluster.cluster(ctx)
			if err != nil {
				return err
			}
			start := time.Now()
			res, err := restore.Verify(ctx, restore.VerifyOptions{Target: t, Cluster: c, Users: f.users, Quick: f.quick, Parallel: f.parallel})
			if err != nil {
				return err
			}
			w, st := cmd.OutOrStdout(), newBackupStyles()
			printBackupDifferences(w, st, res.Differences)
			if len(res.Differences) > 0 {
				fmt.Fprintf(w, "%s %s\n", st.err.Render("✗"), res.Summary())
				return fmt.Errorf("%s between backup and cluster", restorePlural(len(res.Differences), "difference"))
			}
			fmt.Fprintf(w, "%s %s (%s compared in %s)\n", st.ok.Render("✓"), res.Summary(),
				humanize.IBytes(uint64(res.Bytes)), time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	fl := cmd.Flags()
	f.target.register(fl)
	f.cluster.register(fl)
	fl.StringArrayVar(&f.users, "user", nil, "charm ID to check (repeatable; default every user in the backup)")
	fl.BoolVar(&f.quick, "quick", false, "compare sizes only, without reading the bytes")
	fl.IntVar(&f.parallel, "parallel", 4, "files compared at once")
	return cmd
}

func printBackupDifferences(w io.Writer, st backupStyles, diffs []restore.Difference) {
	if len(diffs) == 0 {
		return
	}
	size := func(n int64) string {
		if n < 0 {
			return "-"
		}
		return humanize.IBytes(uint64(n))
	}
	fmt.Fprintf(w, "%s\n", st.head.Render(fmt.Sprintf("%-21s %10s %10s  %s", "DIFFERENCE", "BACKUP", "CLUSTER", "KEY")))
	for _, d := range diffs {
		fmt.Fprintf(w, "%-21s %10s %10s  %s\n", d.Kind, size(d.BackupSize), size(d.ClusterSize), st.dim.Render(d.Key))
	}
}
