package restore_test

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/backup"
	"github.com/cring-dev/cring/internal/backup/restore"
)

// TestPlanScope: a scope picks whole path components, never a sibling that
// merely shares a prefix.
func TestPlanScope(t *testing.T) {
	ctx := context.Background()
	tg, err := backup.Open(ctx, backup.Config{URL: "file://" + filepath.Join(t.TempDir(), "b")})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"u1/a", "u1/d/x", "u1/d/y/z", "u1/dx", "u10/a", "u2/d/x"} {
		if err := tg.Put(ctx, k, strings.NewReader(k), int64(len(k)), backup.Meta{Mode: 0o644}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		scope restore.Scope
		want  []string
	}{
		{restore.Scope{}, []string{"u1/a", "u1/d/x", "u1/d/y/z", "u1/dx", "u10/a", "u2/d/x"}},
		{restore.Scope{User: "u1"}, []string{"u1/a", "u1/d/x", "u1/d/y/z", "u1/dx"}},
		{restore.Scope{User: "u1", Prefix: "d"}, []string{"u1/d/x", "u1/d/y/z"}},
		{restore.Scope{User: "u1", Prefix: "d/"}, []string{"u1/d/x", "u1/d/y/z"}},
		{restore.Scope{User: "u1", Prefix: "d/x"}, []string{"u1/d/x"}},
		{restore.Scope{Prefix: "u1"}, []string{"u1/a", "u1/d/x", "u1/d/y/z", "u1/dx"}},
		{restore.Scope{Prefix: "u2/d"}, []string{"u2/d/x"}},
		{restore.Scope{User: "u3"}, nil},
	} {
		objs, err := restore.Plan(ctx, tg, tt.scope, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, o := range objs {
			got = append(got, o.Key)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("%+v: %v, want %v", tt.scope, got, tt.want)
		}
	}
	if _, err := restore.Plan(ctx, tg, restore.Scope{}, time.Now()); err == nil {
		t.Fatal("as-of on a file:// target planned without error")
	}
}
