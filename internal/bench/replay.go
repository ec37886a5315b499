package bench

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cring-dev/cring/internal/devcluster"
)

// Replay is how fast a node that was away catches up: the last node is
// stopped, Files writes of Size bytes are made through a proxy with
// healing on (default settings) in Dirs directories, the node is started
// again, and the time is taken until the proxy owes it nothing.
type Replay struct {
	Title string `json:"title"`
	Files int    `json:"files"`
	Dirs  int    `json:"directories"`
	Size  int64  `json:"size_bytes"`
	// WritesPerSec: the writes made while the node was down, through the
	// proxy, 8 at a time.
	WritesPerSec float64 `json:"writes_per_sec"`
	Hints        int     `json:"hints"`
	// CatchUpSeconds runs from the node's start until no hint is owed to
	// it; DetectSeconds is the part until the proxy's health check saw it
	// up. HintsPerSec is hints over the rest: the replay's own speed.
	CatchUpSeconds    float64  `json:"catch_up_seconds"`
	DetectSeconds     float64  `json:"detect_seconds"`
	HintsPerSec       float64  `json:"hints_per_sec"`
	ProxyCPUPerHintUs float64  `json:"proxy_cpu_per_hint_us,omitempty"`
	Target            string   `json:"target"`
	Met               bool     `json:"met"`
	Misses            []string `json:"misses,omitempty"`
}

// replayRuns: one directory (as charm kv writes), then a hundred.
var replayRuns = []int{1, 100}

// replays measures hint replay in each shape of replayRuns.
func (e *env) replays(ctx context.Context) ([]*Replay, error) {
	ports, err := devcluster.FreePorts("127.0.0.1", 1)
	if err != nil {
		return nil, err
	}
	px, err := e.startProxy(ctx, net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])), e.nodes, "proxy-replay.log",
		"--server-key", e.dc.KeyPath)
	if err != nil {
		return nil, err
	}
	defer e.stopProxy(px)
	var out []*Replay
	for run, dirs := range replayRuns {
		r, err := e.replay(ctx, px, run, dirs)
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
	return out, nil
}

func (e *env) replay(ctx context.Context, px *proc, run, dirs int) (*Replay, error) {
	o := e.o
	r := &Replay{Files: o.ReplayFiles, Dirs: dirs, Size: o.SmallSize,
		Title: fmt.Sprintf("replay %d × %s in %d director%s", o.ReplayFiles, FormatSize(o.SmallSize), dirs, map[bool]string{true: "y", false: "ies"}[dirs == 1])}
	node := e.dc.Nodes[len(e.dc.Nodes)-1]
	name := strings.TrimPrefix(e.nodes[len(e.nodes)-1], "http://") // the proxy names --host nodes so
	e.logf("%s: stopping %s", r.Title, node.Name)
	if err := e.dc.Stop(node); err != nil {
		return nil, err
	}
	if err := e.waitStatus(ctx, px, 30*time.Second, func(st *replayStatus) bool { return !st.healthy(name) }); err != nil {
		return nil, fmt.Errorf("%s not seen down: %w", node.Name, err)
	}
	before, err := e.replayStatus(ctx, px)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range o.SmallConc {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= r.Files || ctx.Err() != nil {
					return
				}
				p := fmt.Sprintf("bench/replay%d/d%d/%d", run, i%dirs, i)
				if err := e.upload(ctx, px.url, p, o.SmallSize); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	r.WritesPerSec = float64(r.Files) / time.Since(start).Seconds()
	// Writes answered at quorum hint the node once their last replica
	// is settled: wait until every hint is recorded.
	var owed int
	if err := e.waitStatus(ctx, px, 30*time.Second, func(st *replayStatus) bool {
		owed = st.Heal.HintsPending[name] - before.Heal.HintsPending[name]
		return owed >= r.Files
	}); err != nil {
		return nil, fmt.Errorf("%d of %d hints recorded: %w", owed, r.Files, err)
	}
	r.Hints = owed
	e.logf("%s: %d writes at %.0f/s, %d hints; starting %s", r.Title, r.Files, r.WritesPerSec, r.Hints, node.Name)
	cpu0, cpuOK := px.cpu()
	start = time.Now()
	if err := e.dc.Start(ctx, node); err != nil {
		return nil, err
	}
	var detect time.Duration
	err = e.waitStatus(ctx, px, 30*time.Minute, func(st *replayStatus) bool {
		if detect == 0 && st.healthy(name) {
			detect = time.Since(start)
		}
		return detect > 0 && st.Heal.HintsPending[name] == 0
	})
	if err != nil {
		return nil, fmt.Errorf("%s did not catch up: %w", node.Name, err)
	}
	took := time.Since(start)
	cpu1, cpuOK1 := px.cpu()
	r.CatchUpSeconds, r.DetectSeconds = took.Seconds(), detect.Seconds()
	r.HintsPerSec = float64(r.Hints) / max(took-detect, time.Millisecond).Seconds()
	if cpuOK && cpuOK1 {
		r.ProxyCPUPerHintUs = float64((cpu1 - cpu0).Microseconds()) / float64(r.Hints)
	}
	e.logf("%s: caught up in %.1f s (%.1f s to see it up), %.0f hints/s", r.Title, r.CatchUpSeconds, r.DetectSeconds, r.HintsPerSec)
	r.Target = "caught up ≤ 60 s (≥ 170 hints/s)"
	if took > time.Minute {
		r.Misses = append(r.Misses, fmt.Sprintf("caught up in %.1f s > 60 s", r.CatchUpSeconds))
	}
	if r.HintsPerSec < 170 {
		r.Misses = append(r.Misses, fmt.Sprintf("%.0f hints/s < 170", r.HintsPerSec))
	}
	r.Met = len(r.Misses) == 0
	return r, nil
}

// replayStatus is what the replay reads of the proxy's /status.
type replayStatus struct {
	Nodes []struct {
		Name    string `json:"name"`
		Healthy bool   `json:"healthy"`
	} `json:"nodes"`
	Heal struct {
		HintsPending map[string]int `json:"hints_pending"`
	} `json:"heal"`
}

func (s *replayStatus) healthy(node string) bool {
	for _, n := range s.Nodes {
		if n.Name == node {
			return n.Healthy
		}
	}
	return false
}

func (e *env) replayStatus(ctx context.Context, px *proc) (*replayStatus, error) {
	st := &replayStatus{}
	return st, e.getStatus(ctx, px, st)
}

// waitStatus polls the proxy's status every 50 ms until cond holds.
func (e *env) waitStatus(ctx context.Context, px *proc, within time.Duration, cond func(*replayStatus) bool) error {
	deadline := time.Now().Add(within)
	for {
		st, err := e.replayStatus(ctx, px)
		if err == nil && cond(st) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s (last error: %v)", within, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
