package auth_test

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/charmbracelet/keygen"
	jwt "github.com/golang-jwt/jwt/v4"
	gossh "golang.org/x/crypto/ssh"
	jose "gopkg.in/square/go-jose.v2"

	"github.com/cring-dev/cring/internal/auth"
	"github.com/cring-dev/cring/internal/token"
)

const issuer = "http://proxy.test:35354"

type key struct {
	signer *token.Signer
	jwk    jose.JSONWebKey
}

func newKey(t *testing.T) key {
	t.Helper()
	kp, err := keygen.New(filepath.Join(t.TempDir(), "k"), keygen.WithKeyType(keygen.Ed25519))
	if err != nil {
		t.Fatal(err)
	}
	s, err := token.NewSigner(kp.RawPrivateKey())
	if err != nil {
		t.Fatal(err)
	}
	raw, err := gossh.ParseRawPrivateKey(kp.RawPrivateKey())
	if err != nil {
		t.Fatal(err)
	}
	pk := *raw.(*ed25519.PrivateKey)
	sum := sha256.Sum256(pk)
	return key{s, jose.JSONWebKey{Key: pk.Public(), KeyID: fmt.Sprintf("%x", sum), Algorithm: "EdDSA"}}
}

// source serves whatever keys are current and counts fetches.
type source struct {
	keys    atomic.Pointer[[]jose.JSONWebKey]
	fetches atomic.Int64
	fail    atomic.Bool
}

func (s *source) fetch(ctx context.Context) (*jose.JSONWebKeySet, string, error) {
	s.fetches.Add(1)
	if s.fail.Load() {
		return nil, "", errors.New("all nodes down")
	}
	return &jose.JSONWebKeySet{Keys: *s.keys.Load()}, issuer, nil
}

func claims(mod func(*jwt.RegisteredClaims)) jwt.RegisteredClaims {
	c := jwt.RegisteredClaims{Subject: "user-1", Issuer: issuer, Audience: jwt.ClaimStrings{"charm"},
		ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}
	if mod != nil {
		mod(&c)
	}
	return c
}

func TestVerify(t *testing.T) {
	k, other := newKey(t), newKey(t)
	src := &source{}
	src.keys.Store(&[]jose.JSONWebKey{k.jwk})
	for _, configured := range []string{issuer, ""} { // explicit and discovered issuer
		v := auth.NewVerifier(src.fetch, configured)
		for _, tt := range []struct {
			name   string
			signer *token.Signer
			c      jwt.RegisteredClaims
			header string
			ok     bool
		}{
			{name: "valid", signer: k.signer, c: claims(nil), ok: true},
			{name: "expired", signer: k.signer, c: claims(func(c *jwt.RegisteredClaims) { c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Second)) })},
			{name: "no expiry", signer: k.signer, c: claims(func(c *jwt.RegisteredClaims) { c.ExpiresAt = nil })},
			{name: "wrong issuer", signer: k.signer, c: claims(func(c *jwt.RegisteredClaims) { c.Issuer = "http://evil" })},
			{name: "wrong audience", signer: k.signer, c: claims(func(c *jwt.RegisteredClaims) { c.Audience = jwt.ClaimStrings{"glow"} })},
			{name: "no subject", signer: k.signer, c: claims(func(c *jwt.RegisteredClaims) { c.Subject = "" })},
			{name: "not yet valid", signer: k.signer, c: claims(func(c *jwt.RegisteredClaims) { c.NotBefore = jwt.NewNumericDate(time.Now().Add(time.Hour)) })},
			{name: "foreign key", signer: other.signer, c: claims(nil)},
			{name: "no header", header: " "},
			{name: "basic auth", header: "Basic dXNlcjpwYXNz"},
			{name: "garbage", header: "bearer abc.def.ghi"},
		} {
			t.Run(fmt.Sprintf("%s/issuer=%q", tt.name, configured), func(t *testing.T) {
				h := tt.header
				if tt.signer != nil {
					tok, err := tt.signer.SignClaims(tt.c)
					if err != nil {
						t.Fatal(err)
					}
					h = "Bearer " + tok
				}
				sub, err := v.Verify(context.Background(), h)
				if tt.ok {
					if err != nil || sub != "user-1" {
						t.Fatalf("Verify = %q, %v; want user-1", sub, err)
					}
					return
				}
				var ae *auth.Error
				if !errors.As(err, &ae) {
					t.Fatalf("Verify = %q, %v; want an *auth.Error (401)", sub, err)
				}
			})
		}
	}
}

// TestKeyCache: the key set is fetched once, not per request; an unknown key
// id triggers a refetch (key rotation) at most once per interval; a source
// failure is not a 401.
func TestKeyCache(t *testing.T) {
	k1, k2, stranger := newKey(t), newKey(t), newKey(t)
	src := &source{}
	src.keys.Store(&[]jose.JSONWebKey{k1.jwk})
	v := auth.NewVerifier(src.fetch, issuer)
	// The verifier's clock stands still unless the test moves it: the
	// refetch interval (a second) is then exact, whatever the machine's load.
	now := time.Now()
	auth.SetNow(v, func() time.Time { return now })
	ctx := context.Background()
	tok1, _ := k1.signer.Sign("user-1", issuer, time.Hour)
	for range 100 {
		if _, err := v.Verify(ctx, "bearer "+tok1); err != nil {
			t.Fatal(err)
		}
	}
	if n := src.fetches.Load(); n != 1 {
		t.Fatalf("100 verifications fetched the key set %d times, want 1", n)
	}
	// Rotation: the nodes now publish k2 too. Within the interval of the
	// last fetch, its token is refused without a fetch; past it, accepted.
	src.keys.Store(&[]jose.JSONWebKey{k1.jwk, k2.jwk})
	tok2, _ := k2.signer.Sign("user-1", issuer, time.Hour)
	var ae *auth.Error
	if _, err := v.Verify(ctx, "bearer "+tok2); !errors.As(err, &ae) || src.fetches.Load() != 1 {
		t.Fatalf("rotated-in key within the refetch interval: %v after %d fetches, want a refusal and no fetch", err, src.fetches.Load())
	}
	now = now.Add(time.Second)
	if _, err := v.Verify(ctx, "bearer "+tok2); err != nil {
		t.Fatalf("token from a rotated-in key: %v", err)
	}
	// A flood of tokens from unknown keys can't make the proxy hammer
	// nodes: none within the interval, one per interval after.
	tokS, _ := stranger.signer.Sign("user-1", issuer, time.Hour)
	for _, step := range []struct {
		after time.Duration
		want  int64
	}{{0, 0}, {time.Second, 1}, {time.Second / 2, 0}} {
		now = now.Add(step.after)
		before := src.fetches.Load()
		for range 50 {
			if _, err := v.Verify(ctx, "bearer "+tokS); err == nil {
				t.Fatal("stranger's token accepted")
			}
		}
		if n := src.fetches.Load() - before; n != step.want {
			t.Fatalf("50 unknown-key tokens %s after a fetch caused %d fetches, want %d", step.after, n, step.want)
		}
	}
	// Nodes unreachable and nothing cached: an internal error, not a 401.
	src.fail.Store(true)
	v2 := auth.NewVerifier(src.fetch, issuer)
	_, err := v2.Verify(ctx, "bearer "+tok1)
	if err == nil || errors.As(err, &ae) {
		t.Fatalf("Verify with no key source = %v, want a non-auth error", err)
	}
}

// TestManyDotsCostNothing: a token of a million dots (CVE-2025-30204) is
// refused without allocating per dot (jwt v4.5.0 split it into a million
// strings, 16 MiB for every such request).
func TestManyDotsCostNothing(t *testing.T) {
	src := &source{}
	src.keys.Store(&[]jose.JSONWebKey{})
	v := auth.NewVerifier(src.fetch, issuer)
	header := "bearer " + strings.Repeat(".", 1<<20)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := v.Verify(context.Background(), header)
	runtime.ReadMemStats(&after)
	var ae *auth.Error
	if !errors.As(err, &ae) {
		t.Fatalf("Verify = %v, want a refusal", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 2<<20 {
		t.Errorf("verifying a token of 1 Mi dots allocated %d MiB, want < 2 MiB", got>>20)
	}
}
