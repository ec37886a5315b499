package main

import (
	"fmt"
	"io"
	"runtime/debug"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// version is this binary's module version and commit, from its build info:
// "v1.2.3 (commit 0123abcd, 2026-11-29)", with "+dirty" for uncommitted
// changes, "(devel)" for a build outside a tagged module.
func version(bi *debug.BuildInfo, ok bool) string {
	if !ok || bi == nil {
		return "unknown (no build info)"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, when string
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			if t, err := time.Parse(time.RFC3339, s.Value); err == nil {
				when = t.UTC().Format("2006-01-02")
			}
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return v + " " + bi.GoVersion
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "+dirty"
	}
	if when != "" {
		rev += ", " + when
	}
	return fmt.Sprintf("%s (commit %s, %s)", v, rev, bi.GoVersion)
}

func buildVersion() string { return version(debug.ReadBuildInfo()) }

func newManCmd(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:   "man",
		Short: "Print cring's man page (roff): cring man > cring.1; man ./cring.1",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return writeMan(cmd.OutOrStdout(), root, buildVersion(), time.Now())
		},
	}
}

// writeMan renders every visible command, its flags and their CRING_*
// variables as one man page, section 1.
func writeMan(w io.Writer, root *cobra.Command, ver string, now time.Time) error {
	var b strings.Builder
	fmt.Fprintf(&b, ".TH CRING 1 %q %q \"cring manual\"\n", now.UTC().Format("2006-01-02"), "cring "+ver)
	b.WriteString(".SH NAME\ncring \\- " + roff(root.Short) + "\n")
	b.WriteString(".SH SYNOPSIS\n.B cring\n.I command\n[\\fIflags\\fR]\n")
	b.WriteString(".SH DESCRIPTION\n")
	b.WriteString(roffText(`cring puts a replicating proxy in front of several Charm servers: every file is stored on N nodes and acknowledged once W stored it, reads fail over, and missed writes, deletes and damaged copies are repaired without an operator. To a charm client the proxy looks like one Charm server.`))
	b.WriteString(".SH COMMANDS\n")
	for _, c := range visible(root) {
		manCommand(&b, c)
	}
	b.WriteString(".SH ENVIRONMENT\n")
	b.WriteString(roffText("Every flag can also be set as a CRING_* variable: --write-quorum is CRING_WRITE_QUORUM; list flags take commas. Precedence: flag, then environment, then the --config file, then the default."))
	b.WriteString(".SH EXIT STATUS\n")
	b.WriteString(roffText("0 on success, 2 for bad input or configuration (one line on stderr, before anything listens), 1 for other errors."))
	b.WriteString(".SH SEE ALSO\n.BR charm (1),\n")
	b.WriteString(roffText("README.md and docs/ in the cring repository: deploy.md (a real cluster), design.md (versions and invariants), node.md, accounts.md, backup.md."))
	_, err := io.WriteString(w, b.String())
	return err
}

// visible is every runnable, non-hidden command under c, depth first in
// name order.
func visible(c *cobra.Command) []*cobra.Command {
	var out []*cobra.Command
	subs := c.Commands()
	sort.Slice(subs, func(i, j int) bool { return subs[i].Name() < subs[j].Name() })
	for _, s := range subs {
		if s.Hidden || s.Name() == "help" || s.Name() == "completion" {
			continue
		}
		if s.Runnable() {
			out = append(out, s)
		}
		out = append(out, visible(s)...)
	}
	return out
}

func manCommand(b *strings.Builder, c *cobra.Command) {
	fmt.Fprintf(b, ".SS \"%s\"\n", roff(c.UseLine()))
	text := c.Long
	if text == "" {
		text = c.Short
	}
	b.WriteString(roffText(text))
	c.LocalFlags().VisitAll(func(f *pflag.Flag) {
		if f.Hidden || f.Name == "help" {
			return
		}
		name := "\\-\\-" + roff(f.Name)
		if f.Shorthand != "" {
			name = "\\-" + f.Shorthand + ", " + name
		}
		if t := f.Value.Type(); t != "bool" {
			name += " \\fI" + t + "\\fR"
		}
		usage := f.Usage
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "[]" && f.DefValue != "0" {
			usage += " (default " + f.DefValue + ")"
		}
		fmt.Fprintf(b, ".TP\n.B %s\n%s\n", name, roff(usage))
	})
}

// roff escapes text for one roff line.
func roff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	return strings.ReplaceAll(s, "-", `\-`)
}

// roffText is paragraphs of text: blank lines start a new paragraph, and a
// line that would start with a control character is protected.
func roffText(s string) string {
	var b strings.Builder
	b.WriteString(".PP\n")
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		line = strings.TrimRight(line, " ")
		if line == "" {
			b.WriteString(".PP\n")
			continue
		}
		line = roff(line)
		if strings.HasPrefix(line, ".") || strings.HasPrefix(line, "'") {
			line = `\&` + line
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}
