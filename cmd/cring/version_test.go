package main

import (
	"regexp"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

func TestVersion(t *testing.T) {
	vcs := func(kv ...string) []debug.BuildSetting {
		var s []debug.BuildSetting
		for i := 0; i < len(kv); i += 2 {
			s = append(s, debug.BuildSetting{Key: kv[i], Value: kv[i+1]})
		}
		return s
	}
	for _, tt := range []struct {
		name string
		bi   *debug.BuildInfo
		ok   bool
		want string
	}{
		{"no build info", nil, false, "unknown (no build info)"},
		{"go install of a tag", &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "v0.3.0"}}, true, "v0.3.0 go1.26.0"},
		{"git checkout", &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "(devel)"},
			Settings: vcs("vcs.revision", "0123456789abcdef0123", "vcs.time", "2026-11-29T18:00:00Z", "vcs.modified", "false")},
			true, "(devel) (commit 0123456789ab, 2026-11-29, go1.26.0)"},
		{"uncommitted changes", &debug.BuildInfo{GoVersion: "go1.26.0",
			Settings: vcs("vcs.revision", "abc", "vcs.modified", "true")},
			true, "(devel) (commit abc+dirty, go1.26.0)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := version(tt.bi, tt.ok); got != tt.want {
				t.Errorf("version = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestMan: the man page names every command and its flags, and no text
// line could be taken for a roff request.
func TestMan(t *testing.T) {
	root := &cobra.Command{Use: "cring", Short: "High availability"}
	serve := &cobra.Command{Use: "serve", Short: "Run the proxy", Long: ".starts with a dot\n\nsecond paragraph \\ backslash", Run: func(*cobra.Command, []string) {}}
	serve.Flags().String("tls-cert", "", "PEM certificate")
	serve.Flags().Int("replicas", 3, "copies")
	group := &cobra.Command{Use: "cluster", Short: "Set up"}
	initCmd := &cobra.Command{Use: "init", Short: "Generate", Run: func(*cobra.Command, []string) {}}
	hidden := &cobra.Command{Use: "secret", Hidden: true, Run: func(*cobra.Command, []string) {}}
	group.AddCommand(initCmd)
	root.AddCommand(serve, group, hidden)
	var b strings.Builder
	if err := writeMan(&b, root, "v1", time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	page := b.String()
	for _, want := range []string{
		`.TH CRING 1 "2026-11-29" "cring v1"`, `.SS "cring serve [flags]"`, `.SS "cring cluster init"`,
		`.B \-\-tls\-cert \fIstring\fR`, "copies (default 3)", `\&.starts with a dot`, `\e backslash`, ".SH ENVIRONMENT",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("man page lacks %q", want)
		}
	}
	if strings.Contains(page, "secret") {
		t.Error("man page shows a hidden command")
	}
	request := regexp.MustCompile(`^\.(TH|SH|SS|PP|TP|B|BR|I)( |$)`)
	for _, line := range strings.Split(page, "\n") {
		if strings.HasPrefix(line, ".") && !request.MatchString(line) {
			t.Errorf("line taken for a roff request: %q", line)
		}
	}
}
