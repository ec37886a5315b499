package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/charmbracelet/lipgloss"
	"github.com/cring-dev/cring/internal/accounts"
	"github.com/cring-dev/cring/internal/accounts/postgres"
	"github.com/cring-dev/cring/internal/node"
	"github.com/spf13/cobra"
)

func newAccountsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "accounts",
		Short: "Administer accounts: add, list and remove them (closed servers), import into PostgreSQL, merge stock nodes' databases",
	}
	cmd.AddCommand(newAccountsAddCmd(), newAccountsListCmd(), newAccountsRemoveCmd(), newAccountsImportCmd(), newAccountsSyncCmd())
	return cmd
}

func newAccountsImportCmd() *cobra.Command {
	var from, to string
	var dryRun, asJSON bool
	cmd := &cobra.Command{
		Use:   "import --from-sqlite charm_sqlite.db --to postgres://…",
		Short: "Copy a Charm server's accounts into the PostgreSQL of `cring node`s",
		Long: `Copy every account of a Charm server's sqlite (data/db/charm_sqlite.db) into
PostgreSQL: users with their charm IDs, names and creation times, public keys,
encrypt keys (same global IDs), sequences and news. Accounts already there are
kept, so running it again adds nothing. A public key or a name that belongs to
a different charm ID in PostgreSQL is a conflict: they are listed, nothing is
changed and the exit status is 2. The source is only read.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := applyEnv(cmd.Flags()); err != nil {
				return usageError{err}
			}
			if from == "" || to == "" {
				return usageError{errors.New("need --from-sqlite FILE and --to postgres://…")}
			}
			if !node.IsPostgres(to) {
				return usageError{fmt.Errorf("--to %q: want a postgres:// URL", node.Redact(to))}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Minute)
			defer cancel()
			snap, err := accounts.ReadSQLite(ctx, from)
			if err != nil {
				return usageError{err}
			}
			pg, err := postgres.Open(ctx, to, postgres.Options{})
			if err != nil {
				return err
			}
			defer pg.Close()
			ch, conflicts, err := pg.Import(ctx, from, snap, dryRun)
			rep := importReport{From: from, To: node.Redact(to), DryRun: dryRun, Changes: ch, Conflicts: conflicts}
			rep.Source.Users, rep.Source.Keys, rep.Source.EncryptKeys, rep.Source.Seqs = snap.Counts()
			rep.Source.News = len(snap.News)
			out := cmd.OutOrStdout()
			if asJSON {
				if jerr := writeIndentedJSON(out, rep); jerr != nil {
					return jerr
				}
			}
			if errors.Is(err, accounts.ErrConflicts) {
				if !asJSON {
					printConflicts(cmd.ErrOrStderr(), conflicts)
				}
				return usageError{fmt.Errorf("refusing to import %s: %s, nothing changed", from, acctPlural(len(conflicts), "conflict"))}
			}
			if err != nil {
				return err
			}
			if !asJSON {
				printImport(out, rep)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&from, "from-sqlite", "", "a Charm server's account database (data/db/charm_sqlite.db)")
	fl.StringVar(&to, "to", "", "PostgreSQL URL, as given to cring node --accounts")
	fl.BoolVar(&dryRun, "dry-run", false, "report what would be imported, change nothing")
	fl.BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

func newAccountsSyncCmd() *cobra.Command {
	var dryRun, asJSON bool
	cmd := &cobra.Command{
		Use:   "sync A.db B.db [C.db…]",
		Short: "Merge stock Charm nodes' account databases so each holds every account",
		Long: `Merge the sqlite account databases (data/db/charm_sqlite.db) of stock charm
serve nodes in place: afterwards every file holds every user, public key,
encrypt key and name, and every sequence at its highest value. Existing rows
are never altered, except unset names filled and sequences raised; running it
again changes nothing. Best run with the nodes stopped; while they run, the
files are write-locked for the duration.

It refuses to guess: a public key under two charm IDs (the same person who
first logged in through two different nodes), a name taken by two charm IDs,
or one user with two different names are listed, nothing is changed and the
exit status is 2.`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Minute)
			defer cancel()
			rep, err := accounts.Sync(ctx, args, dryRun)
			out := cmd.OutOrStdout()
			if asJSON && rep != nil {
				if jerr := writeIndentedJSON(out, rep); jerr != nil {
					return jerr
				}
			}
			if errors.Is(err, accounts.ErrConflicts) {
				if !asJSON {
					printConflicts(cmd.ErrOrStderr(), rep.Conflicts)
				}
				return usageError{fmt.Errorf("refusing to sync: %s, nothing changed", acctPlural(len(rep.Conflicts), "conflict"))}
			}
			if err != nil {
				return usageError{err}
			}
			if !asJSON {
				printSync(out, rep)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "report what would change, change nothing")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

type importReport struct {
	From   string `json:"from"`
	To     string `json:"to"`
	DryRun bool   `json:"dry_run,omitempty"`
	Source struct {
		Users       int `json:"users"`
		Keys        int `json:"keys"`
		EncryptKeys int `json:"encrypt_keys"`
		Seqs        int `json:"seqs"`
		News        int `json:"news"`
	} `json:"source"`
	Changes   accounts.Changes    `json:"imported"`
	Conflicts []accounts.Conflict `json:"conflicts,omitempty"`
}

func writeIndentedJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

var (
	acctTitle = lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Color("212"))
	acctDim   = lipgloss.NewStyle().Foreground(lipgloss.Color("245"))
	acctBad   = lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Color("196"))
)

func acctPlural(n int, what string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, what)
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func printImport(w io.Writer, r importReport) {
	verb := "imported"
	if r.DryRun {
		verb = "would import (dry run)"
	}
	fmt.Fprintln(w, acctTitle.Render(fmt.Sprintf("💍 %s → %s", r.From, r.To)))
	fmt.Fprintf(w, "  %-8s %s · %s · %s · %s · %d news\n", "source", acctPlural(r.Source.Users, "user"), acctPlural(r.Source.Keys, "key"),
		acctPlural(r.Source.EncryptKeys, "encrypt key"), acctPlural(r.Source.Seqs, "seq"), r.Source.News)
	c := r.Changes
	fmt.Fprintf(w, "  %-8s %s · %s · %s · %s · %d news", "new", acctPlural(c.Users, "user"), acctPlural(c.Keys, "key"),
		acctPlural(c.EncryptKeys, "encrypt key"), acctPlural(c.Seqs, "seq"), c.News)
	if c.UsersUpdated > 0 {
		fmt.Fprintf(w, " · %d users' unset fields filled", c.UsersUpdated)
	}
	fmt.Fprintln(w)
	if c.Total() == 0 {
		fmt.Fprintln(w, acctDim.Render("  nothing new: every account is already there"))
	} else {
		fmt.Fprintln(w, acctDim.Render("  "+verb))
	}
}

func printSync(w io.Writer, r *accounts.SyncReport) {
	title := fmt.Sprintf("💍 %d account databases merged", len(r.Files))
	if r.DryRun {
		title = fmt.Sprintf("💍 %d account databases (dry run: nothing written)", len(r.Files))
	}
	fmt.Fprintln(w, acctTitle.Render(title))
	fmt.Fprintf(w, "  %s\n", acctDim.Render(fmt.Sprintf("union: %s · %s · %s · %s", acctPlural(r.Users, "user"), acctPlural(r.Keys, "key"),
		acctPlural(r.EncryptKeys, "encrypt key"), acctPlural(r.Seqs, "seq"))))
	width := 4
	for _, f := range r.Files {
		width = max(width, len(f.Store))
	}
	fmt.Fprintln(w, acctDim.Render(fmt.Sprintf("  %-*s %8s %8s %14s %8s %14s", width, "file", "+users", "+keys", "+encrypt keys", "+seqs", "fields filled")))
	total := 0
	for _, f := range r.Files {
		fmt.Fprintf(w, "  %-*s %8d %8d %14d %8d %14d\n", width, f.Store, f.Users, f.Keys, f.EncryptKeys, f.Seqs, f.UsersUpdated)
		total += f.Total()
	}
	if total == 0 {
		fmt.Fprintln(w, acctDim.Render("  already in sync: nothing changed"))
	}
}

func printConflicts(w io.Writer, cs []accounts.Conflict) {
	fmt.Fprintln(w, acctBad.Render(fmt.Sprintf("%s, nothing changed:", acctPlural(len(cs), "conflict"))))
	for _, c := range cs {
		fmt.Fprintf(w, "  • %s\n", c)
	}
	var hints []string
	for _, c := range cs {
		switch c.Kind {
		case "key":
			hints = append(hints, "a key under two charm IDs: one person logged in first through different nodes; keep one account (its files live under that charm ID) and delete the key from the other database")
		case "name":
			hints = append(hints, "a name under two charm IDs: rename one of the users in its database")
		}
	}
	if len(hints) > 0 {
		fmt.Fprintln(w, acctDim.Render("  fix by hand, then run again: "+strings.Join(acctUniq(hints), "; ")))
	}
}

func acctUniq(ss []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, s := range ss {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
