package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cring-dev/cring/internal/devcluster"
)

// workload measures one workload in every mode that applies to it.
func (e *env) workload(ctx context.Context, name string) (*Workload, error) {
	o := e.o
	direct := e.nodes[:1]
	replicas := e.nodes[:max(1, min(e.replicas, len(e.nodes)))]
	proxy := []string{e.proxyURL}

	w := &Workload{Name: name}
	px := e.proxy // the proxy process measured
	type mode struct {
		name string
		op   op
	}
	var modes []mode
	// fronts, when set, names the process in front of the nodes in each
	// mode (nil: none), measured instead of px; upstream counts the
	// requests a mode's front sent to nodes (nil: one per operation).
	var fronts map[string]*proc
	upstream := map[string]func(context.Context) (float64, bool){}
	switch name {
	case WorkloadUploadSmall, WorkloadUploadLarge:
		size, conc := o.SmallSize, o.SmallConc
		if name == WorkloadUploadLarge {
			size, conc = o.LargeSize, o.LargeConc
		}
		w.Title = fmt.Sprintf("upload %s ×%d", FormatSize(size), conc)
		w.Concurrency, w.Size, w.Baseline = conc, size, ModeLimit
		upload := func(mode string, to []string) op {
			cycle := 0
			if name == WorkloadUploadLarge {
				cycle = 2
			}
			paths := newPaths(fmt.Sprintf("bench/%s/%s", name, mode), cycle)
			return func(ctx context.Context, wk *worker) (int64, error) {
				return size, e.uploadAll(ctx, to, paths.next(wk), size)
			}
		}
		modes = []mode{{ModeDirect, upload(ModeDirect, direct)}, {ModeLimit, upload(ModeLimit, replicas)}, {ModeProxy, upload(ModeProxy, proxy)}}

	case WorkloadReadSmall:
		w.Title = fmt.Sprintf("read %s ×%d", FormatSize(o.SmallSize), o.SmallConc)
		w.Concurrency, w.Size, w.Baseline = o.SmallConc, o.SmallSize, ModeDirect
		files, err := e.readSet(ctx)
		if err != nil {
			return nil, err
		}
		read := func(from string) op { return e.readOp(from, files) }
		modes = []mode{{ModeDirect, read(direct[0])}, {ModeProxy, read(e.proxyURL)}}

	case WorkloadReadSlow, WorkloadUploadSlow:
		// Its own proxy, in front of a fault-injecting node and the
		// others, so the rest of the workloads don't pay for the extra hop.
		front, fpx, stop, err := e.frontedProxy(ctx, name)
		if err != nil {
			return nil, err
		}
		defer stop()
		px = fpx
		w.Concurrency, w.Size, w.Baseline = o.SmallConc, o.SmallSize, ModeHealthy
		w.SlowDelayMs = ms(o.SlowDelay)
		var do op
		if name == WorkloadReadSlow {
			w.Title = fmt.Sprintf("read %s ×%d, 1 node +%s", FormatSize(o.SmallSize), o.SmallConc, o.SlowDelay)
			files, err := e.readSet(ctx)
			if err != nil {
				return nil, err
			}
			do = func(ctx context.Context, wk *worker) (int64, error) {
				n, err := e.get(ctx, px.url, files[wk.rng.IntN(len(files))])
				if err == nil && n != o.SmallSize {
					err = fmt.Errorf("read %d bytes, want %d", n, o.SmallSize)
				}
				return n, err
			}
		} else {
			w.Title = fmt.Sprintf("upload %s ×%d, 1 node +%s", FormatSize(o.SmallSize), o.SmallConc, o.SlowDelay)
			paths := newPaths("bench/"+name, 0)
			do = func(ctx context.Context, wk *worker) (int64, error) {
				return o.SmallSize, e.upload(ctx, px.url, paths.next(wk), o.SmallSize)
			}
		}
		withDelay := func(d time.Duration) op {
			return func(ctx context.Context, wk *worker) (int64, error) {
				front.setDelay(d) // modes take turns: each sets its own
				return do(ctx, wk)
			}
		}
		modes = []mode{{ModeHealthy, withDelay(0)}, {ModeProxy, withDelay(o.SlowDelay)}}

	case WorkloadDegraded:
		// Its own proxy, healing on (so every write misses the down node
		// and is hinted), in front of a node that goes down in proxy mode.
		// Replay is held back so it doesn't weigh on the healthy turns.
		front, fpx, stop, err := e.frontedProxy(ctx, name,
			"--server-key", e.dc.KeyPath, "--health-interval", "200ms", "--repair-rate", "1", "--scan-interval", "24h")
		if err != nil {
			return nil, err
		}
		defer stop()
		px = fpx
		w.Title = fmt.Sprintf("upload %s ×%d, 1 node down", FormatSize(o.SmallSize), o.SmallConc)
		w.Concurrency, w.Size, w.Baseline = o.SmallConc, o.SmallSize, ModeHealthy
		paths := newPaths("bench/"+name, 0)
		withDown := func(down bool) op {
			return func(ctx context.Context, wk *worker) (int64, error) {
				front.setDown(down) // modes take turns: each sets its own
				return o.SmallSize, e.upload(ctx, px.url, paths.next(wk), o.SmallSize)
			}
		}
		modes = []mode{{ModeHealthy, withDown(false)}, {ModeProxy, withDown(true)}}

	case WorkloadScrub:
		// Its own proxy with healing on and a scrub pass starting every
		// second at the default rate, against the main proxy (no scrub).
		ports, err := devcluster.FreePorts("127.0.0.1", 1)
		if err != nil {
			return nil, err
		}
		if px, err = e.startProxy(ctx, net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])), e.nodes, "proxy-"+name+".log",
			"--server-key", e.dc.KeyPath, "--scrub-interval", "1s"); err != nil {
			return nil, err
		}
		defer e.stopProxy(px)
		w.Title = fmt.Sprintf("read %s ×%d, scrub at 8MiB/s per node", FormatSize(o.SmallSize), o.SmallConc)
		w.Concurrency, w.Size, w.Baseline = o.SmallConc, o.SmallSize, ModeHealthy
		files, err := e.readSet(ctx)
		if err != nil {
			return nil, err
		}
		read := func(from string) op { return e.readOp(from, files) }
		modes = []mode{{ModeHealthy, read(e.proxyURL)}, {ModeProxy, read(px.url)}}

	case WorkloadList:
		w.Title = fmt.Sprintf("list %d entries ×%d", o.ListEntries, o.ListConc)
		w.Concurrency, w.Baseline = o.ListConc, ModeDirect
		dir, err := e.listDir(ctx)
		if err != nil {
			return nil, err
		}
		list := func(from ...string) op {
			if len(from) == 1 {
				return func(ctx context.Context, wk *worker) (int64, error) { return e.get(ctx, from[0], dir) }
			}
			return func(ctx context.Context, wk *worker) (int64, error) { return e.getAll(ctx, from, dir) }
		}
		// limit: what a complete listing needs, every node's, asked at
		// once by the client (merging left out). The target compares
		// with one node direct.
		modes = []mode{{ModeDirect, list(direct[0])}, {ModeLimit, list(e.nodes...)}, {ModeProxy, list(e.proxyURL)}}

	case WorkloadMixed:
		w.Title = fmt.Sprintf("mixed %d%% read %s ×%d", o.ReadPercent, FormatSize(o.SmallSize), o.SmallConc)
		w.Concurrency, w.Size, w.Baseline = o.SmallConc, o.SmallSize, ModeLimit
		files, err := e.readSet(ctx)
		if err != nil {
			return nil, err
		}
		mixed := func(mode, from string, to []string) op {
			paths := newPaths(fmt.Sprintf("bench/%s/%s", name, mode), 0)
			return func(ctx context.Context, wk *worker) (int64, error) {
				if wk.rng.IntN(100) < o.ReadPercent {
					return e.get(ctx, from, files[wk.rng.IntN(len(files))])
				}
				return o.SmallSize, e.uploadAll(ctx, to, paths.next(wk), o.SmallSize)
			}
		}
		modes = []mode{
			{ModeDirect, mixed(ModeDirect, direct[0], direct)},
			{ModeLimit, mixed(ModeLimit, direct[0], replicas)},
			{ModeProxy, mixed(ModeProxy, e.proxyURL, proxy)},
		}
	case WorkloadPeersRead, WorkloadPeersUpload:
		ps, err := e.startPeers(ctx)
		if err != nil {
			return nil, err
		}
		w.Concurrency, w.Size, w.Baseline = o.SmallConc, o.SmallSize, ModeFloor
		var do func(mode, base string) op
		if name == WorkloadPeersRead {
			w.Title = fmt.Sprintf("read %s ×%d, peers", FormatSize(o.SmallSize), o.SmallConc)
			files, err := e.readSet(ctx)
			if err != nil {
				return nil, err
			}
			do = func(_, base string) op { return e.readOp(base, files) }
		} else {
			w.Title = fmt.Sprintf("upload %s ×%d, peers", FormatSize(o.SmallSize), o.SmallConc)
			do = func(mode, base string) op {
				paths := newPaths(fmt.Sprintf("bench/%s/%s", name, mode), 0)
				return func(ctx context.Context, wk *worker) (int64, error) {
					return o.SmallSize, e.upload(ctx, base, paths.next(wk), o.SmallSize)
				}
			}
		}
		fronts = map[string]*proc{ModeDirect: nil, ModeProxy: px}
		modes = []mode{{ModeDirect, do(ModeDirect, direct[0])}}
		for _, m := range []string{ModeNginx, ModeHAProxy, ModeFloor} {
			if pp := ps.procs[m]; pp != nil {
				fronts[m] = pp
				modes = append(modes, mode{m, do(m, pp.url)})
			}
		}
		modes = append(modes, mode{ModeProxy, do(ModeProxy, e.proxyURL)})
		upstream[ModeProxy] = func(ctx context.Context) (float64, bool) { return e.nodeRequests(ctx, px) }

	default:
		return nil, fmt.Errorf("unknown workload %q", name)
	}

	// Modes take turns in short slices, so drift on the machine (page
	// cache, disk writeback, a noisy neighbour) touches them all alike.
	rounds := max(1, o.Rounds)
	dur := o.Duration
	if name == WorkloadUploadLarge {
		// A few 64 MiB uploads a second: four times as long, so p99 is
		// taken over ~50 uploads per mode, not the maximum of a dozen.
		dur *= largeRuns
	}
	slice := dur / time.Duration(rounds)
	seed := uint64(time.Now().UnixNano())
	runs := make([]*series, len(modes))
	for k, m := range modes {
		runs[k] = newSeries(m.name, w.Concurrency, seed)
		runs[k].slice(ctx, o.Warmup, m.op)
		runs[k].reset() // the workers go on from where the warm-up left them
	}
	resetPeakRSS(px) // where it can't, the peak is the process's so far
	for round := range rounds {
		// Each round starts with the next mode, so what one mode leaves
		// behind (disk writeback, a proxy's background writes) falls on
		// every other mode alike, not always on the one after it.
		for j := range modes {
			k := (round + j) % len(modes)
			m := modes[k]
			front := px
			if fronts != nil {
				front = fronts[m.name]
			}
			count := upstream[m.name]
			u0, uok := countOf(ctx, count)
			c0 := e.cpuOf(front)
			ops0 := runs[k].opsSoFar()
			runs[k].slice(ctx, slice, m.op)
			c1 := e.cpuOf(front)
			runs[k].cpu.add(c0, c1)
			ops := runs[k].opsSoFar() - ops0
			up := float64(ops)
			if u1, ok := countOf(ctx, count); ok && uok {
				up = u1 - u0
			}
			runs[k].addSlice(ops, up, c0, c1)
			e.sweepTmp()
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
	}
	for k, m := range modes {
		r := runs[k].result()
		if fronts != nil {
			runs[k].medians(r, fronts[m.name] != nil)
		}
		if m.name == ModeProxy || m.name == ModeHealthy {
			if rss, err := e.peakRSS(ctx, px); err == nil {
				r.PeakRSS = rss
			}
		}
		if r.Ops == 0 {
			return nil, fmt.Errorf("%s: no operation succeeded: %s", m.name, r.FirstErr)
		}
		e.logf("%-13s %-7s %9.1f ops/s %8.1f MB/s  p50 %8.2f ms  p99 %8.2f ms  errors %d", name, m.name, r.OpsPerSec, r.MBPerSec, r.P50Ms, r.P99Ms, r.Errors)
		w.Runs = append(w.Runs, r)
	}
	return w, nil
}

// cpuSample is the processes' CPU time, at one moment or summed over
// slices: the bench side (this process and the node processes, if any),
// the nodes alone, and the process in front of them.
type cpuSample struct {
	bench, nodes, proxy time.Duration
	ok                  bool
}

// cpuOf samples this process with the node processes, and px (nil: no
// process in front of the nodes, proxy stays 0).
func (e *env) cpuOf(px *proc) cpuSample {
	b, ok := cpuTime(0)
	var nodes time.Duration
	for _, n := range e.dc.Nodes {
		if pid := n.Pid(); pid != 0 {
			d, nok := cpuTime(pid)
			nodes += d
			ok = ok && nok
		}
	}
	var p time.Duration
	if px != nil {
		var pok bool
		p, pok = px.cpu()
		ok = ok && pok
	}
	return cpuSample{bench: b + nodes, nodes: nodes, proxy: p, ok: ok}
}

// add adds the CPU used between samples c0 and c1.
func (c *cpuSample) add(c0, c1 cpuSample) {
	if !c0.ok || !c1.ok {
		return
	}
	c.ok = true
	c.bench += c1.bench - c0.bench
	c.nodes += c1.nodes - c0.nodes
	c.proxy += c1.proxy - c0.proxy
}

// countOf calls count, if any.
func countOf(ctx context.Context, count func(context.Context) (float64, bool)) (float64, bool) {
	if count == nil {
		return 0, false
	}
	return count(ctx)
}

// nodeRequests is the number of requests proxy px has sent to nodes so
// far, from its cring_node_requests_total.
func (e *env) nodeRequests(ctx context.Context, px *proc) (float64, bool) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, px.admin+"/metrics", nil)
	if err != nil {
		return 0, false
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return 0, false
	}
	return sumMetric(string(b), "cring_node_requests_total")
}

// sumMetric adds up every sample of a metric in Prometheus text format.
func sumMetric(text, name string) (float64, bool) {
	var sum float64
	found := false
	for _, line := range strings.Split(text, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		f := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		sum += v
		found = true
	}
	return sum, found
}

// record puts the CPU per operation in r.
func (c cpuSample) record(r *Result) {
	if !c.ok || r.Ops == 0 || r.Seconds == 0 {
		return
	}
	r.BenchCPUPerOpUs = float64(c.bench.Microseconds()) / float64(r.Ops)
	r.ProxyCPUPerOpUs = float64(c.proxy.Microseconds()) / float64(r.Ops)
	r.CPUBusy = (c.bench + c.proxy).Seconds() / r.Seconds / float64(runtime.NumCPU())
}

// paths names the files uploads write: a new file every time (like charm kv
// backups), or, with cycle > 0, a cycle of that many names per worker that
// are overwritten, to bound the disk large files take.
type paths struct {
	prefix string
	cycle  int
}

func newPaths(prefix string, cycle int) *paths { return &paths{prefix: prefix, cycle: cycle} }

func (p *paths) next(w *worker) string {
	n := w.n
	if p.cycle > 0 {
		n %= p.cycle
	}
	return p.prefix + "/w" + strconv.Itoa(w.id) + "/f" + strconv.Itoa(n)
}

// readSet writes the files reads pick from to every node (so one node
// direct and the proxy can both serve every one), once per run.
func (e *env) readSet(ctx context.Context) ([]string, error) {
	if e.readFiles != nil {
		return e.readFiles, nil
	}
	files := make([]string, e.o.ReadFiles)
	for i := range files {
		files[i] = fmt.Sprintf("bench/read/f%04d", i)
	}
	e.logf("writing %d files of %s to every node for the reads", len(files), FormatSize(e.o.SmallSize))
	if err := e.seed(ctx, files, e.o.SmallSize); err != nil {
		return nil, err
	}
	e.readFiles = files
	return files, nil
}

// listDir writes a directory of ListEntries files to every node and checks
// that one node and the proxy both list all of them.
func (e *env) listDir(ctx context.Context) (string, error) {
	const dir = "bench/list"
	files := make([]string, e.o.ListEntries)
	for i := range files {
		files[i] = fmt.Sprintf("%s/f%04d", dir, i)
	}
	e.logf("writing a directory of %d files to every node for the listings", len(files))
	if err := e.seed(ctx, files, 64); err != nil {
		return "", err
	}
	// A user who never deleted anything is the exception: one delete
	// through the proxy, so listings see a user with a tombstone (whether
	// or not the rss workload, which deletes its file, ran first).
	if err := e.upload(ctx, e.proxyURL, "bench/deleted", 64); err != nil {
		return "", err
	}
	if err := e.remove(ctx, e.proxyURL, "bench/deleted"); err != nil {
		return "", err
	}
	for _, base := range []string{e.nodes[0], e.proxyURL} {
		b, err := e.getBody(ctx, base, dir)
		if err != nil {
			return "", err
		}
		var fi struct {
			Files []json.RawMessage `json:"files"`
		}
		if err := json.Unmarshal(b, &fi); err != nil {
			return "", fmt.Errorf("listing from %s is not a directory: %w", base, err)
		}
		if len(fi.Files) != len(files) {
			return "", fmt.Errorf("listing from %s has %d entries, want %d", base, len(fi.Files), len(files))
		}
	}
	return dir, nil
}

// seed uploads every file to every node directly, 8 at a time.
func (e *env) seed(ctx context.Context, files []string, size int64) error {
	sem := make(chan struct{}, 8)
	var mu sync.Mutex
	var first error
	var wg sync.WaitGroup
	for _, f := range files {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := e.uploadAll(ctx, e.nodes, f, size); err != nil {
				mu.Lock()
				first = cmp.Or(first, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return first
}

// bigUpload measures the proxy's peak RSS growth over one big upload, after
// a small one warmed its connections and key cache.
func (e *env) bigUpload(ctx context.Context) (*BigUpload, error) {
	size := e.o.BigUpload
	e.logf("uploading %s through the proxy for its peak RSS", FormatSize(size))
	if err := e.upload(ctx, e.proxyURL, "bench/rss/warm", 1<<20); err != nil {
		return nil, err
	}
	bu := &BigUpload{Size: size, Target: "growth < 64 MiB"}
	bu.ResetPeaks = resetPeakRSS(e.proxy)
	var err error
	if bu.Before, err = e.peakRSS(ctx, e.proxy); err != nil {
		return nil, err
	}
	t0 := time.Now()
	if err := e.upload(ctx, e.proxyURL, "bench/rss/big", size); err != nil {
		return nil, err
	}
	bu.Seconds = time.Since(t0).Seconds()
	bu.MBPerSec = float64(size) / 1e6 / bu.Seconds
	if bu.After, err = e.peakRSS(ctx, e.proxy); err != nil {
		return nil, err
	}
	bu.Growth = bu.After - bu.Before
	bu.GrowthMiB = float64(bu.Growth) / (1 << 20)
	bu.Met = bu.Growth < 64<<20
	e.logf("%-13s peak RSS %.1f MiB -> %.1f MiB (growth %.1f MiB), %.1f MB/s", WorkloadRSS,
		float64(bu.Before)/(1<<20), float64(bu.After)/(1<<20), bu.GrowthMiB, bu.MBPerSec)
	// Free the disk: the copies are 3x the size.
	_ = e.remove(ctx, e.proxyURL, "bench/rss/big")
	return bu, nil
}

// remove DELETEs base's /v1/fs/<path>.
func (e *env) remove(ctx context.Context, base, path string) error {
	u, err := fsURL(base, path, nil)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", e.auth)
	resp, err := e.client.Do(req)
	if err != nil {
		return err
	}
	return drain(resp, "delete "+path, nil)
}

// readOp reads a random file of the read set from one endpoint (a node or
// a proxy), checking its size.
func (e *env) readOp(from string, files []string) op {
	return func(ctx context.Context, wk *worker) (int64, error) {
		n, err := e.get(ctx, from, files[wk.rng.IntN(len(files))])
		if err == nil && n != e.o.SmallSize {
			err = fmt.Errorf("read %d bytes, want %d", n, e.o.SmallSize)
		}
		return n, err
	}
}

// frontedProxy starts a proxy of its own for workload name, in front of a
// fault-injecting front on the first node and the other nodes, so the rest
// of the workloads don't pay for the extra hop. stop ends both.
func (e *env) frontedProxy(ctx context.Context, name string, extra ...string) (*slowFront, *proc, func(), error) {
	front, err := newSlowFront(strings.TrimPrefix(e.nodes[0], "http://"))
	if err != nil {
		return nil, nil, nil, err
	}
	ports, err := devcluster.FreePorts("127.0.0.1", 1)
	if err != nil {
		front.close()
		return nil, nil, nil, err
	}
	nodes := append([]string{front.url()}, e.nodes[1:]...)
	px, err := e.startProxy(ctx, net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])), nodes, "proxy-"+name+".log", extra...)
	if err != nil {
		front.close()
		return nil, nil, nil, err
	}
	return front, px, func() { e.stopProxy(px); front.close() }, nil
}
