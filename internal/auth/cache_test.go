package auth

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"testing"
	"time"

	jwt "github.com/golang-jwt/jwt/v4"
	jose "gopkg.in/square/go-jose.v2"
)

func cacheFixture(t testing.TB) (*Verifier, func(time.Duration) string) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	set := &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: pub, KeyID: "k1", Algorithm: "EdDSA"}}}
	v := NewVerifier(func(context.Context) (*jose.JSONWebKeySet, string, error) { return set, "http://iss", nil }, "http://iss")
	sign := func(ttl time.Duration) string {
		tk := jwt.NewWithClaims(&jwt.SigningMethodEd25519{}, jwt.RegisteredClaims{
			Subject: "u", Issuer: "http://iss", Audience: jwt.ClaimStrings{"charm"},
			ExpiresAt: jwt.NewNumericDate(time.Now().Add(ttl)),
		})
		tk.Header["kid"] = "k1"
		s, err := tk.SignedString(priv)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	return v, sign
}

// TestVerifiedCacheHonoursExpiry: a cached token stops working when it
// expires, like an uncached one.
func TestVerifiedCacheHonoursExpiry(t *testing.T) {
	v, sign := cacheFixture(t)
	tok := sign(2 * time.Minute)
	if _, err := v.Verify(context.Background(), "bearer "+tok); err != nil {
		t.Fatal(err)
	}
	if _, ok := v.verified[tok]; !ok {
		t.Fatal("good token not cached")
	}
	v.now = func() time.Time { return time.Now().Add(3 * time.Minute) }
	if _, err := v.Verify(context.Background(), "bearer "+tok); err == nil {
		t.Fatal("expired token accepted from the cache")
	}
}

// BenchmarkVerify: the signature check a cached token skips.
func BenchmarkVerify(b *testing.B) {
	v, sign := cacheFixture(b)
	tok := sign(time.Hour)
	b.Run("cached", func(b *testing.B) {
		for range b.N {
			if _, err := v.Verify(context.Background(), "bearer "+tok); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("uncached", func(b *testing.B) {
		for range b.N {
			clear(v.verified)
			if _, err := v.Verify(context.Background(), "bearer "+tok); err != nil {
				b.Fatal(err)
			}
		}
	})
}
