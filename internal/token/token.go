// Package token signs short-lived Charm JWTs with the cluster's shared server
// key, exactly as a node would, so cring's own tools (repair, restore, tests)
// can act for a user through the nodes' normal HTTP API.
package token

import (
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"os"
	"time"

	jwt "github.com/golang-jwt/jwt/v4"
	gossh "golang.org/x/crypto/ssh"
	jose "gopkg.in/square/go-jose.v2"
)

// Signer signs tokens with one ed25519 key.
type Signer struct {
	key ed25519.PrivateKey
	kid string
}

// NewSigner parses an OpenSSH/PEM private key (charm_server_ed25519).
func NewSigner(pemBytes []byte) (*Signer, error) {
	k, err := gossh.ParseRawPrivateKey(pemBytes)
	if err != nil {
		return nil, fmt.Errorf("parse server key: %w", err)
	}
	pk, ok := k.(*ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("server key is %T, want ed25519", k)
	}
	// Same key id as charm's server.NewJSONWebKeyPair.
	sum := sha256.Sum256(*pk)
	return &Signer{key: *pk, kid: fmt.Sprintf("%x", sum)}, nil
}

// LoadSigner reads the key file at path.
func LoadSigner(path string) (*Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read server key: %w", err)
	}
	return NewSigner(b)
}

// Sign returns a token for charmID issued by issuer (the cluster's public
// URL) for the "charm" audience, valid until now+ttl.
func (s *Signer) Sign(charmID, issuer string, ttl time.Duration) (string, error) {
	return s.SignClaims(jwt.RegisteredClaims{
		Subject:   charmID,
		Issuer:    issuer,
		Audience:  jwt.ClaimStrings{"charm"},
		ExpiresAt: jwt.NewNumericDate(time.Now().Add(ttl)),
	})
}

// SignClaims signs arbitrary registered claims (tests use it for expired or
// foreign tokens).
func (s *Signer) SignClaims(c jwt.RegisteredClaims) (string, error) {
	t := jwt.NewWithClaims(&jwt.SigningMethodEd25519{}, c)
	t.Header["kid"] = s.kid
	return t.SignedString(s.key)
}

// JWK is the public half as the nodes publish it (same key id), for
// verifying tokens this key signed.
func (s *Signer) JWK() jose.JSONWebKey {
	return jose.JSONWebKey{Key: s.key.Public(), KeyID: s.kid, Algorithm: "EdDSA"}
}

// In reports whether set holds this key's public half (whatever key id the
// set gives it): whether the nodes publishing set accept tokens it signs.
func (s *Signer) In(set *jose.JSONWebKeySet) bool {
	pub := s.key.Public().(ed25519.PublicKey)
	for _, k := range set.Keys {
		if pk, ok := k.Key.(ed25519.PublicKey); ok && pub.Equal(pk) {
			return true
		}
	}
	return false
}
