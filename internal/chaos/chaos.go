// Package chaos is a seeded, Jepsen-style chaos run of a whole cring
// cluster: real node processes (stock `charm serve` or `cring node`) behind
// fault-injecting TCP fronts (toxiproxy), two `cring serve` processes on
// one configuration, and clients writing, overwriting, deleting, reading and
// listing through both while a schedule drawn from the seed kills, stops,
// slows, blackholes and resets nodes and kills proxies. When the faults end
// and the cluster has had time to converge by itself, every key is read
// through both proxies and judged against the history of every
// acknowledged operation: lost writes, resurrected deletes, bytes nobody
// wrote, keys not on exactly N replicas, crashes and hangs are failures.
// With Options.Hosts every process runs on a test host of its own
// (internal/netns) and the network faults are firewall rules between
// hosts, which can also cut or slow one proxy's links alone. More proxies,
// a real HAProxy in front of them (Options.Balancer) and a shared
// PostgreSQL state with destroy-proxy faults (Options.State) make the
// run of several disposable proxies. See docs/chaos.md.
package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Kind is what kind of node the cluster runs.
type Kind string

// Node kinds.
const (
	KindStock     Kind = "stock"      // charm serve v0.12.6, sqlite accounts seeded identically
	KindCringNode Kind = "cring-node" // cring node, sqlite accounts seeded identically
)

// Options shape a run. Zero values take the defaults.
type Options struct {
	Seed     uint64
	Duration time.Duration // fault period (90s)
	Nodes    int           // 5
	Proxies  int           // 2
	Kind     Kind          // stock
	// CringBin is the cring binary: `cring serve` for the proxies and
	// `cring node` for cring-node clusters. Required.
	CringBin string
	// CharmBin is the charm binary for stock nodes (`charm serve`).
	CharmBin string
	// Dir is the work directory (data, logs, history); "" makes a
	// temporary one. It is removed after the run unless Keep.
	Dir  string
	Keep bool

	Replicas, WriteQuorum int // 3, 2
	Dirs, FilesPerDir     int // key space: 5 directories of 8 files
	Rate                  float64
	Workers               int           // concurrent client operations (8)
	ScanInterval          time.Duration // the proxies' anti-entropy scans (10s)
	// ConvergeTimeout is how long the healed cluster may take to converge:
	// 60s, or 30s when the plan destroys a proxy (a lost proxy must cost
	// no convergence time: docs/design.md, "Disposable proxies").
	ConvergeTimeout time.Duration
	// Settle is how long the converged state must then stay unchanged
	// before the final reads (default: the scan interval plus 2s, so
	// every proxy's healer has scanned the converged cluster once).
	Settle    time.Duration
	HangAfter time.Duration // a client op this long is a hang (30s)
	// Faults are the kinds to draw from; none: FaultKinds, with Hosts
	// HostFaultKinds, and with State destroy-proxy too.
	Faults []FaultKind

	// Hosts puts every node, every proxy and the clients on a test host
	// of its own (internal/netns: network namespaces on one bridge; needs
	// root): network faults are firewall rules between hosts instead of
	// fronts, and the link faults of one proxy (partition-proxy,
	// link-latency) become possible.
	Hosts bool
	// Schedule, when set, is the fault plan instead of one drawn from the
	// seed (scripted runs; the seed still draws the clients' operations).
	Schedule []Fault

	// Balancer puts a load balancer in front of every proxy: "haproxy"
	// runs HAProxyBin (TCP, /readyz checks, as docs/deploy.md sets it up;
	// on a test host of its own with Hosts), every client operation goes
	// through it, and the final reads go through it as well as through
	// each proxy. "" (the default): the clients use the proxies in turn.
	Balancer   string
	HAProxyBin string
	// State runs a PostgreSQL (its binaries found as internal/pgtest
	// finds them; on a test host of its own with Hosts) and gives every
	// proxy --state on it: hints, known users and heartbeats shared.
	// Runs with State also draw destroy-proxy faults.
	State bool

	// Logf receives progress lines; nil is quiet.
	Logf func(format string, args ...any)
}

func (o *Options) logf(format string, args ...any) {
	if o.Logf != nil {
		o.Logf(format, args...)
	}
}

func (o Options) withDefaults() Options {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&o.Nodes, 5)
	def(&o.Proxies, 2)
	def(&o.Replicas, 3)
	def(&o.WriteQuorum, 2)
	def(&o.Dirs, 5)
	def(&o.FilesPerDir, 8)
	def(&o.Workers, 8)
	for _, d := range []struct {
		v *time.Duration
		d time.Duration
	}{{&o.Duration, 90 * time.Second}, {&o.ScanInterval, 10 * time.Second}, {&o.HangAfter, 30 * time.Second}} {
		if *d.v == 0 {
			*d.v = d.d
		}
	}
	if o.ConvergeTimeout == 0 {
		o.ConvergeTimeout = 60 * time.Second
		if o.Proxies >= 1 && slices.ContainsFunc(o.plan(), func(f Fault) bool { return f.Kind == DestroyProxy }) {
			o.ConvergeTimeout = 30 * time.Second
		}
	}
	if o.Settle == 0 {
		o.Settle = o.ScanInterval + 2*time.Second
	}
	if o.Rate == 0 {
		o.Rate = 30
	}
	if o.Kind == "" {
		o.Kind = KindStock
	}
	return o
}

func (o Options) validate() error {
	switch {
	case o.Kind != KindStock && o.Kind != KindCringNode:
		return fmt.Errorf("node kind %q: want stock or cring-node", o.Kind)
	case o.CringBin == "":
		return errors.New("no cring binary")
	case o.Kind == KindStock && o.CharmBin == "":
		return errors.New("stock nodes need the charm binary")
	case o.Nodes < o.Replicas || o.Replicas < o.WriteQuorum || o.WriteQuorum < 1:
		return fmt.Errorf("want write quorum ≤ replicas ≤ nodes, got W=%d N=%d nodes=%d", o.WriteQuorum, o.Replicas, o.Nodes)
	case o.Proxies < 1:
		return errors.New("need at least one proxy")
	case o.Duration < 10*time.Second:
		return fmt.Errorf("fault period %s: want at least 10s", o.Duration)
	case o.Rate <= 0 || o.Workers < 1:
		return errors.New("rate and workers must be positive")
	case o.Balancer != "" && o.Balancer != BalancerHAProxy:
		return fmt.Errorf("balancer %q: want haproxy (or none)", o.Balancer)
	case o.Balancer == BalancerHAProxy && o.HAProxyBin == "":
		return errors.New("the haproxy balancer needs the haproxy binary")
	}
	for _, k := range o.Faults {
		if hostOnly(k) && !o.Hosts {
			return fmt.Errorf("fault %s needs test hosts (--hosts)", k)
		}
	}
	if o.Schedule != nil {
		return checkSchedule(o.Schedule, o.Duration, o.Nodes, o.Proxies, o.Hosts)
	}
	return nil
}

// plan is the run's fault plan: the fixed schedule, or the one the seed
// draws from the kinds the run can inject.
func (o Options) plan() []Fault {
	if o.Schedule != nil {
		return o.Schedule
	}
	kinds := o.Faults
	if len(kinds) == 0 {
		kinds = o.defaultKinds()
	}
	return Plan(o.Seed, o.Duration, o.Nodes, o.Proxies, o.maxImpaired(), kinds)
}

// defaultKinds are the kinds a run draws from when Faults names none.
func (o Options) defaultKinds() []FaultKind {
	kinds := FaultKinds
	if o.Hosts {
		kinds = HostFaultKinds
	}
	if o.State {
		// What the shared state is for: a proxy lost with its data dir.
		kinds = append(slices.Clone(kinds), DestroyProxy)
	}
	return kinds
}

// BalancerHAProxy is Options.Balancer for HAProxy.
const BalancerHAProxy = "haproxy"

// maxImpaired is how many nodes may be impaired at once: two, and never
// so many that no write quorum is left anywhere.
func (o Options) maxImpaired() int { return max(1, min(2, o.Nodes-o.WriteQuorum)) }

// Report is what a run found.
type Report struct {
	Seed     uint64        `json:"seed"`
	Nodes    int           `json:"nodes"`
	Kind     Kind          `json:"kind"`
	Hosts    bool          `json:"hosts,omitempty"` // every process on a test host of its own
	Proxies  int           `json:"proxies"`
	Balancer string        `json:"balancer,omitempty"` // the clients' way in ("haproxy"), or none
	State    bool          `json:"state,omitempty"`    // the proxies share a PostgreSQL
	Duration time.Duration `json:"duration"`
	Plan     []Fault       `json:"plan"`
	// Views is which nodes each proxy's health checks saw down during the
	// fault period; Disagreed, the nodes one proxy saw down while another
	// saw them up at the same moment (information, as stale reads).
	Views     []ProxyView `json:"views"`
	Disagreed []string    `json:"disagreed"`
	// BalancerDown is the proxies the balancer's checks took out at least
	// once during the fault period.
	BalancerDown []string `json:"balancer_down,omitempty"`

	Ops, Acked, Failed, Unknown int
	Skipped                     int // client ticks dropped with every worker busy
	StaleReads                  int // reads during the run that returned a superseded version (information)

	Converged    bool          `json:"converged"`
	ConvergeTime time.Duration `json:"converge_time"` // from the end of the faults
	Findings     []Finding     `json:"findings"`
	Dir          string        `json:"dir,omitempty"` // the kept work dir
}

// Count is how many findings of class there are.
func (r *Report) Count(class Class) int {
	n := 0
	for _, f := range r.Findings {
		if f.Class == class {
			n++
		}
	}
	return n
}

// Pass reports whether the run found nothing wrong.
func (r *Report) Pass() bool { return len(r.Findings) == 0 && r.Converged }

// Summary is the one-line result.
func (r *Report) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "chaos seed=%d nodes=%d kind=%s", r.Seed, r.Nodes, r.Kind)
	if r.Hosts {
		b.WriteString(" hosts")
	}
	// Said only when not the default two proxies used in turn: the
	// summary of such runs reads as it always did.
	if r.Proxies != 0 && r.Proxies != 2 {
		fmt.Fprintf(&b, " proxies=%d", r.Proxies)
	}
	if r.Balancer != "" {
		fmt.Fprintf(&b, " balancer=%s", r.Balancer)
	}
	if r.State {
		b.WriteString(" state")
	}
	fmt.Fprintf(&b, " ops=%d acked=%d", r.Ops, r.Acked)
	for _, c := range Classes {
		fmt.Fprintf(&b, " %s=%d", summaryLabel[c], r.Count(c))
	}
	if r.Converged {
		fmt.Fprintf(&b, " converged=%.1fs", r.ConvergeTime.Seconds())
	} else {
		fmt.Fprintf(&b, " converged=no(%.0fs)", r.ConvergeTime.Seconds())
	}
	if r.Pass() {
		b.WriteString(" PASS")
	} else {
		b.WriteString(" FAIL")
	}
	return b.String()
}

// summaryLabel is each class's name in the summary line.
var summaryLabel = map[Class]string{Lost: "lost", Resurrected: "resurrected", Wrong: "wrong", NotN: "not-N",
	Split: "split", Unreadable: "unreadable", Crash: "crashes", Hang: "hangs"}

// WriteDetails writes the plan and every finding with its key's history.
func (r *Report) WriteDetails(w io.Writer) {
	fmt.Fprintf(w, "fault plan (seed %d, %s):\n", r.Seed, r.Duration)
	for _, f := range r.Plan {
		fmt.Fprintf(w, "  %s\n", f)
	}
	for _, v := range r.Views {
		fmt.Fprintf(w, "during the faults %s\n", v)
	}
	if len(r.Disagreed) > 0 {
		fmt.Fprintf(w, "the proxies disagreed at one moment on: %s\n", strings.Join(r.Disagreed, ","))
	}
	if r.Balancer != "" {
		if len(r.BalancerDown) == 0 {
			fmt.Fprintf(w, "during the faults the balancer kept every proxy\n")
		} else {
			fmt.Fprintf(w, "during the faults the balancer took out: %s\n", strings.Join(r.BalancerDown, ","))
		}
	}
	fmt.Fprintf(w, "ops: %d total, %d acknowledged, %d failed, %d unknown; %d ticks skipped (workers busy); %d stale reads during faults (information)\n",
		r.Ops, r.Acked, r.Failed, r.Unknown, r.Skipped, r.StaleReads)
	for _, f := range r.Findings {
		fmt.Fprintf(w, "%s %s: %s\n", strings.ToUpper(string(f.Class)), f.Key, f.Detail)
		for _, o := range f.Ops {
			fmt.Fprintf(w, "    %s\n", o)
		}
	}
	if r.Dir != "" {
		fmt.Fprintf(w, "work dir kept: %s (logs/, history.jsonl, report.txt)\n", r.Dir)
	}
}

// Run starts the cluster, runs the clients through the fault plan, heals,
// waits for convergence and checks every key. The error is for a run that
// could not be carried out; what the run found is in the report.
func Run(ctx context.Context, o Options) (rep Report, err error) {
	o = o.withDefaults()
	if err := o.validate(); err != nil {
		return Report{}, fmt.Errorf("chaos: %w", err)
	}
	dir, cleanup, err := workDir(o)
	if err != nil {
		return Report{}, err
	}
	defer func() {
		if o.Keep {
			rep.Dir = dir
		}
		cleanup()
	}()
	rep = Report{Seed: o.Seed, Nodes: o.Nodes, Kind: o.Kind, Duration: o.Duration,
		Plan: o.plan(), Hosts: o.Hosts, Proxies: o.Proxies, Balancer: o.Balancer, State: o.State}

	c, err := startCluster(ctx, o, dir)
	if err != nil {
		return rep, fmt.Errorf("chaos: start cluster: %w", err)
	}
	defer c.close()
	a := newAPI(c.jwt)
	if c.hosts != nil {
		// Every request from the clients' host: the servers are
		// reachable from nowhere else.
		a.client.Transport.(*http.Transport).DialContext = c.hosts.dial
	}
	defer a.close()
	if err := c.waitReady(ctx, a); err != nil {
		return rep, fmt.Errorf("chaos: %w", err)
	}

	ks := keySpace{dirs: o.Dirs, perDir: o.FilesPerDir}
	hist := &history{}
	t0 := time.Now()
	if err := c.faultPeriod(ctx, o, a, ks, hist, &rep, t0); err != nil {
		return rep, err
	}
	healed := time.Now()
	o.logf("faults over: healing every node, front and proxy")
	if err := c.heal(ctx); err != nil {
		return rep, fmt.Errorf("chaos: heal: %w", err)
	}
	if err := c.waitReady(ctx, a); err != nil {
		return rep, fmt.Errorf("chaos: after healing: %w", err)
	}
	notN, err := c.converge(ctx, a, o, healed, &rep)
	if err != nil {
		return rep, err
	}
	finals := c.finalReads(ctx, a, ks)
	ops := hist.snapshot()
	rep.Ops, rep.Acked, rep.Failed, rep.Unknown = counts(ops)
	rep.Findings, rep.StaleReads = Check(t0, ks.keys(), ops, finals)
	rep.Findings = append(rep.Findings, notN...)
	rep.Findings = append(rep.Findings, hangs(t0, ops, o.HangAfter)...)
	rep.Findings = append(rep.Findings, c.crashFindings()...)
	sortFindings(rep.Findings)
	if err := writeArtifacts(dir, &rep, ops, finals); err != nil {
		o.logf("could not write the run's artifacts: %v", err)
	}
	if o.Keep {
		c.saveStatus(ctx, a)
		if c.state != nil {
			if err := c.state.dump(ctx, c.hosts, filepath.Join(dir, "logs")); err != nil {
				o.logf("could not keep the shared state's tables: %v", err)
			}
		}
	}
	return rep, nil
}

// saveStatus keeps each proxy's /status at the end of a kept run
// (logs/<proxy>.status.json): the hints it and the shared state still
// owe, which nodes it sees, what its healer did.
func (c *cluster) saveStatus(ctx context.Context, a *api) {
	for _, p := range c.proxies {
		err := func() error {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(rctx, http.MethodGet, p.admin+"/status", nil)
			if err != nil {
				return err
			}
			if c.admin != "" {
				req.Header.Set("Authorization", "Bearer "+c.admin)
			}
			resp, err := a.client.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(c.dir, "logs", p.name+".status.json"), b, 0o600)
		}()
		if err != nil {
			c.o.logf("%s /status: %v", p.name, err)
		}
	}
}

// faultPeriod runs the clients and the fault plan side by side for the
// fault period, printing progress every 10 seconds.
func (c *cluster) faultPeriod(ctx context.Context, o Options, a *api, ks keySpace, hist *history, rep *Report, t0 time.Time) error {
	through := fmt.Sprintf("%d proxies", len(c.proxies))
	if c.lb != nil {
		through = "the balancer in front of " + through
	}
	o.logf("fault period: %s, %d faults planned, %.0f ops/s over %d keys through %s", o.Duration, len(rep.Plan), o.Rate, len(ks.keys()), through)
	fctx, cancel := context.WithDeadline(ctx, t0.Add(o.Duration))
	defer cancel()
	// The clients use the proxies in turn, or all go through the balancer.
	targets := c.proxyTargets()
	if c.lb != nil {
		targets = []target{{name: "balancer", url: c.lb.url}}
	}
	ca := c.clientAPI()
	defer ca.close()
	wl := &workload{o: o, ks: ks, api: ca, targets: targets, hist: hist}
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); wl.run(fctx) }()
	go func() { defer wg.Done(); c.progress(fctx, o, hist, t0) }()
	go func() {
		defer wg.Done()
		rep.Views, rep.Disagreed, rep.BalancerDown = c.watchHealth(fctx, a)
	}()
	// The plan ends within the period; its last steps (restarts) run to
	// completion even when they end it.
	ex := &executor{c: c, o: o, start: t0}
	err := ex.run(ctx, rep.Plan)
	if err != nil {
		cancel() // the run is void: stop the clients now
	}
	<-fctx.Done()
	wg.Wait()
	rep.Skipped = wl.skipped
	if err != nil {
		return fmt.Errorf("chaos: %w", err)
	}
	return ctx.Err()
}

// progress logs the counts and what is impaired every 10 seconds.
func (c *cluster) progress(ctx context.Context, o Options, hist *history, t0 time.Time) {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		total, ok, failed, unknown := counts(hist.snapshot())
		o.logf("%3.0fs: %d ops, %d acked, %d failed, %d unknown; %s", time.Since(t0).Seconds(), total, ok, failed, unknown, c.impaired())
	}
}

// proxyTargets are the proxies, each reached directly.
func (c *cluster) proxyTargets() []target {
	out := make([]target, len(c.proxies))
	for i, p := range c.proxies {
		out[i] = target{name: p.name, url: p.url}
	}
	return out
}

// clientAPI is what the clients send their operations with: from the
// clients' host with test hosts. Through a balancer each operation is a
// connection of its own (no keep-alive), so HAProxy's round robin spreads
// operations, not a few long-lived connections, over the proxies: a
// partitioned or returning proxy gets its share.
func (c *cluster) clientAPI() *api {
	a := newAPI(c.jwt)
	t := a.client.Transport.(*http.Transport)
	if c.hosts != nil {
		t.DialContext = c.hosts.dial
	}
	t.DisableKeepAlives = c.lb != nil
	return a
}

// waitReady waits until every proxy sees every node healthy and answers an
// authenticated request (so it has the nodes' key set), and the balancer,
// if any, has every proxy up.
func (c *cluster) waitReady(ctx context.Context, a *api) error {
	for _, p := range c.proxies {
		err := poll(ctx, 60*time.Second, 100*time.Millisecond, func(ctx context.Context) (bool, error) {
			var st struct {
				Healthy int `json:"healthy"`
			}
			if err := getJSON(ctx, a, p.admin+"/readyz", &st); err != nil || st.Healthy != len(c.nodes) {
				return false, nil
			}
			status, _, _, err := a.do(ctx, http.MethodGet, p.url, "", nil)
			return err == nil && (status == http.StatusOK || status == http.StatusNotFound), nil
		})
		if err != nil {
			return fmt.Errorf("%s not ready with %d healthy nodes: %w", p.name, len(c.nodes), err)
		}
	}
	if c.lb != nil {
		return c.lb.waitUp(ctx, c.proxies)
	}
	return nil
}

func getJSON(ctx context.Context, a *api, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

// finalReads reads every key and lists every directory through every
// proxy, and through the balancer if there is one.
func (c *cluster) finalReads(ctx context.Context, a *api, ks keySpace) []Observation {
	var out []Observation
	targets := c.proxyTargets()
	if c.lb != nil {
		targets = append(targets, target{name: "balancer", url: c.lb.url})
	}
	for _, p := range targets {
		for _, k := range ks.keys() {
			obs := Observation{Key: k, Via: p.name + " read"}
			rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			status, _, body, err := a.do(rctx, http.MethodGet, p.url, k, nil)
			cancel()
			switch {
			case err != nil:
				obs.Err = err.Error()
			case status == http.StatusOK:
				obs.Present, obs.Data = true, body
				if obs.Data == nil {
					obs.Data = []byte{}
				}
			case status != http.StatusNotFound:
				obs.Err = fmt.Sprintf("%d %s", status, errMessage(body))
			}
			out = append(out, obs)
		}
		for d, dir := range ks.listDirs() {
			rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			status, _, body, err := a.do(rctx, http.MethodGet, p.url, dir, nil)
			cancel()
			var names []string
			if err == nil && status == http.StatusOK {
				names, err = listing(body)
			} else if err == nil && status != http.StatusNotFound {
				err = fmt.Errorf("%d %s", status, errMessage(body))
			}
			for j := range ks.perDir {
				k := ks.key(d, j)
				obs := Observation{Key: k, Via: p.name + " list"}
				if err != nil {
					obs.Err = err.Error()
				} else {
					obs.Present = slices.Contains(names, path.Base(k))
				}
				out = append(out, obs)
			}
		}
	}
	return out
}

// workDir makes the run's directory and says how to clean it up.
func workDir(o Options) (string, func(), error) {
	if o.Dir != "" {
		if err := os.MkdirAll(o.Dir, 0o700); err != nil {
			return "", nil, fmt.Errorf("chaos: work dir: %w", err)
		}
		if o.Keep {
			return o.Dir, func() {}, nil
		}
		return o.Dir, func() { _ = os.RemoveAll(o.Dir) }, nil
	}
	dir, err := os.MkdirTemp("", fmt.Sprintf("cring-chaos-%d-", o.Seed))
	if err != nil {
		return "", nil, fmt.Errorf("chaos: work dir: %w", err)
	}
	if o.Keep {
		return dir, func() {}, nil
	}
	return dir, func() { _ = os.RemoveAll(dir) }, nil
}

// writeArtifacts keeps the history and the final observations (one JSON
// value per line) and the report in the work dir, for a kept run:
// history.jsonl and finals.jsonl are what Check takes.
func writeArtifacts(dir string, rep *Report, ops []*Op, finals []Observation) error {
	if err := writeJSONL(filepath.Join(dir, "history.jsonl"), ops); err != nil {
		return err
	}
	if err := writeJSONL(filepath.Join(dir, "finals.jsonl"), finals); err != nil {
		return err
	}
	var b strings.Builder
	b.WriteString(rep.Summary() + "\n")
	rep.WriteDetails(&b)
	return os.WriteFile(filepath.Join(dir, "report.txt"), []byte(b.String()), 0o600)
}

func writeJSONL[T any](path string, vs []T) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(f)
	for _, v := range vs {
		if err := enc.Encode(v); err != nil {
			f.Close()
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	return f.Close()
}
