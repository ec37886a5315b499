package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
	"time"

	charm "github.com/charmbracelet/charm/proto"
	"github.com/charmbracelet/charm/server/db"
	"github.com/cring-dev/cring/internal/accounts"
	"github.com/cring-dev/cring/internal/pgtest"
)

func openPG(t testing.TB, url string) *DB {
	t.Helper()
	d, err := Open(context.Background(), url, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// state is one backend's view while a script runs: the users it returned.
type state struct {
	users map[string]*charm.User
	news  string // an id GetNewsList returned
}

// norm makes one backend's answers comparable with another's: charm IDs and
// row ids become labels in order of first appearance (they are random or
// allocated differently), times become "now" or their exact value.
type norm struct {
	labels map[string]map[string]string
}

func (n *norm) label(kind string, v any) string {
	s := fmt.Sprint(v)
	if n.labels == nil {
		n.labels = map[string]map[string]string{}
	}
	if n.labels[kind] == nil {
		n.labels[kind] = map[string]string{}
	}
	l, ok := n.labels[kind][s]
	if !ok {
		l = fmt.Sprintf("%s#%d", kind, len(n.labels[kind])+1)
		n.labels[kind][s] = l
	}
	return l
}

func (n *norm) time(t *time.Time) string {
	switch {
	case t == nil:
		return "nil"
	case time.Since(*t).Abs() < time.Minute:
		return "now"
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func (n *norm) value(v any) any {
	switch x := v.(type) {
	case *charm.User:
		if x == nil {
			return "nil user"
		}
		out := map[string]any{"id": n.label("uid", x.ID), "charm_id": n.label("charm", x.CharmID),
			"name": x.Name, "email": x.Email, "bio": x.Bio, "created": n.time(x.CreatedAt)}
		if x.PublicKey != nil {
			out["key"] = n.value(x.PublicKey)
		}
		return out
	case *charm.PublicKey:
		uid := "0"
		if x.UserID != 0 {
			uid = n.label("uid", x.UserID)
		}
		return map[string]any{"id": n.label("kid", x.ID), "user": uid, "key": x.Key, "created": n.time(x.CreatedAt)}
	case []*charm.PublicKey:
		if x == nil {
			return "nil list"
		}
		var out []any
		for _, k := range x {
			out = append(out, n.value(k))
		}
		return out
	case []*charm.EncryptKey:
		if x == nil {
			return "nil list"
		}
		var out []any
		for _, k := range x {
			out = append(out, []string{k.ID, k.Key, k.PublicKey, n.time(k.CreatedAt)})
		}
		return out
	case *charm.News:
		if x == nil {
			return "nil news"
		}
		return []string{n.label("news", x.ID), x.Subject, x.Body, x.Tag, n.time(&x.CreatedAt)}
	case []*charm.News:
		if x == nil {
			return "nil list"
		}
		var out []any
		for _, k := range x {
			out = append(out, n.value(k))
		}
		return out
	}
	return v
}

// errClass is what callers can tell apart: charm's sentinels (compared with
// == by charm's server, so they must come unwrapped), a bad number, or some
// other error.
func errClass(err error) string {
	var ne *strconv.NumError
	switch {
	case err == nil:
		return "ok"
	case err == charm.ErrMissingUser, err == charm.ErrNameTaken, err == charm.ErrTokenExists, err == sql.ErrNoRows:
		return err.Error()
	case errors.As(err, &ne):
		return "bad number"
	}
	return "error"
}

type step struct {
	name string
	do   func(d db.DB, s *state) (any, error)
}

func user(s *state, name string) *charm.User { return s.users[name] }

func keep(s *state, name string) func(*charm.User, error) (any, error) {
	return func(u *charm.User, err error) (any, error) {
		if err == nil {
			s.users[name] = u
		}
		return u, err
	}
}

var old = time.Date(2020, 1, 2, 3, 4, 5, 123456000, time.UTC)

// script exercises every db.DB method, odd corners included.
var script = []step{
	{"count empty", func(d db.DB, s *state) (any, error) { return d.UserCount() }},
	{"unknown key", func(d db.DB, s *state) (any, error) { return d.UserForKey("ssh-ed25519 AAAA-a", false) }},
	{"create A", func(d db.DB, s *state) (any, error) { return keep(s, "A")(d.UserForKey("ssh-ed25519 AAAA-a", true)) }},
	{"create A again", func(d db.DB, s *state) (any, error) { return d.UserForKey("ssh-ed25519 AAAA-a", true) }},
	{"create B", func(d db.DB, s *state) (any, error) { return keep(s, "B")(d.UserForKey("ssh-ed25519 AAAA-b", true)) }},
	// Before any delete: sqlite hands a deleted last row's id out again,
	// PostgreSQL never does (ids are internal; charm IDs are what matter).
	{"create C", func(d db.DB, s *state) (any, error) { return keep(s, "C")(d.UserForKey("ssh-ed25519 AAAA-c", true)) }},
	{"B without create", func(d db.DB, s *state) (any, error) { return d.UserForKey("ssh-ed25519 AAAA-b", false) }},
	{"get A by id", func(d db.DB, s *state) (any, error) { return d.GetUserWithID(user(s, "A").CharmID) }},
	{"get unknown id", func(d db.DB, s *state) (any, error) { return d.GetUserWithID("not-a-uuid") }},
	{"name A Alice", func(d db.DB, s *state) (any, error) { return d.SetUserName(user(s, "A").CharmID, "Alice") }},
	{"B takes alice", func(d db.DB, s *state) (any, error) { return d.SetUserName(user(s, "B").CharmID, "alice") }},
	{"B takes al_ce (LIKE)", func(d db.DB, s *state) (any, error) { return d.SetUserName(user(s, "B").CharmID, "al_ce") }},
	{"A renames ALICE: no-op", func(d db.DB, s *state) (any, error) { return d.SetUserName(user(s, "A").CharmID, "ALICE") }},
	{"A renames a%: no-op", func(d db.DB, s *state) (any, error) { return d.SetUserName(user(s, "A").CharmID, "a%") }},
	{"unknown user named", func(d db.DB, s *state) (any, error) { return d.SetUserName("nope", "zed") }},
	{"name B bob", func(d db.DB, s *state) (any, error) { return d.SetUserName(user(s, "B").CharmID, "bob") }},
	{"rename B robert", func(d db.DB, s *state) (any, error) { return d.SetUserName(user(s, "B").CharmID, "robert") }},
	{"A takes bob, now free", func(d db.DB, s *state) (any, error) { return d.SetUserName(user(s, "A").CharmID, "bob") }},
	{"get ROBERT", func(d db.DB, s *state) (any, error) { return d.GetUserWithName("ROBERT") }},
	{"get b% (LIKE)", func(d db.DB, s *state) (any, error) { return d.GetUserWithName("b%") }},
	{"get nobody", func(d db.DB, s *state) (any, error) { return d.GetUserWithName("nobody") }},
	{"counts", func(d db.DB, s *state) (any, error) {
		u, err1 := d.UserCount()
		n, err2 := d.UserNameCount()
		return []int{u, n}, errors.Join(err1, err2)
	}},
	{"link a2", func(d db.DB, s *state) (any, error) { return nil, d.LinkUserKey(user(s, "A"), "ssh-ed25519 AAAA-a2") }},
	{"link a0", func(d db.DB, s *state) (any, error) { return nil, d.LinkUserKey(user(s, "A"), "ssh-ed25519 AAAA-a0") }},
	{"link a2 again", func(d db.DB, s *state) (any, error) { return nil, d.LinkUserKey(user(s, "A"), "ssh-ed25519 AAAA-a2") }},
	{"link to missing user", func(d db.DB, s *state) (any, error) {
		return nil, d.LinkUserKey(&charm.User{ID: 9999}, "ssh-ed25519 AAAA-z")
	}},
	{"keys of A", func(d db.DB, s *state) (any, error) { return d.KeysForUser(user(s, "A")) }},
	{"keys of nobody", func(d db.DB, s *state) (any, error) { return d.KeysForUser(&charm.User{ID: 9999}) }},
	{"a2 owner", func(d db.DB, s *state) (any, error) { return d.UserForKey("ssh-ed25519 AAAA-a2", false) }},
	{"ek g1", func(d db.DB, s *state) (any, error) {
		return nil, d.AddEncryptKeyForPublicKey(user(s, "A"), "ssh-ed25519 AAAA-a", "g1", "ek1", nil)
	}},
	{"ek g0 dated", func(d db.DB, s *state) (any, error) {
		return nil, d.AddEncryptKeyForPublicKey(user(s, "A"), "ssh-ed25519 AAAA-a", "g0", "ek0", &old)
	}},
	{"ek g1 again kept", func(d db.DB, s *state) (any, error) {
		return nil, d.AddEncryptKeyForPublicKey(user(s, "A"), "ssh-ed25519 AAAA-a", "g1", "ek1-other", nil)
	}},
	{"ek g1 on a2", func(d db.DB, s *state) (any, error) {
		return nil, d.AddEncryptKeyForPublicKey(user(s, "A"), "ssh-ed25519 AAAA-a2", "g1", "ek1-a2", nil)
	}},
	{"ek for another's key", func(d db.DB, s *state) (any, error) {
		return nil, d.AddEncryptKeyForPublicKey(user(s, "B"), "ssh-ed25519 AAAA-a", "g9", "ek9", nil)
	}},
	{"ek for unknown key", func(d db.DB, s *state) (any, error) {
		return nil, d.AddEncryptKeyForPublicKey(user(s, "A"), "ssh-ed25519 AAAA-none", "g9", "ek9", nil)
	}},
	{"eks of a", func(d db.DB, s *state) (any, error) { return d.EncryptKeysForPublicKey(user(s, "A").PublicKey) }},
	{"eks of unknown key", func(d db.DB, s *state) (any, error) {
		return d.EncryptKeysForPublicKey(&charm.PublicKey{ID: 9999})
	}},
	{"get new seq", func(d db.DB, s *state) (any, error) { return d.GetSeq(user(s, "A"), "s") }},
	{"next seq", func(d db.DB, s *state) (any, error) { return d.NextSeq(user(s, "A"), "s") }},
	{"next seq 2", func(d db.DB, s *state) (any, error) { return d.NextSeq(user(s, "A"), "s") }},
	{"next on new seq", func(d db.DB, s *state) (any, error) { return d.NextSeq(user(s, "A"), "t") }},
	{"get t", func(d db.DB, s *state) (any, error) { return d.GetSeq(user(s, "A"), "t") }},
	{"seq s of B", func(d db.DB, s *state) (any, error) { return d.NextSeq(user(s, "B"), "s") }},
	{"seq of missing user", func(d db.DB, s *state) (any, error) { return d.NextSeq(&charm.User{ID: 9999}, "s") }},
	{"get seq of missing user", func(d db.DB, s *state) (any, error) { return d.GetSeq(&charm.User{ID: 9999}, "s") }},
	{"merge B into A", func(d db.DB, s *state) (any, error) { return nil, d.MergeUsers(user(s, "A").ID, user(s, "B").ID) }},
	{"b now A's", func(d db.DB, s *state) (any, error) { return d.UserForKey("ssh-ed25519 AAAA-b", false) }},
	{"B gone", func(d db.DB, s *state) (any, error) { return d.GetUserWithID(user(s, "B").CharmID) }},
	{"robert gone", func(d db.DB, s *state) (any, error) { return d.GetUserWithName("robert") }},
	{"A's seq kept", func(d db.DB, s *state) (any, error) { return d.GetSeq(user(s, "A"), "s") }},
	{"keys after merge", func(d db.DB, s *state) (any, error) { return d.KeysForUser(user(s, "A")) }},
	{"unlink a0", func(d db.DB, s *state) (any, error) { return nil, d.UnlinkUserKey(user(s, "A"), "ssh-ed25519 AAAA-a0") }},
	{"unlink unknown", func(d db.DB, s *state) (any, error) { return nil, d.UnlinkUserKey(user(s, "A"), "ssh-ed25519 AAAA-zz") }},
	{"keys after unlink", func(d db.DB, s *state) (any, error) { return d.KeysForUser(user(s, "A")) }},
	{"unlink a", func(d db.DB, s *state) (any, error) { return nil, d.UnlinkUserKey(user(s, "A"), "ssh-ed25519 AAAA-a") }},
	{"unlink a2", func(d db.DB, s *state) (any, error) { return nil, d.UnlinkUserKey(user(s, "A"), "ssh-ed25519 AAAA-a2") }},
	{"A still there", func(d db.DB, s *state) (any, error) { return d.GetUserWithID(user(s, "A").CharmID) }},
	{"unlink last key", func(d db.DB, s *state) (any, error) { return nil, d.UnlinkUserKey(user(s, "A"), "ssh-ed25519 AAAA-b") }},
	{"A deleted with it", func(d db.DB, s *state) (any, error) { return d.GetUserWithID(user(s, "A").CharmID) }},
	{"count after", func(d db.DB, s *state) (any, error) { return d.UserCount() }},
	{"merge C into itself deletes it", func(d db.DB, s *state) (any, error) {
		return nil, d.MergeUsers(user(s, "C").ID, user(s, "C").ID)
	}},
	{"C gone", func(d db.DB, s *state) (any, error) { return d.UserForKey("ssh-ed25519 AAAA-c", false) }},
	{"news 1", func(d db.DB, s *state) (any, error) { return nil, d.PostNews("s1", "b1", []string{"server", "x"}) }},
	{"news 2", func(d db.DB, s *state) (any, error) { return nil, d.PostNews("s2", "b2", []string{"server"}) }},
	{"news 3 untagged", func(d db.DB, s *state) (any, error) { return nil, d.PostNews("s3", "b3", nil) }},
	{"list server", func(d db.DB, s *state) (any, error) {
		ns, err := d.GetNewsList("server", 0)
		if len(ns) > 0 {
			s.news = ns[0].ID
		}
		return ns, err
	}},
	{"list x", func(d db.DB, s *state) (any, error) { return d.GetNewsList("x", 0) }},
	{"list offset 1", func(d db.DB, s *state) (any, error) { return d.GetNewsList("server", 1) }},
	{"list negative offset", func(d db.DB, s *state) (any, error) { return d.GetNewsList("server", -50) }},
	{"list unknown tag", func(d db.DB, s *state) (any, error) { return d.GetNewsList("none", 0) }},
	{"get news", func(d db.DB, s *state) (any, error) { return d.GetNews(s.news) }},
	{"get news abc", func(d db.DB, s *state) (any, error) { return d.GetNews("abc") }},
	{"get news 999", func(d db.DB, s *state) (any, error) { return d.GetNews("999") }},
	{"token", func(d db.DB, s *state) (any, error) { return nil, d.SetToken("T1") }},
	{"token again", func(d db.DB, s *state) (any, error) { return nil, d.SetToken("T1") }},
	{"delete token", func(d db.DB, s *state) (any, error) { return nil, d.DeleteToken("T1") }},
	{"delete token again", func(d db.DB, s *state) (any, error) { return nil, d.DeleteToken("T1") }},
	{"token after delete", func(d db.DB, s *state) (any, error) { return nil, d.SetToken("T1") }},
}

// TestMatchesSQLite runs one script against charm's own sqlite store and
// the postgres store and compares every answer field by field.
func TestMatchesSQLite(t *testing.T) {
	lite, err := accounts.OpenSQLite(filepath.Join(t.TempDir(), "charm_sqlite.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lite.Close() })
	pg := openPG(t, pgtest.Start(t))

	type result struct {
		val any
		err string
	}
	run := func(d db.DB) []result {
		s := &state{users: map[string]*charm.User{}}
		n := &norm{}
		var out []result
		for _, st := range script {
			v, err := st.do(d, s)
			out = append(out, result{n.value(v), errClass(err)})
		}
		return out
	}
	want, got := run(lite), run(pg)
	for i, st := range script {
		if !reflect.DeepEqual(want[i], got[i]) {
			t.Errorf("%s:\n sqlite:   %+v\n postgres: %+v", st.name, want[i], got[i])
		}
	}
}
