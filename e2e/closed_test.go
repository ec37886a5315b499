package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/charmbracelet/keygen"
	"github.com/cring-dev/cring/internal/accounts"
	"github.com/cring-dev/cring/internal/accounts/postgres"
	"github.com/cring-dev/cring/internal/testwait"
	gossh "golang.org/x/crypto/ssh"
)

const closedContact = "ops@example.com"

// startClosedCluster is three `cring node --closed` processes on one
// PostgreSQL behind the proxy. The nodes take CRING_CLOSED and
// CRING_CONTACT from the environment, as a deployment's env file would.
func startClosedCluster(t *testing.T) *pgCluster {
	t.Setenv("CRING_CLOSED", "true")
	t.Setenv("CRING_CONTACT", closedContact)
	return startPGCluster(t, 3)
}

// charmDevice is one machine with the real charm CLI and its own key.
type charmDevice struct {
	t       *testing.T
	bin     string
	home    string
	pubFile string
	finger  string // SHA256:…
	sshPort int
	http    int
}

func newCharmDevice(t *testing.T, sshPort, httpPort int) *charmDevice {
	t.Helper()
	home := t.TempDir()
	kp, err := keygen.New(filepath.Join(home, "charm", "127.0.0.1", "charm_ed25519"), keygen.WithKeyType(keygen.Ed25519), keygen.WithWrite())
	if err != nil {
		t.Fatal(err)
	}
	pk, _, _, _, err := gossh.ParseAuthorizedKey(kp.RawAuthorizedKey())
	if err != nil {
		t.Fatal(err)
	}
	return &charmDevice{t: t, bin: charmCLI(t), home: home, pubFile: filepath.Join(home, "charm", "127.0.0.1", "charm_ed25519.pub"),
		finger: gossh.FingerprintSHA256(pk), sshPort: sshPort, http: httpPort}
}

// at is the same device talking to other ports (one node directly).
func (d *charmDevice) at(sshPort, httpPort int) *charmDevice {
	c := *d
	c.sshPort, c.http = sshPort, httpPort
	return &c
}

func (d *charmDevice) cmd(args ...string) *exec.Cmd {
	cmd := exec.Command(d.bin, args...)
	cmd.Env = append(os.Environ(), "HOME="+d.home, "CHARM_HOST=127.0.0.1",
		fmt.Sprintf("CHARM_SSH_PORT=%d", d.sshPort), fmt.Sprintf("CHARM_HTTP_PORT=%d", d.http),
		"CHARM_DATA_DIR="+filepath.Join(d.home, "charm"))
	cmd.Dir = d.home
	return cmd
}

func (d *charmDevice) run(args ...string) (string, error) {
	out, err := d.cmd(args...).CombinedOutput()
	return string(out), err
}

func (d *charmDevice) must(args ...string) string {
	d.t.Helper()
	out, err := d.run(args...)
	if err != nil {
		d.t.Fatalf("charm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// refused checks that charm args fails with the closed server's reason
// for this device's key, and returns what charm printed.
func (d *charmDevice) refused(args ...string) string {
	d.t.Helper()
	out, err := d.run(args...)
	want := fmt.Sprintf("this Charm server is closed to new accounts: key %s is not allowed; ask %s to add it", d.finger, closedContact)
	if err == nil || !strings.Contains(out, want) {
		d.t.Fatalf("charm %s: err %v, output %q; want a failure saying %q", strings.Join(args, " "), err, out, want)
	}
	return strings.TrimSpace(out)
}

func pgUsers(t *testing.T, pgURL string) int {
	t.Helper()
	pg, err := postgres.Open(context.Background(), pgURL, postgres.Options{MaxConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close()
	n, err := pg.UserCount()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestClosedCluster drives a closed cluster with the real charm CLI and the
// real `cring accounts` commands: an unknown key is refused with the reason
// and writes nothing; once added, the key works through the proxy (id, fs,
// kv), with node 1 down as the same charm ID; a second device joins with
// `charm link`; `accounts list` shows exactly the admitted account; a
// removed key is refused on every node at once, and a removed account's
// token is refused too, its files purged through the cluster.
func TestClosedCluster(t *testing.T) {
	pc := startClosedCluster(t)
	_, proxySSH, _ := splitPort(pc.sshAddr)
	_, proxyHTTP, _ := splitPort(pc.httpAddr)
	alice := newCharmDevice(t, proxySSH, proxyHTTP)

	// An unknown key: every command that needs an account is refused.
	for _, args := range [][]string{{"id"}, {"fs", "ls", "charm:"}, {"kv", "set", "k", "v"}, {"keys"}} {
		t.Logf("charm %s, unknown key: %s", strings.Join(args, " "), alice.refused(args...))
	}
	for i, n := range pc.nodes {
		alice.at(n.ssh, n.http).refused("id")
		t.Logf("node%d directly: refused", i+1)
	}
	if n := pgUsers(t, pc.pgURL); n != 0 {
		t.Fatalf("a closed cluster created %d accounts", n)
	}

	// The administrator admits alice.
	out, errOut, code := runCring(t, "accounts", "add", alice.pubFile, "--name", "alice", "--accounts", pc.pgURL, "--json")
	if code != 0 {
		t.Fatalf("accounts add: %d %s %s", code, out, errOut)
	}
	var added accounts.AddResult
	if err := json.Unmarshal([]byte(out), &added); err != nil || !added.Created || len(added.Added) != 1 || added.Added[0] != alice.finger {
		t.Fatalf("accounts add: %+v %v\n%s", added, err, out)
	}
	if id := strings.TrimSpace(alice.must("id")); id != added.CharmID {
		t.Fatalf("charm id = %q, want %s", id, added.CharmID)
	}
	for _, n := range pc.nodes {
		if id := strings.TrimSpace(alice.at(n.ssh, n.http).must("id")); id != added.CharmID {
			t.Fatalf("charm id on %s = %q, want %s", n.name, id, added.CharmID)
		}
	}
	local := filepath.Join(alice.home, "notes.txt")
	if err := os.WriteFile(local, []byte("closed ring\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	alice.must("fs", "cp", local, "charm:docs/notes.txt")
	alice.must("kv", "set", "color", "violet")
	if got := alice.must("fs", "cat", "charm:docs/notes.txt"); got != "closed ring\n" {
		t.Fatalf("fs cat = %q", got)
	}

	// Node 1 (the SSH primary) stopped: same charm ID, same files, still no
	// new account.
	pc.stop(0, syscall.SIGTERM)
	pc.waitReady(2)
	if id := strings.TrimSpace(alice.must("id")); id != added.CharmID {
		t.Fatalf("charm id with node1 down = %q, want %s", id, added.CharmID)
	}
	if got := alice.must("fs", "cat", "charm:docs/notes.txt"); got != "closed ring\n" {
		t.Fatalf("fs cat with node1 down = %q", got)
	}
	if got := strings.TrimSpace(alice.must("kv", "get", "color")); got != "violet" {
		t.Fatalf("kv get with node1 down = %q", got)
	}
	stranger := newCharmDevice(t, proxySSH, proxyHTTP)
	stranger.refused("id")
	pc.start(0)
	pc.waitReady(3)

	// A second device of alice's joins with `charm link`: alice's laptop
	// starts it, the new device (a key the server has never seen) asks.
	phone := newCharmDevice(t, proxySSH, proxyHTTP)
	phone.refused("id")
	linkDevices(t, alice, phone)
	if id := strings.TrimSpace(phone.must("id")); id != added.CharmID {
		t.Fatalf("linked device's charm id = %q, want %s", id, added.CharmID)
	}
	if got := phone.must("fs", "cat", "charm:docs/notes.txt"); got != "closed ring\n" {
		t.Fatalf("linked device reads %q", got)
	}
	// A new machine restoring alice's keys with `charm import-keys` is
	// alice: the keys are an admitted account's.
	backup := filepath.Join(alice.home, "keys.tar")
	alice.must("backup-keys", "-o", backup)
	restored := newCharmDevice(t, proxySSH, proxyHTTP)
	restored.must("import-keys", "-f", backup)
	if id := strings.TrimSpace(restored.must("id")); id != added.CharmID {
		t.Fatalf("charm id after import-keys = %q, want %s", id, added.CharmID)
	}
	if got := restored.must("fs", "cat", "charm:docs/notes.txt"); got != "closed ring\n" {
		t.Fatalf("after import-keys, fs cat = %q", got)
	}
	if n := pgUsers(t, pc.pgURL); n != 1 {
		t.Fatalf("%d accounts after the link and import-keys, want 1", n)
	}

	// accounts list: exactly alice, with both keys.
	out, errOut, code = runCring(t, "accounts", "list", "--accounts", pc.pgURL, "--json", "--proxy", "http://"+pc.httpAddr, "--server-key", pc.keyPath, "--public-url", pc.publicURL)
	if code != 0 {
		t.Fatalf("accounts list: %d %s", code, errOut)
	}
	var list []accounts.Account
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].CharmID != added.CharmID || list[0].Name != "alice" || len(list[0].Keys) != 2 || list[0].Bytes <= 0 {
		t.Fatalf("accounts list = %+v", list)
	}
	fps := map[string]bool{list[0].Keys[0].Fingerprint: true, list[0].Keys[1].Fingerprint: true}
	if !fps[alice.finger] || !fps[phone.finger] {
		t.Fatalf("listed keys %v, want alice's and the phone's", fps)
	}
	text, _, _ := runCring(t, "accounts", "list", "--accounts", pc.pgURL)
	t.Logf("accounts list:\n%s", text)

	// Removing the phone's key: refused on every node from the first try.
	out, errOut, code = runCring(t, "accounts", "remove", phone.finger, "--accounts", pc.pgURL)
	if code != 0 {
		t.Fatalf("accounts remove: %d %s %s", code, out, errOut)
	}
	removed := time.Now()
	phone.refused("id")
	for _, n := range pc.nodes {
		phone.at(n.ssh, n.http).refused("fs", "ls", "charm:")
	}
	t.Logf("removed key refused through the proxy and on all 3 nodes, first try each, all within %v of remove returning", time.Since(removed).Round(time.Millisecond))
	alice.must("id")

	// The last key needs --all-keys.
	if _, errOut, code := runCring(t, "accounts", "remove", alice.pubFile, "--accounts", pc.pgURL); code != 2 || !strings.Contains(errOut, "last key") {
		t.Fatalf("removing the last key without --all-keys: %d %s", code, errOut)
	}

	// A token alice holds from before: refused the moment her account goes.
	tok := strings.TrimSpace(alice.must("jwt"))
	if st := idStatus(t, pc.httpAddr, tok, added.CharmID); st != http.StatusOK {
		t.Fatalf("alice's token before removal: %d", st)
	}
	out, errOut, code = runCring(t, "accounts", "remove", added.CharmID, "--all-keys", "--purge", "--accounts", pc.pgURL,
		"--proxy", "http://"+pc.httpAddr, "--server-key", pc.keyPath, "--public-url", pc.publicURL)
	if code != 0 {
		t.Fatalf("accounts remove --all-keys --purge: %d %s %s", code, out, errOut)
	}
	t.Logf("accounts remove --all-keys --purge:\n%s", out)
	if st := idStatus(t, pc.httpAddr, tok, added.CharmID); st != http.StatusNotFound {
		t.Fatalf("alice's token after her account was removed: %d, want 404", st)
	}
	alice.refused("id")
	if n := pgUsers(t, pc.pgURL); n != 0 {
		t.Fatalf("%d accounts left", n)
	}
	// Purged: no file of alice's is left on any node.
	testwait.For(t, 10*time.Second, "the condition", func() bool {
		for _, n := range pc.nodes {
			var files int
			_ = filepath.WalkDir(filepath.Join(n.dataDir, "files", added.CharmID), func(p string, d os.DirEntry, err error) error {
				if err == nil && !d.IsDir() && !strings.Contains(p, "/.cring/") {
					files++
				}
				return nil
			})
			if files > 0 {
				return false
			}
		}
		return true
	})
}

// idStatus is the status of reading the token's own account (GET
// /v1/id/ID) through the proxy: every node looks the user up first.
func idStatus(t *testing.T, httpAddr, tok, charmID string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+httpAddr+"/v1/id/"+charmID, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// term is a command in a detached tmux session of its own (a real
// terminal, for charm's interactive `link`).
type term struct {
	t        *testing.T
	sock     string
	exitFile string
	last     string
}

func startTerm(t *testing.T, cmd *exec.Cmd) *term {
	t.Helper()
	needTmux(t)
	dir, err := os.MkdirTemp("", "cring-term") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	tt := &term{t: t, sock: filepath.Join(dir, "tmux.sock"), exitFile: filepath.Join(dir, "exit")}
	quoted := []string{"cd", "'" + cmd.Dir + "'", "&&", "env"}
	for _, s := range append(append([]string{"LANG=C.UTF-8"}, cmd.Env...), cmd.Args...) {
		quoted = append(quoted, "'"+strings.ReplaceAll(s, "'", `'\''`)+"'")
	}
	script := strings.Join(quoted, " ") + "; echo $? > '" + tt.exitFile + "'; sleep 60"
	tt.tmux("new-session", "-d", "-s", "s", "-x", "120", "-y", "40", script)
	t.Cleanup(func() { _ = exec.Command("tmux", "-S", tt.sock, "kill-server").Run() })
	return tt
}

func (tt *term) tmux(args ...string) string {
	tt.t.Helper()
	cmd := exec.Command("tmux", append([]string{"-u", "-f", "/dev/null", "-S", tt.sock}, args...)...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TMUX") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		tt.t.Fatalf("tmux %s: %v\n%s\nlast screen:\n%s", strings.Join(args, " "), err, out, tt.last)
	}
	return string(out)
}

// waitScreen polls the pane until it shows want; returns the screen.
func (tt *term) waitScreen(want string) string {
	tt.t.Helper()
	var s string
	testwait.For(tt.t, 60*time.Second, "the condition", func() bool {
		s = strings.TrimRight(tt.tmux("capture-pane", "-p", "-J", "-t", "s"), "\n ")
		tt.last = s
		return strings.Contains(s, want)
	})
	return s
}

// exitStatus waits for the command to end and returns its exit status.
func (tt *term) exitStatus() string {
	tt.t.Helper()
	var b []byte
	testwait.For(tt.t, 60*time.Second, "the condition", func() bool {
		var err error
		b, err = os.ReadFile(tt.exitFile)
		return err == nil && len(b) > 0
	})
	return strings.TrimSpace(string(b))
}

// linkDevices links newDev's key to owner's account with the real charm
// CLI on both sides, as a person does: `charm link` on the owner's machine
// shows a code, `charm link CODE` on the new one asks, the owner says yes.
func linkDevices(t *testing.T, owner, newDev *charmDevice) {
	t.Helper()
	gen := startTerm(t, owner.cmd("link"))
	screen := gen.waitScreen("charm link ")
	code := ""
	for _, f := range strings.Fields(screen[strings.Index(screen, "charm link ")+len("charm link "):]) {
		code = f
		break
	}
	if len(code) != 6 {
		t.Fatalf("no link code on screen:\n%s", screen)
	}
	req := startTerm(t, newDev.cmd("link", code))
	gen.waitScreen("Link this device?")
	gen.tmux("send-keys", "-t", "s", "y")
	gen.waitScreen("Linked!")
	req.waitScreen("Linked")
	for name, tt := range map[string]*term{"charm link": gen, "charm link " + code: req} {
		if tt.exitFile != "" {
			if name == "charm link" {
				tt.tmux("send-keys", "-t", "s", "q") // "Press any key to exit"
			}
			if st := tt.exitStatus(); st != "0" {
				t.Fatalf("%s exited %s; screen:\n%s", name, st, tt.last)
			}
		}
	}
}
