// Package netns makes test hosts on one machine: each host is a network
// namespace with an address of its own, joined by a veth pair to a bridge
// in a hub namespace that belongs to the same Net. Nothing is added to the
// caller's namespace, so hosts are reachable only from inside a host
// (processes started with Host.Command, or Host.DialContext) and two Nets
// never see each other, even with the same addresses.
//
// Links between two hosts can be cut (packets dropped both ways), made to
// answer TCP with resets, or delayed; the rules live in the host's own
// firewall (iptables), so one proxy can lose nodes another still reaches.
// Names carry the creating process's id, and New removes what a process
// that died without cleaning up left behind. Needs root, ip (iproute2) and
// iptables; scripts/install-netns installs them. See docs/chaos.md.
package netns

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// runDir is where `ip netns` keeps its named namespaces.
const runDir = "/run/netns"

// namePrefix starts every namespace this package creates; the creator's
// process id follows it.
const namePrefix = "cring-"

// subnet is every Net's address range: private to its hub, so it never
// collides with another Net's or with the machine's own addresses.
var subnet = netip.MustParsePrefix("10.231.0.0/24")

// hostName is what a host may be called (it goes into namespace names).
var hostName = regexp.MustCompile(`^[a-z][a-z0-9]{0,15}$`)

// Net is a set of test hosts on one bridge.
type Net struct {
	id  string // cring-<pid>-<random>
	hub string // the hub namespace's name

	mu     sync.Mutex
	hosts  []*Host
	closed bool
}

// Host is one test host: a network namespace with one address.
type Host struct {
	Name string     // as given to AddHost
	NS   string     // the namespace's name (ip netns)
	Addr netip.Addr // its address on the Net

	net *Net
	fd  int // the namespace, open for entering it

	mu     sync.Mutex
	links  map[*Host]*link // this host's rules for traffic with a peer
	queues uint16          // NFQUEUE numbers handed out (per namespace)
}

// link is what this host does to traffic with one peer.
type link struct {
	fault LinkFault
	delay time.Duration
	queue *delayQueue
}

// LinkFault is what a host does to one peer's traffic.
type LinkFault int

// Link faults.
const (
	LinkClear LinkFault = iota
	LinkCut             // every packet dropped, both ways: the peer is gone, connections hang
	LinkReset           // every TCP packet from the peer answered with a reset
	LinkDelay           // every packet from the peer held before it is delivered
)

// New makes an empty Net (its hub and bridge) and first removes the
// namespaces of Nets whose creating process is gone.
func New() (*Net, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("netns: test hosts need root (network namespaces, veth, iptables)")
	}
	for _, tool := range []string{"ip", "iptables-restore"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("netns: %s not found (scripts/install-netns installs it): %w", tool, err)
		}
	}
	if err := SweepStale(); err != nil {
		return nil, err
	}
	var r [4]byte
	if _, err := rand.Read(r[:]); err != nil {
		return nil, fmt.Errorf("netns: %w", err)
	}
	n := &Net{id: fmt.Sprintf("%s%d-%s", namePrefix, os.Getpid(), hex.EncodeToString(r[:]))}
	n.hub = n.id + "-hub"
	if err := run("ip", "netns", "add", n.hub); err != nil {
		return nil, fmt.Errorf("netns: hub: %w", err)
	}
	if err := runIn(n.hub, "link add br0 type bridge\nlink set br0 up\n", "ip", "-batch", "-"); err != nil {
		n.Close()
		return nil, fmt.Errorf("netns: hub bridge: %w", err)
	}
	return n, nil
}

// AddHost makes a host called name (lowercase letters and digits) with the
// next free address, linked to the bridge.
func (n *Net) AddHost(name string) (*Host, error) {
	if !hostName.MatchString(name) {
		return nil, fmt.Errorf("netns: host name %q: want a lowercase letter, then up to 15 letters or digits", name)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, errors.New("netns: net is closed")
	}
	addr := subnet.Addr()
	for range len(n.hosts) + 1 {
		addr = addr.Next()
	}
	if !subnet.Contains(addr.Next()) {
		return nil, fmt.Errorf("netns: no address left for host %s", name)
	}
	for _, h := range n.hosts {
		if h.Name == name {
			return nil, fmt.Errorf("netns: host %s exists", name)
		}
	}
	h := &Host{Name: name, NS: n.id + "-" + name, Addr: addr, net: n, fd: -1, links: map[*Host]*link{}}
	if err := run("ip", "netns", "add", h.NS); err != nil {
		return nil, fmt.Errorf("netns: host %s: %w", name, err)
	}
	n.hosts = append(n.hosts, h) // from here Close removes it
	// Made right in the two namespaces: no interface ever appears in the
	// caller's, so no name there can collide.
	port := fmt.Sprintf("h%d", len(n.hosts))
	if err := run("ip", "link", "add", "name", "eth0", "netns", h.NS, "type", "veth", "peer", "name", port, "netns", n.hub); err != nil {
		return nil, fmt.Errorf("netns: host %s: veth: %w", name, err)
	}
	if err := runIn(n.hub, "", "ip", "link", "set", port, "master", "br0", "up"); err != nil {
		return nil, fmt.Errorf("netns: host %s: bridge port: %w", name, err)
	}
	cfg := fmt.Sprintf("link set lo up\naddr add %s/%d dev eth0\nlink set eth0 up\n", addr, subnet.Bits())
	if err := runIn(h.NS, cfg, "ip", "-batch", "-"); err != nil {
		return nil, fmt.Errorf("netns: host %s: address: %w", name, err)
	}
	fd, err := unix.Open(filepath.Join(runDir, h.NS), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("netns: host %s: %w", name, err)
	}
	h.fd = fd
	return h, nil
}

// Hosts are the net's hosts in the order they were added.
func (n *Net) Hosts() []*Host {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.hosts)
}

// Command runs name inside the host (`ip netns exec`, which execs it: the
// command's process is the program itself, so signals reach it).
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// CommandContext is Command bound to ctx.
func (h *Host) CommandContext(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// String is the host's name and address.
func (h *Host) String() string { return fmt.Sprintf("%s(%s)", h.Name, h.Addr) }

// Cut drops every packet between h and each peer, both ways, at h: h and
// the peers no longer reach each other, and every other host is
// unaffected (an asymmetric partition when peers are some of many).
func (h *Host) Cut(peers ...*Host) error { return h.set(LinkCut, 0, peers) }

// Reset makes h answer every TCP packet from each peer with a reset: the
// peer's connections to h are refused or reset at once.
func (h *Host) Reset(peers ...*Host) error { return h.set(LinkReset, 0, peers) }

// Delay holds every packet from each peer for d before h takes it: every
// round trip between h and a peer takes d longer. (The machines' kernel
// has no netem; the packets wait in an NFQUEUE this process releases.)
func (h *Host) Delay(d time.Duration, peers ...*Host) error {
	if d <= 0 {
		return fmt.Errorf("netns: delay %s: want more than zero", d)
	}
	return h.set(LinkDelay, d, peers)
}

// Heal clears what h does to each peer's traffic (every peer's when none
// is named).
func (h *Host) Heal(peers ...*Host) error {
	if len(peers) == 0 {
		h.mu.Lock()
		for p := range h.links {
			peers = append(peers, p)
		}
		h.mu.Unlock()
		if len(peers) == 0 {
			return nil
		}
	}
	return h.set(LinkClear, 0, peers)
}

// FaultOn is what h does to peer's traffic now, and the delay.
func (h *Host) FaultOn(peer *Host) (LinkFault, time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if l := h.links[peer]; l != nil {
		return l.fault, l.delay
	}
	return LinkClear, 0
}

// set gives each peer's traffic fault f and applies h's rules at once.
func (h *Host) set(f LinkFault, d time.Duration, peers []*Host) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fd < 0 {
		return fmt.Errorf("netns: host %s is closed", h.Name)
	}
	for _, p := range peers {
		if p == h || p.net != h.net {
			return fmt.Errorf("netns: %s cannot have a link fault with %s", h.Name, p.Name)
		}
	}
	var (
		stale   []*delayQueue // closed once the rules no longer send to them
		changed bool
		err     error
	)
	for _, p := range peers {
		old := h.links[p]
		if (old == nil && f == LinkClear) || (old != nil && old.fault == f && old.delay == d) {
			continue
		}
		nl := &link{fault: f, delay: d}
		if f == LinkDelay {
			h.queues++
			q, qerr := openDelayQueue(h.fd, h.queues, d)
			if qerr != nil {
				err = fmt.Errorf("netns: %s: delay from %s: %w", h.Name, p.Name, qerr)
				break // the peers done so far still get their rules
			}
			nl.queue = q
		}
		if old != nil && old.queue != nil {
			stale = append(stale, old.queue)
		}
		if f == LinkClear {
			delete(h.links, p)
		} else {
			h.links[p] = nl
		}
		changed = true
	}
	if changed {
		err = errors.Join(err, h.applyLocked())
	}
	for _, q := range stale {
		q.close()
	}
	return err
}

// applyLocked replaces h's firewall rules with what its links say, in one
// iptables-restore transaction.
func (h *Host) applyLocked() error {
	peers := make([]*Host, 0, len(h.links))
	for p := range h.links {
		peers = append(peers, p)
	}
	slices.SortFunc(peers, func(a, b *Host) int { return a.Addr.Compare(b.Addr) })
	var b strings.Builder
	b.WriteString("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n")
	for _, p := range peers {
		l := h.links[p]
		switch l.fault {
		case LinkCut:
			fmt.Fprintf(&b, "-A INPUT -s %s/32 -j DROP\n-A OUTPUT -d %s/32 -j DROP\n", p.Addr, p.Addr)
		case LinkReset:
			fmt.Fprintf(&b, "-A INPUT -s %s/32 -p tcp -j REJECT --reject-with tcp-reset\n", p.Addr)
		case LinkDelay:
			// --queue-bypass: should the queue ever be gone, packets pass
			// rather than vanish (a delay must not become a cut).
			fmt.Fprintf(&b, "-A INPUT -s %s/32 -j NFQUEUE --queue-num %d --queue-bypass\n", p.Addr, l.queue.num)
		}
	}
	b.WriteString("COMMIT\n")
	if err := runIn(h.NS, b.String(), "iptables-restore", "-w"); err != nil {
		return fmt.Errorf("netns: %s: rules: %w", h.Name, err)
	}
	return nil
}

// Close stops every process still running in the net's hosts, and removes
// the hosts, their links and the hub. It is safe to call more than once.
func (n *Net) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	hosts := n.hosts
	n.mu.Unlock()
	var errs []error
	for _, h := range hosts {
		h.mu.Lock()
		for _, l := range h.links {
			if l.queue != nil {
				l.queue.close()
			}
		}
		h.links = map[*Host]*link{}
		if h.fd >= 0 {
			unix.Close(h.fd)
			h.fd = -1
		}
		h.mu.Unlock()
		errs = append(errs, remove(h.NS))
	}
	errs = append(errs, remove(n.hub))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("netns: close: %w", err)
	}
	return nil
}

// remove kills whatever still runs in namespace ns and deletes it. A
// namespace already gone is fine.
func remove(ns string) error {
	if _, err := os.Stat(filepath.Join(runDir, ns)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if err := run("ip", "netns", "del", ns); err != nil {
		return fmt.Errorf("remove %s: %w", ns, err)
	}
	return nil
}

// stale matches this package's namespace names, capturing the creator's pid.
var stale = regexp.MustCompile(`^` + namePrefix + `(\d+)-[0-9a-f]+-`)

// SweepStale removes every namespace a Net of a process that no longer
// runs left behind (it was killed before it could clean up).
func SweepStale() error {
	ents, err := os.ReadDir(runDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("netns: sweep: %w", err)
	}
	var errs []error
	for _, e := range ents {
		m := stale.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue // its creator still runs (or we can't tell): not ours to take
		}
		errs = append(errs, remove(e.Name()))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("netns: sweep: %w", err)
	}
	return nil
}

// Namespaces lists the namespaces of Nets this process created that still
// exist (for tests that check nothing was left behind).
func Namespaces() ([]string, error) {
	ents, err := os.ReadDir(runDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("netns: %w", err)
	}
	own := fmt.Sprintf("%s%d-", namePrefix, os.Getpid())
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), own) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

func run(name string, args ...string) error {
	return runStdin("", name, args...)
}

// runIn runs a tool inside namespace ns with stdin.
func runIn(ns, stdin, name string, args ...string) error {
	if name == "ip" {
		return runStdin(stdin, "ip", append([]string{"-n", ns}, args...)...)
	}
	return runStdin(stdin, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

func runStdin(stdin, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}
