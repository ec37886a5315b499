// Package bench measures cring against the physical limit of replication on
// the machine it runs on: a local cluster of real Charm servers (each its own
// `cring node` process, charm's server), the proxy as a separate `cring
// serve` process (so its memory is its own),
// and the same work done three ways side by side in one run:
//
//   - direct: the client talks to one node, no replication at all;
//   - limit:  the client itself sends every write to all N replicas at once
//     (what N-way replication costs on this machine with no proxy);
//   - proxy:  the client talks to cring, which replicates.
//
// Ratios proxy/limit (writes) and proxy/direct (reads, listings) are what the
// performance targets are stated in.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Workload names, in the order they run.
const (
	WorkloadRSS         = "rss"             // one big upload: proxy peak RSS growth
	WorkloadUploadSmall = "upload-small"    // 4 KiB uploads, 8 concurrent
	WorkloadUploadLarge = "upload-large"    // 64 MiB uploads, 2 concurrent
	WorkloadUploadSlow  = "upload-slow"     // 4 KiB uploads, one replica answering 200 ms late
	WorkloadDegraded    = "upload-degraded" // 4 KiB uploads, one node down (every write hinted)
	WorkloadReadSmall   = "read-small"      // 4 KiB reads, 8 concurrent
	WorkloadReadSlow    = "read-slow"       // the same, one replica answering 200 ms late
	WorkloadList        = "list"            // directory listings
	WorkloadMixed       = "mixed"           // 70% reads / 30% writes of 4 KiB
	WorkloadHash        = "hash"            // checksum speeds: SHA-256 (recorded) against BLAKE3 and xxh3
	WorkloadScrub       = "scrub"           // 4 KiB reads while the scrub hashes every copy at its default rate
	WorkloadReplay      = "replay"          // a node stopped, 10,000 writes, started: time until it caught up
	// CPU per request of cring against other reverse proxies in front of
	// one node (nginx, HAProxy, a bare httputil.ReverseProxy): 4 KiB reads
	// and uploads, 8 concurrent. Not run by default (nginx and HAProxy come
	// from Debian's packages: scripts/install-peers).
	WorkloadPeersRead   = "peers-read"
	WorkloadPeersUpload = "peers-upload"
	// WorkloadPeers names both peers workloads in --workloads.
	WorkloadPeers = "peers"
)

// Workloads lists every workload name, in run order.
func Workloads() []string {
	return []string{WorkloadRSS, WorkloadUploadSmall, WorkloadUploadLarge, WorkloadUploadSlow, WorkloadDegraded, WorkloadReadSmall, WorkloadReadSlow, WorkloadList, WorkloadMixed, WorkloadScrub, WorkloadReplay, WorkloadHash, WorkloadListMemory, WorkloadUploadMemory, WorkloadPeersRead, WorkloadPeersUpload}
}

// DefaultWorkloads are the workloads a run without a list runs: all but the
// peers, which need nginx and HAProxy installed.
func DefaultWorkloads() []string {
	return slices.DeleteFunc(Workloads(), isPeers)
}

func isPeers(name string) bool { return name == WorkloadPeersRead || name == WorkloadPeersUpload }

// ExpandWorkloads replaces the group name "peers" with its workloads.
func ExpandWorkloads(names []string) []string {
	var out []string
	for _, n := range names {
		if n == WorkloadPeers {
			out = append(out, WorkloadPeersRead, WorkloadPeersUpload)
			continue
		}
		out = append(out, n)
	}
	return out
}

// Modes: who the client talks to.
const (
	ModeDirect = "direct" // one node, no replication
	ModeLimit  = "limit"  // the client sends every write to all N replicas itself
	ModeProxy  = "proxy"  // through cring
	// ModeHealthy is read-slow's baseline: through cring with every node
	// healthy (its proxy mode has one node answering late).
	ModeHealthy = "healthy"
)

// largeRuns: large uploads are measured this many times --duration.
const largeRuns = 4

// Options shape a run. Zero values take the defaults in brackets.
type Options struct {
	Nodes     int           // Charm nodes [3]
	Duration  time.Duration // measured time per workload and mode [5s; large uploads 4x]
	Rounds    int           // modes take turns this many times within Duration [5, fewer when Duration < 5s]
	Warmup    time.Duration // unmeasured time before each measurement [Duration/5, at most 1s]
	Workloads []string      // subset of Workloads() to run [all]
	Dir       string        // cluster data (removed afterwards) and the proxy's log [a temporary directory, removed afterwards]
	// Binary is the cring executable run as `<Binary> serve …` [os.Executable()].
	Binary string
	// Progress gets one line per step [discarded].
	Progress io.Writer
	// PinProxy gives the proxy the last CPU to itself and this process
	// (client and nodes) the others, as if the proxy ran on a machine of its
	// own (Linux, at least 2 CPUs).
	PinProxy bool
	// NodesInProcess runs the nodes inside this process instead of each as
	// its own `cring node` process (Binary). Cheaper for the direct and
	// limit baselines than any real deployment: their client never crosses
	// a process boundary to reach a node.
	NodesInProcess bool

	BigUpload   int64 // the RSS workload's upload size [512 MiB]
	SmallSize   int64 // small file size [4 KiB]
	LargeSize   int64 // large file size [64 MiB]
	SmallConc   int   // small uploads, reads and mixed concurrency [8]
	LargeConc   int   // large uploads concurrency [2]
	ListConc    int   // listings concurrency [1: latency, unloaded]
	ListEntries int   // files in the listed directory [200]
	ReadFiles   int   // distinct files the reads pick from [256]
	ReadPercent int   // reads in the mixed workload [70]
	ReplayFiles int   // writes a stopped node misses in the replay workload [10,000]
	// SlowDelay is how late the slowed node answers in read-slow [200ms].
	SlowDelay time.Duration
}

func (o *Options) defaults() error {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def64 := func(v *int64, d int64) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.Nodes, 3)
	def(&o.SmallConc, 8)
	def(&o.LargeConc, 2)
	def(&o.ListConc, 1)
	def(&o.ListEntries, 200)
	def(&o.ReadFiles, 256)
	def(&o.ReadPercent, 70)
	def(&o.ReplayFiles, 10_000)
	def64(&o.BigUpload, 512<<20)
	def64(&o.SmallSize, 4<<10)
	def64(&o.LargeSize, 64<<20)
	if o.Duration <= 0 {
		o.Duration = 5 * time.Second
	}
	if o.SlowDelay <= 0 {
		o.SlowDelay = 200 * time.Millisecond
	}
	if o.Rounds <= 0 {
		o.Rounds = int(max(1, min(5, o.Duration/time.Second)))
	}
	if o.Warmup <= 0 {
		o.Warmup = min(o.Duration/5, time.Second)
	}
	if o.ReadPercent > 100 {
		return fmt.Errorf("read percent %d is over 100", o.ReadPercent)
	}
	if len(o.Workloads) == 0 {
		o.Workloads = DefaultWorkloads()
	}
	o.Workloads = ExpandWorkloads(o.Workloads)
	for _, w := range o.Workloads {
		if !slices.Contains(Workloads(), w) {
			return fmt.Errorf("unknown workload %q (known: %s)", w, strings.Join(Workloads(), ", "))
		}
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find the cring binary: %w", err)
		}
		o.Binary = exe
	}
	return nil
}

// Report is one run's results.
type Report struct {
	Machine     Machine     `json:"machine"`
	Nodes       int         `json:"nodes"`
	Replicas    int         `json:"replicas"`
	WriteQuorum int         `json:"write_quorum"`
	Duration    string      `json:"duration_per_run"`
	Workloads   []*Workload `json:"workloads"`
	BigUpload   *BigUpload  `json:"big_upload,omitempty"`
	Hashes      []HashRate  `json:"hashes,omitempty"`
	Memory      []*Memory   `json:"memory,omitempty"`
	Replays     []*Replay   `json:"replays,omitempty"`
}

// Machine describes where the run happened.
type Machine struct {
	CPUs      int    `json:"cpus"`
	CPU       string `json:"cpu,omitempty"`
	Pinned    string `json:"pinned,omitempty"` // how CPUs were split, when they were
	Nodes     string `json:"nodes"`            // "in-process" or "processes"
	OS        string `json:"os"`
	Arch      string `json:"arch"`
	GoVersion string `json:"go"`
}

// Workload is one workload measured in every mode that applies to it.
type Workload struct {
	Name        string    `json:"name"`
	Title       string    `json:"title"`
	Concurrency int       `json:"concurrency"`
	Size        int64     `json:"size_bytes,omitempty"`
	Runs        []*Result `json:"runs"`
	Ratio       *Ratio    `json:"ratio,omitempty"`
	// LimitRatio is the proxy over the limit mode when the baseline is
	// another one (listings: the targets compare with one node direct,
	// the limit shows what a complete listing costs on this machine).
	LimitRatio *Ratio `json:"limit_ratio,omitempty"`
	Baseline   string `json:"baseline"` // the mode the proxy is compared with
	// SlowDelayMs is how late the slowed node answers (read-slow,
	// upload-slow).
	SlowDelayMs float64  `json:"slow_delay_ms,omitempty"`
	Target      string   `json:"target,omitempty"`
	Met         *bool    `json:"met,omitempty"` // nil: no target
	Misses      []string `json:"misses,omitempty"`
	// CPU is, in the peers workloads, cring's CPU against every other mode's.
	CPU []CPURatio `json:"cpu_ratios,omitempty"`
}

// CPURatio is cring's CPU per request over another mode's (peers
// workloads).
type CPURatio struct {
	Vs string `json:"vs"`
	// Proxy: the proxy process's CPU per client request, and per request
	// it sent to a node (cring replicates an upload to N nodes).
	ProxyPerOp       float64 `json:"proxy_per_op,omitempty"`
	ProxyPerUpstream float64 `json:"proxy_per_upstream_request,omitempty"`
	// Nodes: the nodes' CPU per client request.
	NodesPerOp float64 `json:"nodes_per_op,omitempty"`
}

// Result is one mode's measurement.
type Result struct {
	Mode      string  `json:"mode"`
	Ops       int     `json:"ops"`
	Errors    int     `json:"errors"`
	FirstErr  string  `json:"first_error,omitempty"`
	Seconds   float64 `json:"seconds"`
	OpsPerSec float64 `json:"ops_per_sec"`
	MBPerSec  float64 `json:"mb_per_sec"` // payload bytes (10^6) per second
	P50Ms     float64 `json:"p50_ms"`
	P99Ms     float64 `json:"p99_ms"`
	MaxMs     float64 `json:"max_ms"`
	// PeakRSS is the proxy's peak RSS during this run (proxy mode; the
	// high-water mark is reset before the run where the OS allows).
	PeakRSS int64 `json:"proxy_peak_rss_bytes,omitempty"`
	// CPU time per operation (Linux): the client and the nodes (the bench
	// process and the node processes) and the proxy process, in
	// microseconds; CPUBusy is all of them over the run's wall time and
	// every CPU (1 = saturated).
	BenchCPUPerOpUs float64 `json:"bench_cpu_per_op_us,omitempty"`
	ProxyCPUPerOpUs float64 `json:"proxy_cpu_per_op_us,omitempty"`
	CPUBusy         float64 `json:"cpu_busy,omitempty"`
	// Peers workloads, each the median over the rounds' slices: the nodes'
	// CPU alone per operation, the requests the front (the proxy, nginx…)
	// sent to nodes per operation, and its CPU per such request.
	// ProxyCPUPerOpUs is then the median too, of whatever process stands
	// in front of the nodes (none: direct).
	NodesCPUPerOpUs       float64 `json:"nodes_cpu_per_op_us,omitempty"`
	UpstreamPerOp         float64 `json:"upstream_requests_per_op,omitempty"`
	ProxyCPUPerUpstreamUs float64 `json:"proxy_cpu_per_upstream_request_us,omitempty"`
}

// Ratio is the proxy's run over the baseline's.
type Ratio struct {
	Throughput float64 `json:"throughput"` // ops/s proxy / baseline: higher is better
	P50        float64 `json:"p50"`        // lower is better
	P99        float64 `json:"p99"`
}

// BigUpload is the proxy's memory for one big upload.
type BigUpload struct {
	Size       int64   `json:"size_bytes"`
	Before     int64   `json:"peak_rss_before_bytes"`
	After      int64   `json:"peak_rss_after_bytes"`
	Growth     int64   `json:"peak_rss_growth_bytes"`
	GrowthMiB  float64 `json:"peak_rss_growth_mib"`
	Seconds    float64 `json:"seconds"`
	MBPerSec   float64 `json:"mb_per_sec"`
	Target     string  `json:"target"`
	Met        bool    `json:"met"`
	ResetPeaks bool    `json:"reset_peaks"` // the high-water mark was reset before it
}

// Run starts the cluster and the proxy, runs the workloads and stops
// everything. A cancelled ctx stops it early with ctx's error.
func Run(ctx context.Context, o Options) (*Report, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	e, err := start(ctx, &o)
	if err != nil {
		return nil, err
	}
	defer e.close()

	rep := &Report{
		Machine:     machine(e.pin, o.NodesInProcess),
		Nodes:       o.Nodes,
		Replicas:    e.replicas,
		WriteQuorum: e.writeQuorum,
		Duration:    o.Duration.String(),
	}
	for _, name := range o.Workloads {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		if name == WorkloadHash {
			rep.Hashes = measureHashes(ctx, o.Duration/3)
			rep.relateHashes()
			continue
		}
		if name == WorkloadReplay {
			rs, err := e.replays(ctx)
			rep.Replays = append(rep.Replays, rs...)
			if err != nil {
				return rep, fmt.Errorf("%s: %w", name, err)
			}
			continue
		}
		if ok, err := rep.runMemory(ctx, e, name); ok {
			if err != nil {
				return rep, fmt.Errorf("%s: %w", name, err)
			}
			continue
		}
		if name == WorkloadRSS {
			bu, err := e.bigUpload(ctx)
			if err != nil {
				return rep, fmt.Errorf("%s: %w", name, err)
			}
			rep.BigUpload = bu
			continue
		}
		w, err := e.workload(ctx, name)
		if err != nil {
			return rep, fmt.Errorf("%s: %w", name, err)
		}
		judge(w)
		rep.Workloads = append(rep.Workloads, w)
	}
	return rep, nil
}

// judge computes the proxy/baseline ratios and checks the targets.
func judge(w *Workload) {
	runs := map[string]*Result{}
	for _, r := range w.Runs {
		runs[r.Mode] = r
	}
	if isPeers(w.Name) {
		judgePeers(w, runs)
		return
	}
	ratio := func(base *Result) *Ratio {
		px := runs[ModeProxy]
		if base == nil || px == nil || base.OpsPerSec == 0 || base.P50Ms == 0 || base.P99Ms == 0 {
			return nil
		}
		return &Ratio{Throughput: px.OpsPerSec / base.OpsPerSec, P50: px.P50Ms / base.P50Ms, P99: px.P99Ms / base.P99Ms}
	}
	if w.Baseline != ModeLimit {
		w.LimitRatio = ratio(runs[ModeLimit])
	}
	if w.Ratio = ratio(runs[w.Baseline]); w.Ratio == nil {
		return
	}
	var misses []string
	check := func(ok bool, msg string, args ...any) {
		if !ok {
			misses = append(misses, fmt.Sprintf(msg, args...))
		}
	}
	switch w.Name {
	case WorkloadUploadSmall, WorkloadUploadLarge:
		w.Target = "throughput ≥ 0.9x, p99 ≤ 1.2x"
		check(w.Ratio.Throughput >= 0.9, "throughput %.2fx < 0.9x", w.Ratio.Throughput)
		check(w.Ratio.P99 <= 1.2, "p99 %.2fx > 1.2x", w.Ratio.P99)
	case WorkloadReadSmall:
		w.Target = "throughput ≥ 0.9x"
		check(w.Ratio.Throughput >= 0.9, "throughput %.2fx < 0.9x", w.Ratio.Throughput)
	case WorkloadReadSlow:
		w.Target = "p99 ≤ 1.5x"
		check(w.Ratio.P99 <= 1.5, "p99 %.2fx > 1.5x", w.Ratio.P99)
	case WorkloadUploadSlow:
		// "One slow node does not set everyone's latency": writes answer
		// at quorum, so p99 stays well under the node's delay. (Not the
		// healthy p99: with one replica out of the race every write waits
		// for both others, the slower of two instead of the second of
		// three.)
		half := w.SlowDelayMs / 2
		w.Target = fmt.Sprintf("p99 < %s", msec(half))
		check(runs[ModeProxy].P99Ms < half, "p99 %s ≥ %s", msec(runs[ModeProxy].P99Ms), msec(half))
	case WorkloadDegraded:
		// A node down costs its share of the work and a hint per write,
		// not the write path's speed: the hint store is off the request
		// path's lock (group commit).
		w.Target = "throughput ≥ 0.8x"
		check(w.Ratio.Throughput >= 0.8, "throughput %.2fx < 0.8x", w.Ratio.Throughput)
	case WorkloadScrub:
		// A background scrub at its default rate costs clients < 10%.
		w.Target = "throughput ≥ 0.9x"
		check(w.Ratio.Throughput >= 0.9, "throughput %.2fx < 0.9x", w.Ratio.Throughput)
	case WorkloadList:
		w.Target = "p50 and p99 ≤ 1.5x"
		check(w.Ratio.P50 <= 1.5, "p50 %.2fx > 1.5x", w.Ratio.P50)
		check(w.Ratio.P99 <= 1.5, "p99 %.2fx > 1.5x", w.Ratio.P99)
	default:
		return // no target: reported only
	}
	for _, r := range w.Runs {
		check(r.Errors == 0, "%d errors in %s", r.Errors, r.Mode)
	}
	met := len(misses) == 0
	w.Met = &met
	w.Misses = misses
}

// judgePeers relates cring's CPU to every other mode's and checks the
// targets of issue 18: reads ≤ 1.25x the Go floor and ≤ 2x nginx, and no
// more of the nodes' CPU than direct reads; uploads ≤ 1.5x nginx per
// request sent to a node.
func judgePeers(w *Workload, runs map[string]*Result) {
	px := runs[ModeProxy]
	if px == nil || px.ProxyCPUPerOpUs == 0 {
		return
	}
	div := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	for _, r := range w.Runs {
		if r.Mode == ModeProxy {
			continue
		}
		w.CPU = append(w.CPU, CPURatio{Vs: r.Mode,
			ProxyPerOp:       div(px.ProxyCPUPerOpUs, r.ProxyCPUPerOpUs),
			ProxyPerUpstream: div(px.ProxyCPUPerUpstreamUs, r.ProxyCPUPerUpstreamUs),
			NodesPerOp:       div(px.NodesCPUPerOpUs, r.NodesCPUPerOpUs)})
	}
	var misses []string
	check := func(ok bool, msg string, args ...any) {
		if !ok {
			misses = append(misses, fmt.Sprintf(msg, args...))
		}
	}
	ratio := func(mode string, f func(CPURatio) float64) (float64, bool) {
		for _, c := range w.CPU {
			if c.Vs == mode {
				return f(c), f(c) > 0
			}
		}
		return 0, false
	}
	perOp := func(c CPURatio) float64 { return c.ProxyPerOp }
	perUp := func(c CPURatio) float64 { return c.ProxyPerUpstream }
	nodes := func(c CPURatio) float64 { return c.NodesPerOp }
	var targets []string
	if w.Name == WorkloadPeersRead {
		targets = []string{"cpu ≤ 1.25x " + ModeFloor, "≤ 2x " + ModeNginx, "nodes ≤ 1x " + ModeDirect}
		if v, ok := ratio(ModeFloor, perOp); ok {
			check(v <= 1.25, "cpu %.2fx %s > 1.25x", v, ModeFloor)
		}
		if v, ok := ratio(ModeNginx, perOp); ok {
			check(v <= 2, "cpu %.2fx %s > 2x", v, ModeNginx)
		}
		if v, ok := ratio(ModeDirect, nodes); ok {
			check(v <= 1, "nodes' cpu %.2fx %s > 1x", v, ModeDirect)
		}
	} else {
		targets = []string{"cpu per node request ≤ 1.5x " + ModeNginx}
		if v, ok := ratio(ModeNginx, perUp); ok {
			check(v <= 1.5, "cpu per node request %.2fx %s > 1.5x", v, ModeNginx)
		}
	}
	for _, r := range w.Runs {
		check(r.Errors == 0, "%d errors in %s", r.Errors, r.Mode)
	}
	w.Target = strings.Join(targets, ", ")
	met := len(misses) == 0
	w.Met = &met
	w.Misses = misses
}

func machine(pin *pinning, nodesInProcess bool) Machine {
	m := Machine{CPUs: runtime.NumCPU(), OS: runtime.GOOS, Arch: runtime.GOARCH, GoVersion: runtime.Version(), Nodes: "processes"}
	if nodesInProcess {
		m.Nodes = "in-process"
	}
	if pin != nil {
		m.Pinned = pin.String()
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

// ParseSize reads a byte size: a number with an optional unit (B, K, KB,
// KiB, M, MB, MiB, G, GB, GiB; all powers of 1024).
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9') {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("size %q: want a number with an optional unit like 512MiB", s)
	}
	var n int64
	if _, err := fmt.Sscan(t[:i], &n); err != nil {
		return 0, fmt.Errorf("size %q: %w", s, err)
	}
	var mult int64
	switch strings.ToLower(strings.TrimSpace(t[i:])) {
	case "", "b":
		mult = 1
	case "k", "kb", "kib":
		mult = 1 << 10
	case "m", "mb", "mib":
		mult = 1 << 20
	case "g", "gb", "gib":
		mult = 1 << 30
	default:
		return 0, fmt.Errorf("size %q: unknown unit %q (B, KiB, MiB, GiB)", s, t[i:])
	}
	if n > (1<<62)/mult {
		return 0, errors.New("size " + s + " is too large")
	}
	return n * mult, nil
}

// FormatSize prints a byte size the way ParseSize reads it.
func FormatSize(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}
