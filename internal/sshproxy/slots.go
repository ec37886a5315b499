package sshproxy

import (
	"net"
	"sync"
)

// Rejection reasons, a closed set (they label metrics).
const (
	RejectMaxConns        = "max_conns"
	RejectMaxConnsPerAddr = "max_conns_per_address"
	RejectNoBackend       = "no_backend"
	RejectHandshake       = "handshake_timeout"
)

// Slots bounds connections in total and per source address, so that one
// address can't hold every slot (docs/design.md, "bounded for every client").
// The zero value admits nothing; set both bounds.
type Slots struct {
	Max     int // connections in total
	PerAddr int // connections from one source address (an IPv6 /64 counts as one)

	mu     sync.Mutex
	total  int
	byAddr map[string]int
}

// Take reserves a slot for a connection from remote. It returns the
// function that gives the slot back (call it once, when the connection
// ends), or the reason there is none.
func (s *Slots) Take(remote net.Addr) (release func(), reason string) {
	key := addrKey(remote)
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.total >= s.Max:
		return nil, RejectMaxConns
	case s.byAddr[key] >= s.PerAddr:
		return nil, RejectMaxConnsPerAddr
	}
	if s.byAddr == nil {
		s.byAddr = map[string]int{}
	}
	s.total++
	s.byAddr[key]++
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.total--
			if s.byAddr[key]--; s.byAddr[key] <= 0 {
				delete(s.byAddr, key)
			}
		})
	}, ""
}

// Used is the number of slots taken.
func (s *Slots) Used() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// addrKey is the source a bound applies to: the IP, or for IPv6 its /64
// (one host commonly has a whole /64 to pick addresses from).
func addrKey(a net.Addr) string {
	var ip net.IP
	switch a := a.(type) {
	case *net.TCPAddr:
		ip = a.IP
	default:
		host, _, err := net.SplitHostPort(a.String())
		if err != nil {
			return a.String()
		}
		ip = net.ParseIP(host)
		if ip == nil {
			return host
		}
	}
	if v4 := ip.To4(); v4 != nil {
		return v4.String()
	}
	return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
}
