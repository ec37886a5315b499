package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/testwait"
)

// topTerm is `cring top` running in a detached tmux session of fixed size,
// on a tmux server of its own.
type topTerm struct {
	t        *testing.T
	sock     string
	exitFile string
	last     string // the last screen read
}

// needTmux fails the test (never skips) when tmux is missing.
func needTmux(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Fatal("tmux not installed: run scripts/install-tmux (scripts/test does)")
	}
}

// startTop runs `cring top args...` (plus env) in a 120x40 tmux pane.
func startTop(t *testing.T, env []string, args ...string) *topTerm {
	t.Helper()
	needTmux(t)
	dir, err := os.MkdirTemp("", "cring-top") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	tt := &topTerm{t: t, sock: filepath.Join(dir, "tmux.sock"), exitFile: filepath.Join(dir, "exit")}
	quoted := []string{"env"}
	for _, s := range append(append([]string{"LANG=C.UTF-8"}, env...), append([]string{cringBinary(t), "top"}, args...)...) {
		quoted = append(quoted, "'"+strings.ReplaceAll(s, "'", `'\''`)+"'")
	}
	// The pane's command records top's exit status, then the session ends.
	script := strings.Join(quoted, " ") + "; echo $? > '" + tt.exitFile + "'"
	tt.tmux("new-session", "-d", "-s", "top", "-x", "120", "-y", "40", script)
	t.Cleanup(func() {
		_ = exec.Command("tmux", "-S", tt.sock, "kill-server").Run()
	})
	return tt
}

func (tt *topTerm) tmux(args ...string) string {
	tt.t.Helper()
	cmd := exec.Command("tmux", append([]string{"-u", "-f", "/dev/null", "-S", tt.sock}, args...)...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TMUX") { // a tmux of our own even when run inside one
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "LANG=C.UTF-8")
	out, err := cmd.CombinedOutput()
	if err != nil {
		tt.t.Fatalf("tmux %s: %v\n%s\nlast screen:\n%s", strings.Join(args, " "), err, out, tt.last)
	}
	return string(out)
}

// screen is what the pane shows now.
func (tt *topTerm) screen() string {
	tt.t.Helper()
	tt.last = strings.TrimRight(tt.tmux("capture-pane", "-p", "-t", "top"), "\n ")
	return tt.last
}

// waitScreen polls the pane until ok accepts it.
func (tt *topTerm) waitScreen(d time.Duration, what string, ok func(string) bool) string {
	tt.t.Helper()
	shown := false
	defer func() {
		if !shown { // testwait failed the test: show the screen
			tt.t.Logf("last screen:\n%s", tt.last)
		}
	}()
	testwait.For(tt.t, d, "the screen to show "+what, func() bool { return ok(tt.screen()) })
	shown = true
	return tt.last
}

// quit presses q and waits for top to exit with status 0 and the session to end.
func (tt *topTerm) quit() {
	tt.t.Helper()
	tt.tmux("send-keys", "-t", "top", "q")
	var status []byte
	testwait.For(tt.t, 5*time.Second, "cring top's exit status", func() bool {
		b, err := os.ReadFile(tt.exitFile)
		status = b
		return err == nil && len(b) > 0
	})
	if got := strings.TrimSpace(string(status)); got != "0" {
		tt.t.Fatalf("cring top exited with status %s after q; last screen:\n%s", got, tt.last)
	}
	testwait.For(tt.t, 5*time.Second, "the tmux session to end", func() bool {
		return exec.Command("tmux", "-S", tt.sock, "has-session", "-t", "top").Run() != nil
	})
}

// topClock is the time in top's title line ("15:04:05"), "" if none.
func topClock(screen string) string {
	return regexp.MustCompile(`\b\d\d:\d\d:\d\d\b`).FindString(screen)
}

// nodeState is the STATE word of node's row ("up", "down"), "" if none.
func nodeState(screen, node string) string {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(node) + `\s+\S+\s+(\w+)`).FindStringSubmatch(screen)
	if m == nil {
		return ""
	}
	return m[1]
}

// requestRate is the REQUESTS line's rate (-1 when not shown).
func requestRate(screen string) float64 {
	m := regexp.MustCompile(`(?m)^REQUESTS\s+([0-9.]+)(k?)/s`).FindStringSubmatch(screen)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	if m[2] == "k" {
		v *= 1000
	}
	return v
}

// TestTop drives `cring top` in tmux against a live cluster under load:
// nodes up, a non-zero request rate, a stopped node shown down within
// seconds, and q quits.
func TestTop(t *testing.T) {
	needTmux(t)
	tc := startCluster(t, clusterOpts{nodes: 3, replicas: 3, quorum: 2, heal: true})
	u := tc.newUser(t)
	u.put(t, "top/seed", []byte("seed"))

	// Steady traffic until the test ends: writes and reads through charm's fs client.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			name := fmt.Sprintf("top/f%d", i%20)
			_ = u.fs.WriteFile(name, memFile(name, []byte(fmt.Sprintf("file %d", i))))
			_, _ = u.fs.ReadFile("top/seed")
			time.Sleep(20 * time.Millisecond) // the traffic's pace: not a wait
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })

	start := time.Now()
	// The interval comes from the environment: CRING_* works for top too.
	tt := startTop(t, []string{"CRING_INTERVAL=500ms"}, "--admin", tc.admin)
	s := tt.waitScreen(15*time.Second, "three nodes up and traffic", func(s string) bool {
		return nodeState(s, "node1") == "up" && nodeState(s, "node2") == "up" && nodeState(s, "node3") == "up" &&
			requestRate(s) > 0
	})
	t.Logf("screen after %s:\n%s", time.Since(start).Round(time.Millisecond), s)
	for _, want := range []string{"cring top", "admin " + tc.admin, "every 500ms", "● ready", "3/3 nodes healthy", "N=3 W=2", "p99"} {
		if !strings.Contains(s, want) {
			t.Errorf("screen lacks %q", want)
		}
	}
	// Healing is on: its hint queue is a number, not "—".
	if !regexp.MustCompile(`hints pending \d`).MatchString(s) {
		t.Errorf("screen lacks a hints pending count")
	}

	tc.stop(2)
	stopped := time.Now()
	s = tt.waitScreen(5*time.Second, "node3 down", func(s string) bool {
		return nodeState(s, "node3") == "down" && nodeState(s, "node1") == "up"
	})
	t.Logf("node3 shown down %s after it stopped:\n%s", time.Since(stopped).Round(time.Millisecond), s)
	if !strings.Contains(s, "2/3 nodes healthy") {
		t.Errorf("screen lacks 2/3 nodes healthy")
	}

	tt.quit()
}

// TestTopUnreachable: with nothing at the admin address, top says so and
// keeps retrying instead of exiting; q still quits.
func TestTopUnreachable(t *testing.T) {
	needTmux(t)
	ports, err := devcluster.FreePorts("127.0.0.1", 1)
	if err != nil {
		t.Fatal(err)
	}
	admin := fmt.Sprintf("127.0.0.1:%d", ports[0])
	tt := startTop(t, nil, "--admin", admin, "--interval", "200ms")
	s := tt.waitScreen(10*time.Second, "the admin API unreachable", func(s string) bool {
		return strings.Contains(s, "admin API "+admin+" unreachable") && strings.Contains(s, "connection refused")
	})
	t.Logf("screen:\n%s", s)
	// Top redraws its clock with each scrape's result: a later time on
	// the screen is a retry that failed again, and top still running.
	first := topClock(s)
	if first == "" {
		t.Fatalf("no clock on the screen:\n%s", s)
	}
	s = tt.waitScreen(10*time.Second, "a later retry still unreachable", func(s string) bool {
		return topClock(s) != first && strings.Contains(s, "unreachable") && strings.Contains(s, "retrying every 200ms")
	})
	t.Logf("screen after retrying:\n%s", s)
	tt.quit()
}
