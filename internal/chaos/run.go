package chaos

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/cring-dev/cring/internal/netns"
)

// executor carries out a fault plan in real time against the cluster.
type executor struct {
	c     *cluster
	o     Options
	start time.Time
}

// step is one half of a fault: its beginning or its end.
type step struct {
	at    time.Duration
	fault Fault
	begin bool
}

// steps orders the plan's beginnings and ends in time (an end before a
// beginning at the same instant).
func steps(plan []Fault) []step {
	var out []step
	for _, f := range plan {
		out = append(out, step{f.At, f, true}, step{f.end(), f, false})
	}
	slices.SortStableFunc(out, func(a, b step) int {
		if a.at != b.at {
			return cmp.Compare(a.at, b.at)
		}
		if a.begin == b.begin {
			return 0
		}
		if a.begin {
			return 1
		}
		return -1
	})
	return out
}

// run applies every step at its time; it returns when the plan is done or
// ctx ends. A step that fails to apply (a node that won't restart) ends
// the run with an error: the results would not mean what they say.
func (e *executor) run(ctx context.Context, plan []Fault) error {
	for _, s := range steps(plan) {
		t := time.NewTimer(time.Until(e.start.Add(s.at)))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		verb := "ends"
		if s.begin {
			verb = "begins"
		}
		e.o.logf("fault %s: %s", verb, s.fault)
		if err := e.apply(ctx, s); err != nil {
			return fmt.Errorf("fault %s: %w", s.fault, err)
		}
	}
	return nil
}

func (e *executor) apply(ctx context.Context, s step) error {
	f := s.fault
	if hostOnly(f.Kind) {
		return e.applyLink(s)
	}
	for _, t := range f.Targets {
		if onProxy(f.Kind) {
			p := e.c.proxies[t]
			switch {
			case s.begin && f.Kind == DestroyProxy:
				fresh, err := p.destroy()
				if err != nil {
					return err
				}
				e.o.logf("%s destroyed with its data dir; a fresh one starts on %s when the fault ends", p.name, fresh)
			case s.begin:
				p.proc.kill()
			default:
				if err := p.proc.heal(ctx); err != nil {
					return err
				}
			}
			continue
		}
		n := e.c.nodes[t]
		var err error
		switch {
		case f.Kind == KillNode && s.begin:
			n.proc.kill()
		case f.Kind == KillNode:
			err = n.proc.heal(ctx)
		case f.Kind == StopNode && s.begin:
			err = n.proc.signal(syscall.SIGSTOP)
		case f.Kind == StopNode:
			err = n.proc.signal(syscall.SIGCONT)
		case !s.begin:
			err = n.front.clear()
		case f.Kind == Latency:
			err = n.front.latency(f.Delay)
		case f.Kind == Blackhole:
			err = n.front.blackhole()
		case f.Kind == Reset:
			err = n.front.reset()
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// applyLink begins or ends a fault on one proxy's links to its target
// nodes: the rules are in the proxy's host, so the other proxies still
// reach those nodes.
func (e *executor) applyLink(s step) error {
	f := s.fault
	if e.c.hosts == nil {
		return fmt.Errorf("%s needs test hosts", f.Kind)
	}
	p := e.c.hosts.proxies[f.Proxy]
	var nodes []*netns.Host
	for _, t := range f.Targets {
		nodes = append(nodes, e.c.hosts.nodes[t])
	}
	switch {
	case !s.begin:
		return p.Heal(nodes...)
	case f.Kind == PartitionProxy:
		return p.Cut(nodes...)
	default: // LinkLatency: the nodes' answers reach the proxy late
		return p.Delay(f.Delay, nodes...)
	}
}

// impaired describes what is wrong right now, for progress lines.
func (c *cluster) impaired() string {
	var s []string
	for _, n := range c.nodes {
		switch {
		case !n.proc.running():
			s = append(s, n.name+" down")
		case n.proc.isStopped():
			s = append(s, n.name+" stopped")
		case n.front.state() != "":
			s = append(s, n.name+" "+n.front.state())
		}
	}
	for _, p := range c.proxies {
		if !p.proc.running() {
			s = append(s, p.name+" down")
		}
	}
	if c.hosts != nil {
		s = append(s, c.hosts.links()...)
	}
	if len(s) == 0 {
		return "no faults"
	}
	return strings.Join(s, ", ")
}
