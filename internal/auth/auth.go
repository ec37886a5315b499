// Package auth verifies Charm JWTs at the proxy's edge, before anything is sent
// to a node: EdDSA signature against the nodes' key set, issuer, audience and
// expiry. The key set is cached and refetched only when a token names a key id
// the cache does not know (rate limited), never per request.
package auth

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	jwt "github.com/golang-jwt/jwt/v4"
	jose "gopkg.in/square/go-jose.v2"
)

// Audience is the audience Charm puts in the tokens its HTTP API accepts.
const Audience = "charm"

// KeySource fetches the nodes' current JSON web key set and the issuer they
// sign tokens with.
type KeySource func(ctx context.Context) (*jose.JSONWebKeySet, string, error)

// Verifier checks bearer tokens.
type Verifier struct {
	source  KeySource
	issuer  string // configured issuer; empty: use the one the nodes announce
	refresh time.Duration
	now     func() time.Time

	mu          sync.Mutex
	verified    map[string]verifiedToken // token → claims, so a client's repeated token costs one signature check
	keys        map[string]ed25519.PublicKey
	discovered  string
	lastFetch   time.Time
	fetchErr    error
	fetchDoneCh chan struct{} // non-nil while a fetch is under way
}

// NewVerifier returns a verifier. issuer may be empty, in which case the
// issuer the nodes announce in their OpenID configuration is required.
func NewVerifier(source KeySource, issuer string) *Verifier {
	return &Verifier{
		source:   source,
		issuer:   strings.TrimRight(issuer, "/"),
		refresh:  time.Second, // an unknown key id refetches at most once a second
		now:      time.Now,
		keys:     map[string]ed25519.PublicKey{},
		verified: map[string]verifiedToken{},
	}
}

type verifiedToken struct {
	subject string
	expires time.Time
}

// maxVerified bounds the cache of good tokens (clients keep one token for an
// hour, so a few thousand cover every active client).
const maxVerified = 4096

// Error is a verification failure; its text is safe to show the client.
type Error struct{ Reason string }

func (e *Error) Error() string { return e.Reason }

// Verify checks an Authorization header value ("bearer <jwt>", any case) and
// returns the token's subject, the user's charm ID.
func (v *Verifier) Verify(ctx context.Context, header string) (string, error) {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(header), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || tok == "" {
		return "", &Error{"missing bearer token"}
	}
	tok = strings.TrimSpace(tok)
	now := v.now()
	v.mu.Lock()
	c, hit := v.verified[tok]
	v.mu.Unlock()
	if hit && now.Before(c.expires) {
		return c.subject, nil
	}
	claims := &jwt.RegisteredClaims{}
	var keyErr error
	parser := jwt.NewParser(jwt.WithValidMethods([]string{"EdDSA"}), jwt.WithoutClaimsValidation())
	_, err := parser.ParseWithClaims(tok, claims, func(t *jwt.Token) (interface{}, error) {
		kid, _ := t.Header["kid"].(string)
		k, err := v.key(ctx, kid)
		if err != nil {
			keyErr = err
		}
		return k, err
	})
	if keyErr != nil {
		var ae *Error
		if errors.As(keyErr, &ae) {
			return "", ae
		}
		return "", fmt.Errorf("verify token: %w", keyErr)
	}
	if err != nil {
		return "", &Error{"invalid token: " + err.Error()}
	}
	if claims.ExpiresAt == nil || !claims.VerifyExpiresAt(now, true) {
		return "", &Error{"token expired"}
	}
	if claims.NotBefore != nil && !claims.VerifyNotBefore(now, true) {
		return "", &Error{"token not valid yet"}
	}
	if !claims.VerifyAudience(Audience, true) {
		return "", &Error{"token audience is not " + Audience}
	}
	iss, err := v.expectedIssuer(ctx)
	if err != nil {
		return "", fmt.Errorf("verify token: %w", err)
	}
	if strings.TrimRight(claims.Issuer, "/") != iss {
		return "", &Error{fmt.Sprintf("token issuer %q is not this cluster's %q", claims.Issuer, iss)}
	}
	if claims.Subject == "" {
		return "", &Error{"token has no subject"}
	}
	if claims.NotBefore == nil || !claims.NotBefore.After(now) {
		v.mu.Lock()
		if len(v.verified) >= maxVerified {
			for k, c := range v.verified { // drop expired ones, else start over
				if !now.Before(c.expires) {
					delete(v.verified, k)
				}
			}
			if len(v.verified) >= maxVerified {
				clear(v.verified)
			}
		}
		v.verified[tok] = verifiedToken{subject: claims.Subject, expires: claims.ExpiresAt.Time}
		v.mu.Unlock()
	}
	return claims.Subject, nil
}

// Issuer returns the issuer tokens must carry (fetching it if it is discovered).
func (v *Verifier) expectedIssuer(ctx context.Context) (string, error) {
	if v.issuer != "" {
		return v.issuer, nil
	}
	v.mu.Lock()
	d := v.discovered
	v.mu.Unlock()
	if d != "" {
		return d, nil
	}
	if err := v.fetch(ctx, true); err != nil {
		return "", err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.discovered, nil
}

func (v *Verifier) key(ctx context.Context, kid string) (ed25519.PublicKey, error) {
	v.mu.Lock()
	k, ok := v.lookup(kid)
	v.mu.Unlock()
	if ok {
		return k, nil
	}
	if err := v.fetch(ctx, false); err != nil {
		return nil, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if k, ok := v.lookup(kid); ok {
		return k, nil
	}
	return nil, &Error{fmt.Sprintf("token signed by unknown key %q", kid)}
}

// lookup finds a key by id; a token without kid matches when the set has one key.
func (v *Verifier) lookup(kid string) (ed25519.PublicKey, bool) {
	if kid == "" && len(v.keys) == 1 {
		for _, k := range v.keys {
			return k, true
		}
	}
	k, ok := v.keys[kid]
	return k, ok
}

// fetch refreshes the key set, at most once per refresh interval unless the
// cache is empty; concurrent callers share one fetch.
func (v *Verifier) fetch(ctx context.Context, force bool) error {
	v.mu.Lock()
	if ch := v.fetchDoneCh; ch != nil {
		v.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		v.mu.Lock()
		defer v.mu.Unlock()
		return v.fetchErr
	}
	if !force && len(v.keys) > 0 && v.now().Sub(v.lastFetch) < v.refresh {
		v.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	v.fetchDoneCh = ch
	v.mu.Unlock()

	set, iss, err := v.source(ctx)
	keys := map[string]ed25519.PublicKey{}
	if err == nil {
		for _, k := range set.Keys {
			if pk, ok := k.Key.(ed25519.PublicKey); ok {
				keys[k.KeyID] = pk
			}
		}
		if len(keys) == 0 {
			err = errors.New("nodes published no ed25519 keys")
		}
	}

	v.mu.Lock()
	defer v.mu.Unlock()
	v.fetchDoneCh = nil
	close(ch)
	v.lastFetch = v.now()
	v.fetchErr = err
	if err != nil {
		return fmt.Errorf("fetch key set: %w", err)
	}
	v.keys = keys
	clear(v.verified) // a key may be gone: check tokens again
	if iss != "" {
		v.discovered = strings.TrimRight(iss, "/")
	}
	return nil
}

// Prime fetches the key set once so the first request doesn't pay for it.
func (v *Verifier) Prime(ctx context.Context) error { return v.fetch(ctx, true) }

// DiscoveredIssuer is the issuer the nodes announced, if known.
func (v *Verifier) DiscoveredIssuer() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.discovered
}
