package netns

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cring-dev/cring/internal/testwait"
)

// helperEnv makes the test binary an echo server on the given address
// (TestMain), so a test runs a real process inside a host.
const helperEnv = "NETNS_TEST_ECHO_ADDR"

func TestMain(m *testing.M) {
	if addr := os.Getenv(helperEnv); addr != "" {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "echo helper:", err)
			os.Exit(3)
		}
		fmt.Println("listening") // the test waits for this line
		serveEcho(l)
		return
	}
	os.Exit(m.Run())
}

// serveEcho answers each line with the same line.
func serveEcho(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
}

func newNet(t *testing.T, names ...string) (*Net, []*Host) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("test hosts need root")
	}
	n, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Error(err)
		}
	})
	var hosts []*Host
	for _, name := range names {
		h, err := n.AddHost(name)
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, h)
	}
	return n, hosts
}

// echoIn starts the echo helper as a process inside h, on h's address.
func echoIn(t *testing.T, h *Host, port int) string {
	t.Helper()
	addr := net.JoinHostPort(h.Addr.String(), fmt.Sprint(port))
	cmd := h.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+addr)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "listening\n" {
		t.Fatalf("echo helper in %s: %q, %v", h.Name, line, err)
	}
	return addr
}

// roundTrip dials addr from h and times one echoed line; the dial and the
// exchange get timeout.
func roundTrip(h *Host, addr string, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	c, err := h.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return 0, err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return 0, err
	}
	if line != "ping\n" {
		return 0, fmt.Errorf("echo answered %q", line)
	}
	return time.Since(start), nil
}

// TestHosts: a process runs inside a host on its address and other hosts
// reach it; nothing is added to the caller's namespace.
func TestHosts(t *testing.T) {
	n, hs := newNet(t, "a", "b", "c")
	a, b, c := hs[0], hs[1], hs[2]
	if a.Addr == b.Addr || b.Addr == c.Addr {
		t.Fatalf("addresses collide: %s %s %s", a, b, c)
	}
	addr := echoIn(t, b, 7000)
	for _, from := range []*Host{a, c, b} {
		if _, err := roundTrip(from, addr, 10*time.Second); err != nil {
			t.Errorf("from %s: %v", from.Name, err)
		}
	}
	// Nothing of the net is in the caller's namespace. (Never dial a host
	// from there to check: the caller's default route would send the
	// packets off the machine.)
	out, err := exec.Command("ip", "-o", "addr").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "inet 10.231.") {
		t.Errorf("the caller's namespace has an address of the net:\n%s", out)
	}
	if _, err := n.AddHost("b"); err == nil {
		t.Error("a second host b was made")
	}
}

// TestCut: a cut between a and b stops their traffic while c still reaches
// b and a still reaches c: an asymmetric partition. Healing restores it.
func TestCut(t *testing.T) {
	_, hs := newNet(t, "a", "b", "c")
	a, b, c := hs[0], hs[1], hs[2]
	addrB := echoIn(t, b, 7000)
	addrC := echoIn(t, c, 7000)
	if err := a.Cut(b); err != nil {
		t.Fatal(err)
	}
	if f, _ := a.FaultOn(b); f != LinkCut {
		t.Errorf("a's fault on b is %d, want cut", f)
	}
	if _, err := roundTrip(a, addrB, time.Second); !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
		t.Errorf("a reached b through a cut (or failed otherwise): %v", err)
	}
	if _, err := roundTrip(c, addrB, 10*time.Second); err != nil {
		t.Errorf("c lost b: %v", err)
	}
	if _, err := roundTrip(a, addrC, 10*time.Second); err != nil {
		t.Errorf("a lost c: %v", err)
	}
	if err := a.Heal(); err != nil {
		t.Fatal(err)
	}
	if _, err := roundTrip(a, addrB, 10*time.Second); err != nil {
		t.Errorf("a still cut from b after healing: %v", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestReset: b answers a's connections with resets, at once.
func TestReset(t *testing.T) {
	_, hs := newNet(t, "a", "b", "c")
	a, b, c := hs[0], hs[1], hs[2]
	addr := echoIn(t, b, 7000)
	if err := b.Reset(a); err != nil {
		t.Fatal(err)
	}
	if _, err := roundTrip(a, addr, 10*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("a's connection to b: %v, want refused", err)
	}
	if _, err := roundTrip(c, addr, 10*time.Second); err != nil {
		t.Errorf("c's connection to b: %v", err)
	}
}

// TestDelay: a delay from a to b makes a's round trips to b take at least
// that much longer and leaves c's alone; different links get different
// delays; healing ends it with nothing lost in flight.
func TestDelay(t *testing.T) {
	_, hs := newNet(t, "a", "b", "c")
	a, b, c := hs[0], hs[1], hs[2]
	addr := echoIn(t, b, 7000)
	const slow, slower = 400 * time.Millisecond, 900 * time.Millisecond
	if err := b.Delay(slow, a); err != nil {
		t.Fatal(err)
	}
	if err := b.Delay(slower, c); err != nil {
		t.Fatal(err)
	}
	// A dial and one exchange are two round trips.
	for _, tt := range []struct {
		from *Host
		d    time.Duration
	}{{a, slow}, {c, slower}} {
		took, err := roundTrip(tt.from, addr, 20*time.Second)
		if err != nil {
			t.Fatalf("from %s: %v", tt.from.Name, err)
		}
		if took < 2*tt.d {
			t.Errorf("from %s: %s, want at least %s", tt.from.Name, took, 2*tt.d)
		}
	}
	// A connection open while its delay is lifted keeps working.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := a.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := conn.Write([]byte("in flight\n")); err != nil {
		t.Fatal(err)
	}
	if err := b.Heal(a, c); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(conn).ReadString('\n'); err != nil || line != "in flight\n" {
		t.Errorf("line in flight while healing: %q, %v", line, err)
	}
	// Without the delay, a round trip is fast again (the bound is loose:
	// a loaded machine must not fail it).
	testwait.For(t, 20*time.Second, "a fast round trip from a to b", func() bool {
		took, err := roundTrip(a, addr, 10*time.Second)
		return err == nil && took < slow
	})
}

// TestCloseRemovesEverything: Close leaves no namespace and no process,
// even with processes still running in the hosts and faults in place.
func TestCloseRemovesEverything(t *testing.T) {
	n, hs := newNet(t, "a", "b")
	cmd := hs[0].Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	// `ip netns exec` execs: the process started is sleep itself, so the
	// chaos run's kill -9 and SIGSTOP reach the program.
	testwait.For(t, 10*time.Second, "ip netns exec to exec sleep", func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", cmd.Process.Pid))
		return err == nil && string(b) == "sleep\n"
	})
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	if err := hs[1].Delay(time.Second, hs[0]); err != nil {
		t.Fatal(err)
	}
	if err := hs[0].Cut(hs[1]); err != nil {
		t.Fatal(err)
	}
	names := []string{n.hub, hs[0].NS, hs[1].NS}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Error("the process in host a still runs after Close")
	}
	left, err := Namespaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range names {
		if slices.Contains(left, ns) {
			t.Errorf("namespace %s left after Close", ns)
		}
	}
	if err := n.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := n.AddHost("c"); err == nil {
		t.Error("a host was added to a closed net")
	}
}

// TestSweepStale: namespaces of a creator that no longer runs are removed;
// those of a live one are not.
func TestSweepStale(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("test hosts need root")
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	// A pid that has exited (and, on a busy machine, hopefully not reused
	// yet: then the sweep leaves it and the cleanup below removes it).
	deadNS := fmt.Sprintf("%s%d-00000000-x", namePrefix, dead.Process.Pid)
	liveNS := fmt.Sprintf("%s%d-00000000-y", namePrefix, os.Getpid())
	for _, ns := range []string{deadNS, liveNS} {
		if err := run("ip", "netns", "add", ns); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = remove(ns) })
	}
	if err := SweepStale(); err != nil {
		t.Fatal(err)
	}
	if syscall.Kill(dead.Process.Pid, 0) == syscall.ESRCH {
		if _, err := os.Stat(runDir + "/" + deadNS); err == nil {
			t.Errorf("%s survived the sweep", deadNS)
		}
	}
	if _, err := os.Stat(runDir + "/" + liveNS); err != nil {
		t.Errorf("the sweep removed a live creator's %s: %v", liveNS, err)
	}
}

func TestHostNames(t *testing.T) {
	n, _ := newNet(t, "a")
	for _, bad := range []string{"", "A", "1a", "a-b", strings.Repeat("a", 17)} {
		if _, err := n.AddHost(bad); err == nil {
			t.Errorf("host name %q accepted", bad)
		}
	}
}
