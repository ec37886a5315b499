package charmapi

import "testing"

func TestFromListing(t *testing.T) {
	for _, tt := range []struct {
		name, want string
		ok         bool
	}{
		{"plain", "plain", true},
		{"sp%20ace", "sp ace", true},
		{"100%25", "100%", true},
		{"a=b-c_d", "a=b-c_d", true},   // charm's encrypted names: base64 URL alphabet
		{"%C3%A9t%C3%A9", "été", true}, // UTF-8
		{"a%2Fb", "", false},           // one name holding an escaped slash
		{"%41", "", false},             // escaped where a request never is
		{"bad%zz", "", false},          // not an escape at all
		{"sp ace", "", false},          // unescaped: no request stores this
	} {
		got, ok := FromListing(tt.name)
		if got != tt.want || ok != tt.ok {
			t.Errorf("FromListing(%q) = %q, %v; want %q, %v", tt.name, got, ok, tt.want, tt.ok)
		}
		if ok && Escape(got) != tt.name {
			t.Errorf("Escape(%q) = %q, want %q back", got, Escape(got), tt.name)
		}
	}
}
