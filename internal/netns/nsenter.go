package netns

import (
	"context"
	"fmt"
	"net"
	"runtime"

	"golang.org/x/sys/unix"
)

// inNS runs fn on an OS thread that has entered the network namespace
// open at nsfd. A socket is bound to the namespace it was created in, so
// sockets fn creates (a dial, a listener, a netlink socket) keep working
// in that namespace afterwards, whatever thread uses them.
func inNS(nsfd int, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own network namespace: %w", err)
			return
		}
		defer unix.Close(self)
		if err := unix.Setns(nsfd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		ferr := fn()
		// A thread that could not go back stays locked: the runtime ends
		// it with this goroutine instead of running other goroutines in
		// the wrong namespace.
		if err := unix.Setns(self, unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}

// DialContext connects to address from inside the host, as a process
// running there would: the test's or chaos run's own clients use it to
// reach servers on test hosts without any route from the caller's
// namespace. address must be an IP literal (no resolver runs in the host).
func (h *Host) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := inNS(h.fd, func() error {
		var err error
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s from host %s: %w", address, h.Name, err)
	}
	return c, nil
}

// Listen listens on address inside the host (tests serve from a host
// without starting a process there).
func (h *Host) Listen(network, address string) (net.Listener, error) {
	var l net.Listener
	err := inNS(h.fd, func() error {
		var err error
		l, err = net.Listen(network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s in host %s: %w", address, h.Name, err)
	}
	return l, nil
}
