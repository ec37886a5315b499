package accounts

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
)

// SQLiteAddReport is what AddSQLite found and did.
type SQLiteAddReport struct {
	AddResult
	Files     []Changes  `json:"files"`
	Conflicts []Conflict `json:"conflicts,omitempty"`
	DryRun    bool       `json:"dry_run,omitempty"`
}

// AddSQLite admits an account to stock nodes' sqlite account files, all at
// once: the same charm ID, name and keys in every file, so whichever node a
// login reaches knows the key (a stock node closed with its own
// authorized_keys, or one whose files you keep in sync yourself). Like
// Sync it write-locks every file from the first read to the last commit and
// refuses to guess: a key or a name another charm ID has in any file is a
// conflict (ErrConflicts, nothing changed). Without na.CharmID, keys that
// every file already gives to one account go to that account (running it
// again changes nothing); otherwise a new charm ID is made.
func AddSQLite(ctx context.Context, paths []string, na NewAccount, dryRun bool) (*SQLiteAddReport, error) {
	if len(paths) == 0 {
		return nil, errors.New("no sqlite account file")
	}
	if len(na.Keys) == 0 {
		return nil, errors.New("no key")
	}
	if err := distinctPaths(paths); err != nil {
		return nil, err
	}
	locked, sources, err := lockStores(ctx, paths)
	if err != nil {
		return nil, err
	}
	defer locked.close()

	rep := &SQLiteAddReport{DryRun: dryRun}
	owners := map[string]string{} // key → charm ID, over every file
	exists := map[string]bool{}
	for _, src := range sources {
		for _, u := range src.Snap.Users {
			exists[u.CharmID] = true
			for _, k := range u.Keys {
				owners[k.Key] = u.CharmID
			}
		}
	}
	id := na.CharmID
	switch {
	case id != "" && !exists[id]:
		return nil, fmt.Errorf("%w: %s", ErrNoAccount, id)
	case id == "":
		id = SoleOwner(na.Keys, owners)
	}
	if id == "" {
		id, rep.Created = uuid.New().String(), true
	}
	rep.CharmID = id
	now := time.Now().UTC()
	add := &User{CharmID: id, Name: na.Name, Seqs: map[string]uint64{}}
	if rep.Created {
		add.CreatedAt = &now
	}
	for _, k := range na.Keys {
		if owners[k] == id {
			rep.Already = append(rep.Already, Fingerprint(k))
		} else {
			rep.Added = append(rep.Added, Fingerprint(k))
		}
		add.Keys = append(add.Keys, &Key{Key: k, CreatedAt: &now})
	}
	union, conflicts := Merge(append(sources, Source{Name: "requested", Snap: &Snapshot{Users: []*User{add}}}))
	// Only this account is written (with what any file has of it), and
	// only its conflicts count: others are for `accounts sync`.
	if conflicts = conflictsOf(conflicts, id); len(conflicts) > 0 {
		rep.Conflicts = conflicts
		return rep, ErrConflicts
	}
	if union == nil {
		// Conflicts elsewhere: merge this account alone.
		if union, _ = Merge(append(sourcesOf(sources, id), Source{Name: "requested", Snap: &Snapshot{Users: []*User{add}}})); union == nil {
			return nil, errors.New("merge failed") // unreachable: its conflicts were checked
		}
	}
	one := &Snapshot{}
	for _, u := range union.Users {
		if u.CharmID == id {
			one.Users = append(one.Users, u)
		}
	}
	rep.Files, err = locked.apply(ctx, one, dryRun)
	for _, f := range rep.Files {
		if f.UsersUpdated > 0 {
			rep.Named = true
		}
	}
	if rep.Files == nil && err != nil {
		return nil, err
	}
	return rep, err
}

// SoleOwner is the one account every key already belongs to (owners: key
// → charm ID), or "".
func SoleOwner(keys []string, owners map[string]string) string {
	owner := ""
	for _, k := range keys {
		o, ok := owners[k]
		if !ok || (owner != "" && o != owner) {
			return ""
		}
		owner = o
	}
	return owner
}

// conflictsOf keeps the conflicts that involve account id.
func conflictsOf(cs []Conflict, id string) []Conflict {
	var out []Conflict
	for _, c := range cs {
		if slices.Contains(c.Values, id) || c.What == "name of "+id || c.What == "email of "+id || c.What == "bio of "+id {
			out = append(out, c)
		}
	}
	return out
}

// sourcesOf is sources with only account id in each.
func sourcesOf(sources []Source, id string) []Source {
	var out []Source
	for _, src := range sources {
		snap := &Snapshot{}
		for _, u := range src.Snap.Users {
			if u.CharmID == id {
				snap.Users = append(snap.Users, u)
			}
		}
		out = append(out, Source{Name: src.Name, Snap: snap})
	}
	return out
}
