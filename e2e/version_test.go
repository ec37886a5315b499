package e2e

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// TestVersionAndMan: the built binary reports its version, with the commit
// when built from a git checkout, and prints a man page man(1) can render.
func TestVersionAndMan(t *testing.T) {
	bin := cringBinary(t)
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "cring ") {
		t.Fatalf("cring --version: %v %q", err, out)
	}
	// A git checkout stamps the commit, unless the build was told not to
	// (GOFLAGS=-buildvcs=false).
	goflags, _ := exec.Command("go", "env", "GOFLAGS").Output()
	if _, err := os.Stat("../.git"); err == nil && !strings.Contains(string(goflags), "buildvcs=false") {
		if !regexp.MustCompile(`\(commit [0-9a-f]{7,12}(\+dirty)?, `).Match(out) {
			t.Fatalf("cring --version from a git checkout names no commit: %q", out)
		}
	}
	page, err := exec.Command(bin, "man").Output()
	if err != nil || !strings.HasPrefix(string(page), ".TH CRING 1 ") {
		t.Fatalf("cring man: %v %.80q", err, page)
	}
	for _, cmd := range []string{"cring serve", "cring node", "cring cluster init", "cring dev node"} {
		if !strings.Contains(string(page), `.SS "`+strings.ReplaceAll(cmd, "-", `\-`)) {
			t.Errorf("man page lacks %s", cmd)
		}
	}
	if man, err := exec.LookPath("man"); err == nil {
		render := exec.Command(man, "-l", "-")
		render.Stdin = strings.NewReader(string(page))
		render.Env = append(os.Environ(), "MANWIDTH=80", "MAN_KEEP_FORMATTING=0")
		text, err := render.CombinedOutput()
		if err != nil || !strings.Contains(string(text), "--tls-cert") {
			t.Fatalf("man -l: %v\n%.400s", err, text)
		}
	}
}
