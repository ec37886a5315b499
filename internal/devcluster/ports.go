package devcluster

import (
	"errors"
	"fmt"
	"net"
	"strconv"
)

// Ports are drawn below Linux's ephemeral range (32768+), so the outgoing
// connections of a busy test can't take a port between the check and the
// server's listen. Each process draws from a block of its own (portBlock):
// test binaries of several packages run at once, and a node a test stops
// and starts again keeps its port, which another process drawing from the
// same range could take meanwhile (a chaos run's node failed to restart so).
const (
	portBase  = 20000
	portSpan  = 12768
	blockSize = 256
	blocks    = portSpan / blockSize
)

// FreePorts returns n currently free TCP ports on host, from this
// process's block.
func FreePorts(host string, n int) ([]int, error) {
	base, size := portBlock()
	// Offsets in turn, with room for a few taken ones to be skipped.
	start := portCursor(base, size, n+8)
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	var ports []int
	for tries := 0; len(ports) < n; tries++ {
		if tries > 1000 {
			return nil, fmt.Errorf("find free port: none free in %d-%d", base, base+size-1)
		}
		p := base + (start+tries)%size
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(p)))
		if err != nil {
			continue
		}
		lns = append(lns, l)
		ports = append(ports, p)
	}
	return ports, nil
}

// FreePortRange returns the first of n consecutive free ports on host,
// drawn like FreePorts.
func FreePortRange(host string, n int) (int, error) {
	base, size := portBlock()
	if n > size {
		return 0, errors.New("find consecutive free ports: more than a block")
	}
	for range 1000 {
		first := base + portCursor(base, size, n)%(size-n+1)
		var lns []net.Listener
		for p := first; p < first+n; p++ {
			l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(p)))
			if err != nil {
				break
			}
			lns = append(lns, l)
		}
		for _, l := range lns {
			l.Close()
		}
		if len(lns) == n {
			return first, nil
		}
	}
	return 0, fmt.Errorf("find %d consecutive free ports: none in %d-%d", n, base, base+size-1)
}
