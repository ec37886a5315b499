package node

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/charmbracelet/charm/client"
	charm "github.com/charmbracelet/charm/proto"
	"github.com/charmbracelet/charm/server"
	"github.com/charmbracelet/charm/server/db"
	"github.com/charmbracelet/charm/server/db/sqlite"
	"github.com/charmbracelet/keygen"
	"github.com/cring-dev/cring/internal/accounts"
	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/testwait"
	gossh "golang.org/x/crypto/ssh"
)

func TestNeedsAccount(t *testing.T) {
	for _, tc := range []struct {
		cmd  []string
		want bool
	}{
		{nil, false},
		{[]string{"api-auth"}, true},
		{[]string{"id"}, true},
		{[]string{"jwt"}, true},
		{[]string{"jwt", "charm", "other"}, true},
		{[]string{"api-keys"}, true},
		{[]string{"api-unlink", `{"key":"x"}`}, true},
		{[]string{"api-link"}, true},            // starting a link creates the generator's account
		{[]string{"api-link", "ABC369"}, false}, // a new device joining an account its owner approves
		{[]string{"keys"}, false},
		{[]string{"something-else"}, false},
	} {
		if got := needsAccount(tc.cmd); got != tc.want {
			t.Errorf("needsAccount(%q) = %v, want %v", tc.cmd, got, tc.want)
		}
	}
}

// closedNode runs a closed cring node in-process on charm's sqlite.
func closedNode(t *testing.T) (cfg *server.Config, dbPath string) {
	t.Helper()
	ports, err := devcluster.FreePorts("127.0.0.1", 4)
	if err != nil {
		t.Fatal(err)
	}
	cfg = server.DefaultConfig()
	cfg.BindAddr, cfg.Host = "127.0.0.1", "127.0.0.1"
	cfg.HTTPPort, cfg.SSHPort, cfg.HealthPort, cfg.StatsPort = ports[0], ports[1], ports[2], ports[3]
	cfg.DataDir = t.TempDir()
	cfg.PublicURL = ""
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{Config: cfg, Closed: true, Contact: "ops@example.com", ShutdownTimeout: time.Second,
			Ready: func() { close(ready) }})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("node: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("node did not start: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("node not ready in 60s")
	}
	return cfg, filepath.Join(cfg.DataDir, "db", sqlite.DbName)
}

// TestClosedNodeRefusesUnknownKeys: on a closed node every SSH command an
// unknown key sends gets a non-zero exit with the one-line reason the charm
// client shows, nothing is written to the account store, and once the key
// is added it logs in, links a second device and reads its keys.
func TestClosedNodeRefusesUnknownKeys(t *testing.T) {
	cfg, dbPath := closedNode(t)
	cc, err := client.NewClient(&client.Config{Host: "127.0.0.1", SSHPort: cfg.SSHPort, HTTPPort: cfg.HTTPPort, DataDir: t.TempDir(), KeyType: "ed25519"})
	if err != nil {
		t.Fatal(err)
	}
	pubFile := cc.AuthKeyPaths()[0] + ".pub"
	pubBytes, err := os.ReadFile(pubFile)
	if err != nil {
		t.Fatal(err)
	}
	pk, _, _, _, err := gossh.ParseAuthorizedKey(pubBytes)
	if err != nil {
		t.Fatal(err)
	}
	want := "Process exited with status 1. Reason was: " + ClosedMessage(gossh.FingerprintSHA256(pk), "ops@example.com")

	for name, call := range map[string]func() error{
		"id":       func() error { _, err := cc.ID(); return err },
		"jwt":      func() error { _, err := cc.JWT(); return err },
		"api-auth": func() error { _, err := cc.Auth(); return err },
		"api-keys": func() error { _, err := cc.AuthorizedKeysWithMetadata(); return err },
	} {
		err := call()
		if err == nil || !strings.HasSuffix(err.Error(), want) {
			t.Errorf("%s: err = %v, want it to end with %q", name, err, want)
		}
	}
	var af charm.ErrAuthFailed
	if _, err := cc.Auth(); !errors.As(err, &af) || err.Error() != "authentication failed: "+want {
		t.Errorf("api-auth: %v", err)
	}

	users, err := accounts.ReadSQLite(context.Background(), dbPath)
	if err != nil {
		t.Fatal(err)
	}
	if len(users.Users) != 0 {
		t.Fatalf("a closed node wrote %d users", len(users.Users))
	}

	res, err := accounts.AddSQLite(context.Background(), []string{dbPath}, accounts.NewAccount{Keys: []string{accounts.FormatKey(pk)}}, false)
	if err != nil {
		t.Fatal(err)
	}
	cc.InvalidateAuth()
	if id, err := cc.ID(); err != nil || id != res.CharmID {
		t.Fatalf("after add: id %q %v, want %s", id, err, res.CharmID)
	}
	auth, err := cc.Auth()
	if err != nil || auth.ID != res.CharmID || auth.JWT == "" {
		t.Fatalf("after add: auth %+v %v", auth, err)
	}
	if keys, err := cc.AuthorizedKeysWithMetadata(); err != nil || len(keys.Keys) != 1 {
		t.Fatalf("after add: keys %+v %v", keys, err)
	}
}

// downDB is an account store that can't be reached.
type downDB struct{ db.DB }

func (downDB) UserForKey(string, bool) (*charm.User, error) {
	return nil, errors.New("dial tcp 10.0.0.9:5432: connection refused")
}

// TestClosedNodeStoreDown: a closed node that can't read its account store
// refuses every key with a reason, rather than guess who is allowed.
func TestClosedNodeStoreDown(t *testing.T) {
	ports, err := devcluster.FreePorts("127.0.0.1", 4)
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.DefaultConfig()
	cfg.BindAddr, cfg.Host = "127.0.0.1", "127.0.0.1"
	cfg.HTTPPort, cfg.SSHPort, cfg.HealthPort, cfg.StatsPort = ports[0], ports[1], ports[2], ports[3]
	cfg.DataDir = t.TempDir()
	kp, err := keygen.New(KeyPath(cfg.DataDir), keygen.WithKeyType(keygen.Ed25519), keygen.WithWrite())
	if err != nil {
		t.Fatal(err)
	}
	store, err := accounts.OpenSQLite(filepath.Join(cfg.DataDir, "db", sqlite.DbName))
	if err != nil {
		t.Fatal(err)
	}
	users := closedDB{downDB{store}}
	srv, err := server.NewServer(cfg.WithKeys(kp.RawAuthorizedKey(), kp.RawPrivateKey()).WithDB(users))
	if err != nil {
		t.Fatal(err)
	}
	if err := closeDoor(srv, &closedGate{users: users, log: slog.New(slog.DiscardHandler)}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Start() }()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	cc, err := client.NewClient(&client.Config{Host: "127.0.0.1", SSHPort: cfg.SSHPort, HTTPPort: cfg.HTTPPort, DataDir: t.TempDir(), KeyType: "ed25519"})
	if err != nil {
		t.Fatal(err)
	}
	waitPort(t, cfg.SSHPort)
	_, idErr := cc.ID()
	const want = "Process exited with status 1. Reason was: the account store is unavailable; try again later"
	if idErr == nil || idErr.Error() != want {
		t.Fatalf("id with the store down: %v, want %q", idErr, want)
	}
}

// waitPort waits until something accepts connections on the loopback port.
func waitPort(t *testing.T, port int) {
	t.Helper()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	testwait.For(t, 30*time.Second, addr+" accepting connections", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}
