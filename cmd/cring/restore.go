package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/charmbracelet/bubbles/progress"
	"github.com/cring-dev/cring/internal/backup"
	"github.com/cring-dev/cring/internal/backup/restore"
	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

type restoreFlags struct {
	target   backupTargetFlags
	cluster  backupClusterFlags
	user     string
	prefix   string
	all      bool
	asOf     string
	dryRun   bool
	parallel int
}

func newRestoreCmd() *cobra.Command {
	var f restoreFlags
	cmd := &cobra.Command{
		Use:   "restore",
		Short: "Put files back into the cluster from the backup",
		Long: `Put files back into the cluster from the backup: one user (--user), a path
(--prefix), or everything (--all), optionally as they were at a time
(--as-of, needs a versioned bucket: cring backup init). It writes through the
cluster's normal HTTP API (--url, the proxy) with short-lived tokens signed
by the cluster's server key, so it works on stock nodes and on a fresh empty
cluster whose accounts exist. Running it again writes the same bytes again.
--dry-run lists what would be restored and changes nothing.
Every flag can also be set with CRING_<FLAG>.`,
		Example: `  cring restore --all --backup-url http://127.0.0.1:9000 --backup-bucket charm \
    --server-key /var/lib/charm/data/.ssh/charm_server_ed25519
  cring restore --user 6f1c…-charm-id --as-of 2025-01-31T12:00:00Z --dry-run \
    --backup-url http://127.0.0.1:9000 --backup-bucket charm`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runRestore(cmd, &f) },
	}
	fl := cmd.Flags()
	f.target.register(fl)
	f.cluster.register(fl)
	fl.StringVar(&f.user, "user", "", "restore one user: their charm ID")
	fl.StringVar(&f.prefix, "prefix", "", "restore one path and everything under it (relative to --user, else <charmID>/<path>)")
	fl.BoolVar(&f.all, "all", false, "restore every user")
	fl.StringVar(&f.asOf, "as-of", "", "restore the files as they were at this time (RFC 3339, e.g. 2025-01-31T12:00:00Z)")
	fl.BoolVar(&f.dryRun, "dry-run", false, "list what would be restored, change nothing")
	fl.IntVar(&f.parallel, "parallel", 4, "files restored at once")
	return cmd
}

func (f *restoreFlags) validate() (restore.Scope, time.Time, error) {
	var at time.Time
	switch {
	case f.all && (f.user != "" || f.prefix != ""):
		return restore.Scope{}, at, errors.New("--all restores everything: drop --user and --prefix, or --all")
	case !f.all && f.user == "" && f.prefix == "":
		return restore.Scope{}, at, errors.New("say what to restore: --user CHARMID, --prefix PATH, or --all")
	case f.parallel < 1:
		return restore.Scope{}, at, fmt.Errorf("--parallel must be at least 1, got %d", f.parallel)
	case strings.Contains(f.user, "/"):
		return restore.Scope{}, at, fmt.Errorf("--user %q: want a charm ID (use --prefix for a path)", f.user)
	}
	if f.prefix != "" && strings.Contains("/"+f.prefix+"/", "/../") {
		return restore.Scope{}, at, fmt.Errorf("--prefix %q: no .. allowed", f.prefix)
	}
	if f.asOf != "" {
		var err error
		if at, err = time.Parse(time.RFC3339, f.asOf); err != nil {
			return restore.Scope{}, at, fmt.Errorf("--as-of %q: want RFC 3339 like 2025-01-31T12:00:00Z", f.asOf)
		}
		if at.After(time.Now()) {
			return restore.Scope{}, at, fmt.Errorf("--as-of %s is in the future", f.asOf)
		}
	}
	return restore.Scope{User: f.user, Prefix: f.prefix}, at, nil
}

func runRestore(cmd *cobra.Command, f *restoreFlags) error {
	if _, err := applyEnv(cmd.Flags()); err != nil {
		return usageError{err}
	}
	scope, at, err := f.validate()
	if err != nil {
		return usageError{err}
	}
	ctx, stop := backupSignalContext()
	defer stop()
	t, err := f.target.open(ctx)
	if err != nil {
		return err
	}
	// Check the cluster side before reading the whole plan.
	var c *restore.Cluster
	if !f.dryRun {
		if c, err = f.cluster.cluster(ctx); err != nil {
			return err
		}
	}
	objs, err := restore.Plan(ctx, t, scope, at)
	if errors.Is(err, backup.ErrNotVersioned) || errors.Is(err, backup.ErrVersioningUnsupported) {
		return usageError{fmt.Errorf("--as-of: %w", err)}
	}
	if err != nil {
		return err
	}
	w, st := cmd.OutOrStdout(), newBackupStyles()
	var total int64
	for _, o := range objs {
		total += o.Size
	}
	when := ""
	if !at.IsZero() {
		when = " as of " + at.Format(time.RFC3339)
	}
	what := fmt.Sprintf("%s (%s) of %s from %s%s", restorePlural(len(objs), "file"), humanize.IBytes(uint64(total)), scope, t, when)
	if f.dryRun {
		fmt.Fprintf(w, "%s\n", st.head.Render("Would restore "+what))
		for _, o := range objs {
			fmt.Fprintf(w, "  %10s  %s  %s\n", humanize.IBytes(uint64(o.Size)), o.ModTime.UTC().Format(time.RFC3339), st.dim.Render(o.Key))
		}
		fmt.Fprintf(w, "%s dry run: nothing was written\n", st.warn.Render("!"))
		return nil
	}
	if len(objs) == 0 {
		fmt.Fprintf(w, "%s nothing to restore: the backup holds no files for %s%s\n", st.warn.Render("!"), scope, when)
		return nil
	}
	fmt.Fprintf(w, "%s\n", st.head.Render("Restoring "+what+" into "+f.cluster.url))
	bar := newRestoreBar(w)
	start := time.Now()
	res, err := restore.Restore(ctx, restore.Options{
		Target: t, Cluster: c, Objects: objs, Parallel: f.parallel,
		Progress: bar.update,
	})
	bar.done()
	for _, fl := range res.Failed {
		fmt.Fprintf(w, "%s %s: %v\n", st.err.Render("✗"), fl.Key, fl.Err)
	}
	if err != nil {
		return fmt.Errorf("restore interrupted after %s: %w", restorePlural(res.Files, "file"), err)
	}
	if len(res.Failed) > 0 {
		return fmt.Errorf("restore: %d of %d files failed (%s, %s restored); run it again to retry",
			len(res.Failed), len(objs), restorePlural(res.Files, "file"), humanize.IBytes(uint64(res.Bytes)))
	}
	fmt.Fprintf(w, "%s restored %s, %s in %s\n", st.ok.Render("✓"), restorePlural(res.Files, "file"),
		humanize.IBytes(uint64(res.Bytes)), time.Since(start).Round(time.Millisecond))
	return nil
}

func restorePlural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// restoreBar draws progress: a redrawn bar on a terminal, a plain line per
// tenth of the work (and for each failure) otherwise.
type restoreBar struct {
	w     io.Writer
	tty   bool
	bar   progress.Model
	mu    sync.Mutex
	last  restore.Progress
	drawn time.Time
	step  int  // tenths reported so far (plain mode)
	final bool // the 100% line is out (plain mode)
}

func newRestoreBar(w io.Writer) *restoreBar {
	f, ok := w.(*os.File)
	return &restoreBar{
		w:   w,
		tty: ok && term.IsTerminal(int(f.Fd())),
		bar: progress.New(progress.WithDefaultGradient(), progress.WithWidth(40)),
	}
}

func (b *restoreBar) fraction(p restore.Progress) float64 {
	if p.TotalBytes > 0 {
		return float64(p.Bytes) / float64(p.TotalBytes)
	}
	if p.TotalFiles > 0 {
		return float64(p.Files) / float64(p.TotalFiles)
	}
	return 1
}

func (b *restoreBar) status(p restore.Progress) string {
	return fmt.Sprintf("%d/%d files · %s/%s", p.Files, p.TotalFiles,
		humanize.IBytes(uint64(p.Bytes)), humanize.IBytes(uint64(p.TotalBytes)))
}

func (b *restoreBar) update(p restore.Progress) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.last = p
	frac := b.fraction(p)
	if b.tty {
		if time.Since(b.drawn) < 80*time.Millisecond && p.Files < p.TotalFiles {
			return
		}
		b.drawn = time.Now()
		fmt.Fprintf(b.w, "\r%s  %s\x1b[K", b.bar.ViewAs(frac), b.status(p))
		return
	}
	last := p.Files == p.TotalFiles
	if tenth := int(frac * 10); (tenth > b.step && tenth < 10) || (last && !b.final) {
		b.step, b.final = tenth, last
		fmt.Fprintf(b.w, "%3d%%  %s\n", int(frac*100), b.status(p))
	}
}

func (b *restoreBar) done() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.tty {
		fmt.Fprintf(b.w, "\r%s  %s\x1b[K\n", b.bar.ViewAs(b.fraction(b.last)), b.status(b.last))
	}
}
