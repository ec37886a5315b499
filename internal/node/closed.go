package node

import (
	"errors"
	"fmt"
	"log/slog"
	"reflect"

	charm "github.com/charmbracelet/charm/proto"
	"github.com/charmbracelet/charm/server"
	"github.com/charmbracelet/charm/server/db"
	"github.com/charmbracelet/ssh"
	"github.com/cring-dev/cring/internal/accounts"
	gossh "golang.org/x/crypto/ssh"
)

// A closed node (cring node --closed) creates no account: only keys an
// administrator added (cring accounts add) or that an account's owner linked
// (charm link) get in. docs/accounts.md, "Open and closed servers".
//
// Two layers:
//   - closedDB never creates a user, whatever charm's code asks: nothing
//     reaches the account store for an unknown key, on any path;
//   - closedGate answers an unknown key's SSH command itself, before
//     charm's handler, with a one-line reason the charm client prints
//     (charm's handlers would answer nothing, which the client reports as
//     "unexpected end of JSON input").

// closedDB is an account store that never creates users: UserForKey always
// looks up only.
type closedDB struct{ db.DB }

func (c closedDB) UserForKey(key string, _ bool) (*charm.User, error) {
	return c.DB.UserForKey(key, false)
}

// closedGate refuses SSH commands from keys without an account.
type closedGate struct {
	users   db.DB
	contact string
	log     *slog.Logger
}

// needsAccount reports whether charm answers cmd for the session's own
// account (and would create it for an unknown key). `api-link CODE` is a new
// device asking to join an account: the account's owner approves it on the
// other side, so it passes.
func needsAccount(cmd []string) bool {
	if len(cmd) == 0 {
		return false
	}
	switch cmd[0] {
	case "api-auth", "api-keys", "api-unlink", "id", "jwt":
		return true
	case "api-link":
		return len(cmd) == 1
	}
	return false
}

// ClosedMessage is what a refused key is told: the charm client prints it
// after "Process exited with status 1. Reason was: ".
func ClosedMessage(fingerprint, contact string) string {
	who := "the server's administrator"
	if contact != "" {
		who = contact
	}
	return fmt.Sprintf("this Charm server is closed to new accounts: key %s is not allowed; ask %s to add it", fingerprint, who)
}

// refuse answers the session when its key has no account, and reports
// whether it did.
func (g *closedGate) refuse(s ssh.Session) bool {
	cmd := s.Command()
	if !needsAccount(cmd) || s.PublicKey() == nil {
		return false
	}
	pk := s.PublicKey()
	_, err := g.users.UserForKey(authorizedKey(pk), false)
	if err == nil {
		return false
	}
	fp := gossh.FingerprintSHA256(pk)
	msg := ClosedMessage(fp, g.contact)
	if errors.Is(err, charm.ErrMissingUser) {
		g.log.Info("closed: refused a key without an account", "key", fp, "cmd", cmd[0], "remote", s.RemoteAddr().String())
	} else {
		// Fail closed: without the store we can't tell who is allowed.
		g.log.Error("closed: account lookup failed, refusing", "key", fp, "cmd", cmd[0], "err", err)
		msg = "the account store is unavailable; try again later"
	}
	refuseSession(s, msg)
	return true
}

// refuseSession ends a session with exit status 1 and msg: on stderr (what
// ssh(1) shows) and in an exit-signal's error message, which Go's SSH client
// (the charm client) puts in its error: "Process exited with status 1.
// Reason was: <msg>". The signal name is empty, so no signal is claimed.
func refuseSession(s ssh.Session, msg string) {
	_, _ = fmt.Fprintln(s.Stderr(), msg)
	sig := struct {
		Signal     string
		CoreDumped bool
		Error      string
		Lang       string
	}{Error: msg, Lang: "en"}
	_, _ = s.SendRequest("exit-signal", false, gossh.Marshal(&sig))
	_ = s.Exit(1)
}

// authorizedKey is a public key as charm stores it: "<type> <base64>".
func authorizedKey(pk ssh.PublicKey) string {
	return accounts.FormatKey(pk)
}

// closeDoor puts the gate in front of charm's SSH handler. charm builds its
// SSH server with a fixed middleware and keeps it unexported; the handler
// is read per session, so replacing it before Start is enough. A charm
// whose layout differs is refused at start, never served open.
func closeDoor(srv *server.Server, g *closedGate) error {
	ss, err := charmSSHServer(srv)
	if err != nil {
		return fmt.Errorf("--closed: %w", err)
	}
	next := ss.Handler
	if next == nil {
		return errors.New("--closed: charm's SSH server has no handler")
	}
	ss.Handler = func(s ssh.Session) {
		if g.refuseSafely(s) {
			return
		}
		next(s)
	}
	return nil
}

// refuseSafely is refuse outside charm's recovering middleware: a panic
// refuses the session instead of ending the process.
func (g *closedGate) refuseSafely(s ssh.Session) (refused bool) {
	defer func() {
		if r := recover(); r != nil {
			g.log.Error("closed: panic while checking a key, refusing", "panic", r)
			refuseSession(s, "internal error; try again later")
			refused = true
		}
	}()
	return g.refuse(s)
}

// charmSSHServer finds charm's *ssh.Server: server.Server.ssh.server
// (charm v0.12.6).
func charmSSHServer(srv *server.Server) (*ssh.Server, error) {
	layout := errors.New("this charm version's SSH server is not the one cring knows (charm v0.12.6): can't close it")
	v := reflect.ValueOf(srv).Elem().FieldByName("ssh")
	if !v.IsValid() || v.Kind() != reflect.Pointer || v.IsNil() {
		return nil, layout
	}
	v = v.Elem().FieldByName("server")
	if !v.IsValid() || v.Type() != reflect.TypeOf((*ssh.Server)(nil)) || v.IsNil() {
		return nil, layout
	}
	return (*ssh.Server)(v.UnsafePointer()), nil
}
