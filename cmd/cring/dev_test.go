package main

import (
	"strings"
	"testing"
)

func TestFailoverHint(t *testing.T) {
	for _, tt := range []struct {
		name          string
		nodes, w      int
		admin         string
		want, wantNot []string
	}{
		{name: "default", nodes: 3, w: 2, admin: "127.0.0.1:35356",
			want: []string{"cring dev node stop node1 (the SSH primary)"}, wantNot: []string{"--admin", "503"}},
		{name: "other ports", nodes: 3, w: 2, admin: "127.0.0.1:40003",
			want: []string{"cring dev node stop --admin 127.0.0.1:40003 node1"}},
		{name: "two nodes W=2", nodes: 2, w: 2, admin: "127.0.0.1:35356",
			want: []string{"writes need 2 of 2 nodes and get 503"}},
		{name: "one node", nodes: 1, w: 1, admin: "127.0.0.1:35356",
			want: []string{"nothing to fail over to"}, wantNot: []string{"node stop"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := failoverHint("cring", tt.nodes, tt.w, tt.admin)
			for _, s := range tt.want {
				if !strings.Contains(got, s) {
					t.Errorf("%q lacks %q", got, s)
				}
			}
			for _, s := range tt.wantNot {
				if strings.Contains(got, s) {
					t.Errorf("%q has %q", got, s)
				}
			}
		})
	}
}

func TestProgName(t *testing.T) {
	for arg0, want := range map[string]string{
		"/tmp/go-build123/b001/exe/cring": "go run ./cmd/cring",
		"./cring":                         "./cring",
		"cring":                           "cring",
	} {
		if got := progName(arg0); got != want {
			t.Errorf("progName(%q) = %q, want %q", arg0, got, want)
		}
	}
}
