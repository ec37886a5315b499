package accounts

import (
	"fmt"
	"reflect"
	"time"

	charm "github.com/charmbracelet/charm/proto"
	"github.com/charmbracelet/charm/server/db"
)

// Compare checks that two stores answer the same for every public key in
// keys, field by field, through charm's own db.DB interface: the owner
// (charm ID, name, email, bio, created_at), the owner's keys with their
// created_at, the encrypt keys (global ID, ciphertext, created_at) and the
// named sequences. Internal row ids are not compared: stores number apart.
func Compare(want, got db.DB, keys, seqs []string) error {
	for _, k := range keys {
		w, err := lookAccount(want, k, seqs)
		if err != nil {
			return fmt.Errorf("first store: %w", err)
		}
		g, err := lookAccount(got, k, seqs)
		if err != nil {
			return fmt.Errorf("second store: %w", err)
		}
		if !reflect.DeepEqual(w, g) {
			return fmt.Errorf("key %s differs:\n first:  %+v\n second: %+v", keyShort(k), w, g)
		}
	}
	return nil
}

type accountView struct {
	CharmID, Name, Email, Bio string
	Created                   string
	Keys                      []string
	EncryptKeys               []string
	Seqs                      []uint64
}

func stamp(t *time.Time) string {
	if t == nil {
		return "nil"
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func lookAccount(d db.DB, key string, seqs []string) (accountView, error) {
	u, err := d.UserForKey(key, false)
	if err != nil {
		return accountView{}, fmt.Errorf("user for key %s: %w", keyShort(key), err)
	}
	v := accountView{CharmID: u.CharmID, Name: u.Name, Email: u.Email, Bio: u.Bio, Created: stamp(u.CreatedAt)}
	ks, err := d.KeysForUser(u)
	if err != nil {
		return v, err
	}
	for _, k := range ks {
		v.Keys = append(v.Keys, k.Key+" @"+stamp(k.CreatedAt))
	}
	eks, err := d.EncryptKeysForPublicKey(u.PublicKey)
	if err != nil {
		return v, err
	}
	for _, e := range eks {
		v.EncryptKeys = append(v.EncryptKeys, e.ID+" "+e.Key+" @"+stamp(e.CreatedAt))
	}
	for _, s := range seqs {
		n, err := d.GetSeq(&charm.User{ID: u.ID, CharmID: u.CharmID}, s)
		if err != nil {
			return v, err
		}
		v.Seqs = append(v.Seqs, n)
	}
	return v, nil
}
