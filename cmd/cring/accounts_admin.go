package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/charmbracelet/charm/client"
	"github.com/cring-dev/cring/internal/accounts"
	"github.com/cring-dev/cring/internal/accounts/postgres"
	"github.com/cring-dev/cring/internal/node"
	"github.com/cring-dev/cring/internal/nodetls"
	"github.com/cring-dev/cring/internal/token"
	"github.com/spf13/cobra"
)

// Administration of closed servers: add, list and remove accounts in the
// store every `cring node` shares (docs/accounts.md).

// openAdminStore opens the PostgreSQL that --accounts (CRING_ACCOUNTS) names.
func openAdminStore(ctx context.Context, spec string) (*postgres.DB, error) {
	if spec == "" {
		return nil, usageError{errors.New("need --accounts postgres://… (or CRING_ACCOUNTS): the database every cring node uses")}
	}
	if !node.IsPostgres(spec) {
		return nil, usageError{fmt.Errorf("--accounts %q: want a postgres:// URL", node.Redact(spec))}
	}
	return postgres.Open(ctx, spec, postgres.Options{MaxConns: 2})
}

// readKeyArgs reads public keys from files ("-": stdin) or given inline
// ("ssh-ed25519 AAAA…").
func readKeyArgs(args []string, stdin io.Reader) ([]string, error) {
	var keys []string
	for _, a := range args {
		var ks []string
		var err error
		switch {
		case a == "-":
			ks, err = accounts.ParseKeys(stdin, "stdin")
		case strings.HasPrefix(a, "ssh-") || strings.HasPrefix(a, "ecdsa-"):
			ks, err = accounts.ParseKeys(strings.NewReader(a), "argument")
		default:
			f, oerr := os.Open(a)
			if oerr != nil {
				return nil, oerr
			}
			ks, err = accounts.ParseKeys(f, a)
			f.Close()
		}
		if err != nil {
			return nil, err
		}
		for _, k := range ks {
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	return keys, nil
}

func newAccountsAddCmd() *cobra.Command {
	var spec, name, charmID string
	var sqlite []string
	var dryRun, asJSON, authorized bool
	cmd := &cobra.Command{
		Use:   "add PUBKEY_FILE… [--name NAME] [--id CHARM_ID]",
		Short: "Admit SSH public keys to a closed server: one account, on every node at once",
		Long: `Admit public keys (.pub files in authorized_keys form, "-" for stdin, or a
key given inline) as one account: a new account with a fresh charm ID, or
with --id the existing account to add them to (a new device of its owner).
Keys that already belong to one account are left as they are, so running it
again changes nothing. A key or a name another account has is a conflict:
nothing changes and the exit status is 2.

With --accounts postgres://… (CRING_ACCOUNTS), the database every cring node
shares: the key logs in on every node from the moment this returns.

With --sqlite A.db,B.db… (stock charm serve nodes): the same account is
written into every file at once, each write-locked for the few moments it
takes, refusing conflicts like ` + "`cring accounts sync`" + `. A stock node creates an
account for any key that connects unless <data>/.ssh/authorized_keys exists
when it starts (charm then admits only the keys in it, read on every login):
--authorized-keys also appends the keys to that file next to each database.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := applyEnv(cmd.Flags()); err != nil {
				return usageError{err}
			}
			if name != "" && !client.ValidateName(name) {
				return usageError{fmt.Errorf("--name %q: charm names are 1 to 50 letters and digits", name)}
			}
			keys, err := readKeyArgs(args, cmd.InOrStdin())
			if err != nil {
				return usageError{err}
			}
			na := accounts.NewAccount{CharmID: charmID, Name: name, Keys: keys}
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			if len(sqlite) > 0 {
				return addSQLite(ctx, cmd, sqlite, na, dryRun, asJSON, authorized)
			}
			if authorized {
				return usageError{errors.New("--authorized-keys is for --sqlite (stock nodes)")}
			}
			if dryRun {
				return usageError{errors.New("--dry-run is for --sqlite")}
			}
			pg, err := openAdminStore(ctx, spec)
			if err != nil {
				return err
			}
			defer pg.Close()
			res, conflicts, err := pg.AddAccount(ctx, na)
			return reportAdd(cmd, res, conflicts, err, asJSON)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&spec, "accounts", "", "PostgreSQL URL every cring node uses (as given to cring node --accounts)")
	fl.StringVar(&name, "name", "", "the account's charm name (letters and digits)")
	fl.StringVar(&charmID, "id", "", "add the keys to this existing account (charm ID)")
	fl.StringSliceVar(&sqlite, "sqlite", nil, "stock nodes' account files instead of PostgreSQL, comma-separated or repeated (data/db/charm_sqlite.db)")
	fl.BoolVar(&dryRun, "dry-run", false, "with --sqlite: report what would change, change nothing")
	fl.BoolVar(&authorized, "authorized-keys", false, "with --sqlite: also append the keys to <data>/.ssh/authorized_keys next to each database (what closes a stock node)")
	fl.BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

func addSQLite(ctx context.Context, cmd *cobra.Command, files []string, na accounts.NewAccount, dryRun, asJSON, authorized bool) error {
	rep, err := accounts.AddSQLite(ctx, files, na, dryRun)
	var authLines []string
	if err == nil && authorized && !dryRun {
		for _, f := range files {
			p := accounts.AuthorizedKeysFor(f)
			n, aerr := accounts.AppendAuthorizedKeys(p, na.Keys)
			if aerr != nil {
				return fmt.Errorf("account added to every database, but %s: %w", p, aerr)
			}
			authLines = append(authLines, fmt.Sprintf("%s: +%s", p, acctPlural(n, "key")))
		}
	}
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
		return usageError{fmt.Errorf("refusing to add: %s, nothing changed", acctPlural(len(rep.Conflicts), "conflict"))}
	}
	if errors.Is(err, accounts.ErrNoAccount) {
		return usageError{err}
	}
	if err != nil {
		return err
	}
	if !asJSON {
		printAdd(out, &rep.AddResult)
		for _, f := range rep.Files {
			fmt.Fprintf(out, "  %s\n", acctDim.Render(fmt.Sprintf("%s: +%s, +%s", f.Store, acctPlural(f.Users, "account"), acctPlural(f.Keys, "key"))))
		}
		for _, l := range authLines {
			fmt.Fprintf(out, "  %s\n", acctDim.Render(l))
		}
		if rep.DryRun {
			fmt.Fprintln(out, acctDim.Render("  dry run: nothing written"))
		}
	}
	return nil
}

func reportAdd(cmd *cobra.Command, res *accounts.AddResult, conflicts []accounts.Conflict, err error, asJSON bool) error {
	out := cmd.OutOrStdout()
	switch {
	case errors.Is(err, accounts.ErrConflicts):
		if asJSON {
			_ = writeIndentedJSON(out, struct {
				Conflicts []accounts.Conflict `json:"conflicts"`
			}{conflicts})
		} else {
			printConflicts(cmd.ErrOrStderr(), conflicts)
		}
		return usageError{fmt.Errorf("refusing to add: %s, nothing changed", acctPlural(len(conflicts), "conflict"))}
	case errors.Is(err, accounts.ErrNoAccount):
		return usageError{err}
	case err != nil:
		return err
	}
	if asJSON {
		return writeIndentedJSON(out, res)
	}
	printAdd(out, res)
	return nil
}

func printAdd(w io.Writer, r *accounts.AddResult) {
	verb := "keys added to account"
	if r.Created {
		verb = "new account"
	}
	if len(r.Added) == 0 && !r.Named {
		verb = "already admitted: nothing changed for"
	}
	fmt.Fprintln(w, acctTitle.Render(fmt.Sprintf("💍 %s %s", verb, r.CharmID)))
	for _, fp := range r.Added {
		fmt.Fprintf(w, "  + %s\n", fp)
	}
	for _, fp := range r.Already {
		fmt.Fprintf(w, "  %s\n", acctDim.Render("= "+fp+" (already there)"))
	}
}

// filesFlags reach users' files through the cluster, for usage and purge.
type filesFlags struct {
	proxy, serverKey, publicURL, ca string
}

func (f *filesFlags) register(cmd *cobra.Command, what string) {
	fl := cmd.Flags()
	fl.StringVar(&f.proxy, "proxy", "", "the cluster's HTTP URL (cring serve, e.g. http://proxy:35354): "+what)
	fl.StringVar(&f.serverKey, "server-key", "", "the nodes' shared charm_server_ed25519, to act as the user")
	fl.StringVar(&f.publicURL, "public-url", "", "the nodes' CHARM_SERVER_PUBLIC_URL (default: --proxy)")
	fl.StringVar(&f.ca, "ca", "", "PEM CA certificate(s) trusted for an https --proxy, besides the system's roots (a private CA's)")
}

func (f *filesFlags) open() (*accounts.Files, error) {
	if f.proxy == "" || f.serverKey == "" {
		return nil, usageError{errors.New("need --proxy URL and --server-key PATH")}
	}
	u, err := url.Parse(f.proxy)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, usageError{fmt.Errorf("--proxy %q: want http://host:port", f.proxy)}
	}
	signer, err := token.LoadSigner(f.serverKey)
	if err != nil {
		return nil, usageError{err}
	}
	issuer := f.publicURL
	if issuer == "" {
		issuer = strings.TrimRight(f.proxy, "/")
	}
	tlsConf, err := nodetls.ClientConfig(f.ca)
	if err != nil {
		return nil, usageError{fmt.Errorf("--ca: %w", err)}
	}
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{Proxy: http.ProxyFromEnvironment, TLSClientConfig: tlsConf, TLSHandshakeTimeout: 10 * time.Second}}
	return &accounts.Files{Base: u, Signer: signer, Issuer: issuer, Client: client}, nil
}

func newAccountsListCmd() *cobra.Command {
	var spec string
	var asJSON bool
	var ff filesFlags
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the accounts of the shared store: charm ID, name, keys, created, storage",
		Long: `List every account in the PostgreSQL every cring node shares: charm ID, name,
creation time and public keys (SHA256 fingerprints, as ssh-keygen -l prints
them). With --proxy and --server-key, also the bytes each account stores
(each file once, as uploaded), read through the cluster.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := applyEnv(cmd.Flags()); err != nil {
				return usageError{err}
			}
			var files *accounts.Files
			if ff.proxy != "" || ff.serverKey != "" {
				var err error
				if files, err = ff.open(); err != nil {
					return err
				}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Minute)
			defer cancel()
			pg, err := openAdminStore(ctx, spec)
			if err != nil {
				return err
			}
			defer pg.Close()
			list, err := pg.Accounts(ctx)
			if err != nil {
				return err
			}
			if files != nil {
				for i := range list {
					n, err := files.Usage(ctx, list[i].CharmID)
					if err != nil {
						return fmt.Errorf("storage of %s: %w", list[i].CharmID, err)
					}
					list[i].Bytes = n
				}
			}
			if asJSON {
				if list == nil {
					list = []accounts.Account{}
				}
				return writeIndentedJSON(cmd.OutOrStdout(), list)
			}
			printAccounts(cmd.OutOrStdout(), list)
			return nil
		},
	}
	cmd.Flags().StringVar(&spec, "accounts", "", "PostgreSQL URL every cring node uses")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the accounts as JSON")
	ff.register(cmd, "adds each account's storage")
	return cmd
}

func printAccounts(w io.Writer, list []accounts.Account) {
	fmt.Fprintln(w, acctTitle.Render(fmt.Sprintf("💍 %s", acctPlural(len(list), "account"))))
	if len(list) == 0 {
		return
	}
	fmt.Fprintln(w, acctDim.Render(fmt.Sprintf("  %-36s  %-14s  %-20s  %9s  %s", "charm id", "name", "created", "storage", "keys")))
	for _, a := range list {
		created, storage := "—", "—"
		if a.CreatedAt != nil {
			created = a.CreatedAt.UTC().Format("2006-01-02 15:04:05")
		}
		if a.Bytes >= 0 {
			storage = humanBytes(a.Bytes)
		}
		name := a.Name
		if name == "" {
			name = "—"
		}
		var fps []string
		for _, k := range a.Keys {
			fps = append(fps, k.Fingerprint)
		}
		if len(fps) == 0 {
			fps = []string{"—"}
		}
		fmt.Fprintf(w, "  %-36s  %-14s  %-20s  %9s  %s\n", a.CharmID, name, created, storage, fps[0])
		for _, fp := range fps[1:] {
			fmt.Fprintf(w, "  %-36s  %-14s  %-20s  %9s  %s\n", "", "", "", "", fp)
		}
	}
}

func newAccountsRemoveCmd() *cobra.Command {
	var spec string
	var allKeys, purge, asJSON bool
	var ff filesFlags
	cmd := &cobra.Command{
		Use:   "remove ID|KEY [--all-keys [--purge]]",
		Short: "Remove a key, or a whole account, from the shared store: refused on every node at once",
		Long: `Remove a public key (a .pub file, the key inline, or its SHA256:…
fingerprint) from its account, or with --all-keys the whole account (named
by its charm ID or any of its keys): its keys, encrypt keys and sequences.
An account's last key is only removed with --all-keys.

Every node looks keys and accounts up in the shared database on every SSH
command and every HTTP request, so the change holds on every node as soon
as this returns: the key is refused over SSH, and a removed account's
requests are refused (404) even with a token it still holds. A token the
removed key got before (charm tokens live an hour) stays valid until it
expires when its account keeps other keys (docs/accounts.md).

Files stay on the nodes, under the charm ID, unless --purge: then every file
and directory of the account is deleted through the cluster (--proxy,
--server-key) before the account is removed, as ` + "`charm fs rm`" + ` would.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := applyEnv(cmd.Flags()); err != nil {
				return usageError{err}
			}
			if purge && !allKeys {
				return usageError{errors.New("--purge deletes an account's files: it needs --all-keys")}
			}
			var files *accounts.Files
			if purge {
				var err error
				if files, err = ff.open(); err != nil {
					return err
				}
			}
			target := args[0]
			if _, err := os.Stat(target); err == nil || target == "-" || strings.HasPrefix(target, "ssh-") {
				keys, err := readKeyArgs([]string{target}, cmd.InOrStdin())
				if err != nil {
					return usageError{err}
				}
				if len(keys) != 1 {
					return usageError{fmt.Errorf("%s holds %d keys: remove one at a time", target, len(keys))}
				}
				target = keys[0]
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Minute)
			defer cancel()
			pg, err := openAdminStore(ctx, spec)
			if err != nil {
				return err
			}
			defer pg.Close()
			acct, key, err := pg.Lookup(ctx, target)
			if errors.Is(err, accounts.ErrNoKey) {
				return usageError{fmt.Errorf("no account has the charm ID or key %s", args[0])}
			}
			if err != nil {
				return err
			}
			res := removeResult{CharmID: acct.CharmID}
			switch {
			case allKeys:
				if files != nil {
					if res.Purged, err = files.Purge(ctx, acct.CharmID, time.Minute); err != nil {
						return fmt.Errorf("purge (the account is kept; run it again): %w", err)
					}
				}
				if err := pg.RemoveAccount(ctx, acct.CharmID); err != nil {
					return err
				}
				res.Account = true
				for _, k := range acct.Keys {
					res.Keys = append(res.Keys, k.Fingerprint)
				}
			case key == "":
				return usageError{fmt.Errorf("%s is an account: name one of its keys, or pass --all-keys to remove the whole account", acct.CharmID)}
			default:
				if err := pg.RemoveKey(ctx, acct.CharmID, key); errors.Is(err, accounts.ErrLastKey) {
					return usageError{fmt.Errorf("%s is the last key of %s: pass --all-keys to remove the account", accounts.Fingerprint(key), acct.CharmID)}
				} else if err != nil {
					return err
				}
				res.Keys = []string{accounts.Fingerprint(key)}
			}
			if asJSON {
				return writeIndentedJSON(cmd.OutOrStdout(), res)
			}
			printRemove(cmd.OutOrStdout(), res, purge)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&spec, "accounts", "", "PostgreSQL URL every cring node uses")
	fl.BoolVar(&allKeys, "all-keys", false, "remove the whole account (every key), not one key")
	fl.BoolVar(&purge, "purge", false, "with --all-keys: first delete every file of the account through the cluster (--proxy, --server-key)")
	fl.BoolVar(&asJSON, "json", false, "print the result as JSON")
	ff.register(cmd, "where --purge deletes the files")
	return cmd
}

type removeResult struct {
	CharmID string   `json:"charm_id"`
	Account bool     `json:"account_removed"`
	Keys    []string `json:"keys_removed"`
	Purged  int      `json:"purged_entries"`
}

func printRemove(w io.Writer, r removeResult, purged bool) {
	if r.Account {
		fmt.Fprintln(w, acctTitle.Render(fmt.Sprintf("💍 account %s removed (%s)", r.CharmID, acctPlural(len(r.Keys), "key"))))
	} else {
		fmt.Fprintln(w, acctTitle.Render(fmt.Sprintf("💍 key removed from %s", r.CharmID)))
	}
	for _, fp := range r.Keys {
		fmt.Fprintf(w, "  - %s\n", fp)
	}
	switch {
	case purged:
		fmt.Fprintln(w, acctDim.Render(fmt.Sprintf("  files: deleted through the cluster (%s)", acctPlural(r.Purged, "delete"))))
	case r.Account:
		fmt.Fprintln(w, acctDim.Render("  files kept on the nodes under the charm ID (--purge deletes them)"))
	}
}
