// Package accounts moves Charm accounts between stores. It reads a store into
// a Snapshot keyed by what is the same everywhere (charm IDs, public keys,
// encrypt key global IDs, sequence names), merges snapshots into their union
// or reports the conflicts that a merge would have to guess about, and merges
// stock nodes' sqlite databases in place (Sync).
package accounts

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	charm "github.com/charmbracelet/charm/proto"
)

// Snapshot is the accounts of one store.
type Snapshot struct {
	Users []*User
	News  []*News
}

// User is one account. Empty Name, Email and Bio mean unset.
type User struct {
	CharmID   string
	Name      string
	Email     string
	Bio       string
	CreatedAt *time.Time
	Keys      []*Key
	Seqs      map[string]uint64
}

// Key is a public key (authorized_keys form, as charm stores it) with the
// encrypt keys encrypted for it.
type Key struct {
	Key         string
	CreatedAt   *time.Time
	EncryptKeys []*EncryptKey
}

// EncryptKey is a user's symmetric key, encrypted for one public key.
type EncryptKey struct {
	GlobalID     string
	EncryptedKey string
	CreatedAt    *time.Time
}

// News is a server news item.
type News struct {
	Subject   string
	Body      string
	CreatedAt *time.Time
	Tags      []string
}

// Source is a named snapshot to merge ("a.db", "postgres").
type Source struct {
	Name string
	Snap *Snapshot
}

// Conflict is something a merge refuses to guess about.
type Conflict struct {
	Kind     string   // "key", "name" or "field"
	What     string   // the key's fingerprint, the name, or "name of <charm ID>"
	Values   []string // the charm IDs (key, name) or the differing values (field)
	Sources  []string // where each value was found, aligned with Values
	KeyShort string   `json:",omitempty"` // start of the key, to recognize it
}

func (c Conflict) String() string {
	var parts []string
	for i, v := range c.Values {
		parts = append(parts, fmt.Sprintf("%s (%s)", v, c.Sources[i]))
	}
	switch c.Kind {
	case "key":
		return fmt.Sprintf("public key %s (%s) belongs to %d charm IDs: %s", c.What, c.KeyShort, len(c.Values), strings.Join(parts, ", "))
	case "name":
		return fmt.Sprintf("name %q is taken by %d charm IDs: %s", c.What, len(c.Values), strings.Join(parts, ", "))
	}
	return fmt.Sprintf("%s differs: %s", c.What, strings.Join(parts, " vs "))
}

// Counts of a snapshot.
func (s *Snapshot) Counts() (users, keys, encryptKeys, seqs int) {
	for _, u := range s.Users {
		users++
		seqs += len(u.Seqs)
		for _, k := range u.Keys {
			keys++
			encryptKeys += len(k.EncryptKeys)
		}
	}
	return
}

// foldName is how charm compares names: sqlite's LIKE ignores ASCII case only.
func foldName(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// keyShort is a key's type and end: every ed25519 key starts alike.
func keyShort(k string) string {
	f := strings.Fields(k)
	if len(f) < 2 || len(f[1]) <= 16 {
		return k
	}
	return f[0] + " …" + f[1][len(f[1])-16:]
}

// claim collects which charm IDs claim one thing, and where.
type claim struct {
	display string
	ids     []string
	sources []string
}

func (c *claim) add(id, src string) {
	if !slices.Contains(c.ids, id) {
		c.ids = append(c.ids, id)
		c.sources = append(c.sources, src)
	}
}

// Merge returns the union of sources: every user, key, encrypt key and news
// item found anywhere; a user's unset fields filled from any source; each
// sequence at its maximum; a user's created_at and a key's the earliest
// seen. It refuses (nil and the conflicts) rather than guess when a public
// key belongs to different charm IDs, a name (ignoring ASCII case) to
// different charm IDs, or one user has different names, emails or bios.
func Merge(sources []Source) (*Snapshot, []Conflict) {
	out := &Snapshot{}
	users := map[string]*User{}
	keyOwners := map[string]*claim{}
	names := map[string]*claim{}
	fields := map[string]*claim{} // "<charmID>/<field>" → differing values
	type keyRef struct {
		u *User
		k *Key
	}
	keys := map[string]keyRef{}
	news := map[string]bool{}

	for _, src := range sources {
		for _, su := range src.Snap.Users {
			u := users[su.CharmID]
			if u == nil {
				u = &User{CharmID: su.CharmID, Seqs: map[string]uint64{}}
				users[su.CharmID] = u
				out.Users = append(out.Users, u)
			}
			for _, f := range []struct {
				name     string
				dst      *string
				incoming string
			}{{"name", &u.Name, su.Name}, {"email", &u.Email, su.Email}, {"bio", &u.Bio, su.Bio}} {
				if f.incoming == "" {
					continue
				}
				id := u.CharmID + "/" + f.name
				c := fields[id]
				if c == nil {
					c = &claim{display: f.name + " of " + u.CharmID}
					fields[id] = c
				}
				c.add(f.incoming, src.Name)
				if *f.dst == "" {
					*f.dst = f.incoming
				}
			}
			if su.Name != "" {
				n := foldName(su.Name)
				if names[n] == nil {
					names[n] = &claim{display: su.Name}
				}
				names[n].add(su.CharmID, src.Name)
			}
			u.CreatedAt = earliest(u.CreatedAt, su.CreatedAt)
			for name, v := range su.Seqs {
				u.Seqs[name] = max(u.Seqs[name], v)
			}
			for _, sk := range su.Keys {
				if keyOwners[sk.Key] == nil {
					keyOwners[sk.Key] = &claim{display: charm.PublicKeySha(sk.Key)[:12]}
				}
				keyOwners[sk.Key].add(su.CharmID, src.Name)
				ref, ok := keys[sk.Key]
				if !ok {
					ref = keyRef{u: u, k: &Key{Key: sk.Key}}
					keys[sk.Key] = ref
					u.Keys = append(u.Keys, ref.k)
				}
				if ref.u != u {
					continue // a conflict: reported below
				}
				ref.k.CreatedAt = earliest(ref.k.CreatedAt, sk.CreatedAt)
				for _, se := range sk.EncryptKeys {
					if !slices.ContainsFunc(ref.k.EncryptKeys, func(e *EncryptKey) bool { return e.GlobalID == se.GlobalID }) {
						e := *se
						ref.k.EncryptKeys = append(ref.k.EncryptKeys, &e)
					}
				}
			}
		}
		for _, sn := range src.Snap.News {
			id := newsID(sn)
			if !news[id] {
				news[id] = true
				n := *sn
				out.News = append(out.News, &n)
			}
		}
	}

	var conflicts []Conflict
	for k, c := range keyOwners {
		if len(c.ids) > 1 {
			conflicts = append(conflicts, Conflict{Kind: "key", What: c.display, KeyShort: keyShort(k), Values: c.ids, Sources: c.sources})
		}
	}
	for _, c := range names {
		if len(c.ids) > 1 {
			conflicts = append(conflicts, Conflict{Kind: "name", What: c.display, Values: c.ids, Sources: c.sources})
		}
	}
	for _, c := range fields {
		if len(c.ids) > 1 {
			conflicts = append(conflicts, Conflict{Kind: "field", What: c.display, Values: c.ids, Sources: c.sources})
		}
	}
	if len(conflicts) > 0 {
		slices.SortFunc(conflicts, func(a, b Conflict) int {
			return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.What, b.What))
		})
		return nil, conflicts
	}
	return out, nil
}

func newsID(n *News) string {
	t := ""
	if n.CreatedAt != nil {
		t = n.CreatedAt.UTC().Format(time.RFC3339Nano)
	}
	return n.Subject + "\x00" + n.Body + "\x00" + t
}

// NewsID identifies a news item across stores (stores number them apart).
func NewsID(n *News) string { return newsID(n) }

func earliest(a, b *time.Time) *time.Time {
	switch {
	case a == nil:
		return b
	case b == nil || !b.Before(*a):
		return a
	}
	return b
}
