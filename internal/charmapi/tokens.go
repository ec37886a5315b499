package charmapi

import (
	"fmt"
	"sync"
	"time"

	"github.com/cring-dev/cring/internal/token"
)

// Tokens signs users' tokens with the cluster's server key, as a node
// would, and keeps each until it is close to expiring: one signature per
// user per TTL, not one per request.
type Tokens struct {
	signer *token.Signer
	issuer func() string
	ttl    time.Duration
	renew  time.Duration

	mu sync.Mutex
	m  map[string]signed
}

type signed struct {
	jwt     string
	expires time.Time
}

// NewTokens signs for issuer (the public URL the nodes sign for; a
// function, as a reload may change it) tokens valid for ttl, signing a new
// one once less than renew is left.
func NewTokens(signer *token.Signer, issuer func() string, ttl, renew time.Duration) *Tokens {
	return &Tokens{signer: signer, issuer: issuer, ttl: ttl, renew: renew, m: map[string]signed{}}
}

// Get is a token for charmID.
func (t *Tokens) Get(charmID string) (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s, ok := t.m[charmID]; ok && time.Until(s.expires) > t.renew {
		return s.jwt, nil
	}
	jwt, err := t.signer.Sign(charmID, t.issuer(), t.ttl)
	if err != nil {
		return "", fmt.Errorf("sign token for %s: %w", charmID, err)
	}
	t.m[charmID] = signed{jwt, time.Now().Add(t.ttl)}
	return jwt, nil
}
