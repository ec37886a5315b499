package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/charmbracelet/lipgloss"

	"github.com/cring-dev/cring/internal/charmapi"
	"github.com/cring-dev/cring/internal/devcluster"
)

// The proxy's memory for the work that costs it most (issue 18): a big
// listing against the size of what it answers, and uploads in flight, each
// measured on the proxy process from the OS (RSS).
const (
	WorkloadListMemory   = "list-memory"   // one listing of 50,000 entries: proxy RSS growth over the listing's size
	WorkloadUploadMemory = "upload-memory" // 24 slow uploads in flight: proxy RSS and goroutines per upload
)

// Memory is one memory workload's result.
type Memory struct {
	Name  string `json:"name"`
	Title string `json:"title"`
	// list-memory: the listing's size and the proxy's peak RSS growth
	// while it answered (the worst of the rounds).
	Entries       int     `json:"entries,omitempty"`
	ResponseBytes int64   `json:"response_bytes,omitempty"`
	GrowthBytes   int64   `json:"peak_rss_growth_bytes,omitempty"`
	Ratio         float64 `json:"growth_over_response,omitempty"`
	// upload-memory: RSS and goroutines per upload in flight.
	Uploads             int     `json:"uploads,omitempty"`
	RSSPerUpload        int64   `json:"rss_per_upload_bytes,omitempty"`
	GoroutinesPerUpload float64 `json:"goroutines_per_upload,omitempty"`
	Target              string  `json:"target"`
	Met                 bool    `json:"met"`
}

const (
	bigListEntries = 50_000
	slowUploads    = 24 // under the proxy's default 32 requests per client
)

// listMemory plants a 50,000-entry directory on every node (hard links to
// one empty file, as a directory written long ago), lists it through the
// proxy a few times and reports the worst peak RSS growth over the size of
// the listing answered.
func (e *env) listMemory(ctx context.Context) (*Memory, error) {
	if e.userID == "" {
		return nil, errors.New("no seeded user")
	}
	const dir = "bench/list-memory"
	src := filepath.Join(e.dir, "list-memory-empty")
	if err := os.WriteFile(src, nil, 0o600); err != nil {
		return nil, err
	}
	defer os.Remove(src)
	e.logf("%s: planting %d entries on %d nodes", WorkloadListMemory, bigListEntries, len(e.dc.Nodes))
	links := 0
	for _, n := range e.dc.Nodes {
		base := n.FilePath(e.userID, dir)
		defer os.RemoveAll(base)
		if err := os.MkdirAll(base, 0o700); err != nil {
			return nil, err
		}
		for k := range bigListEntries {
			if links++; links%60_000 == 0 { // ext4 allows 65,000 links to one file
				src += "+"
				if err := os.WriteFile(src, nil, 0o600); err != nil {
					return nil, err
				}
				defer os.Remove(src)
			}
			if err := os.Link(src, filepath.Join(base, fmt.Sprintf("%044d", k))); err != nil {
				return nil, err
			}
		}
	}
	m := &Memory{Name: WorkloadListMemory, Title: fmt.Sprintf("list %d entries", bigListEntries), Entries: bigListEntries, Target: "peak RSS growth ≤ 2x the listing"}
	// A proxy of its own: the Go runtime keeps memory it once used, so a
	// proxy that served other workloads would hide what a listing costs.
	ports, err := devcluster.FreePorts("127.0.0.1", 1)
	if err != nil {
		return nil, err
	}
	px, err := e.startProxy(ctx, net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])), e.nodes, "proxy-"+WorkloadListMemory+".log")
	if err != nil {
		return nil, err
	}
	defer e.stopProxy(px)
	before, _, err := e.settled(ctx, px, 0)
	if err != nil {
		return nil, err
	}
	if !resetPeakRSS(px) {
		return nil, errors.New("cannot reset the proxy's peak RSS (Linux only)")
	}
	// The first listing walks the replicas; then the proxy knows the
	// directory and asks every node at once.
	for range 3 {
		n, err := e.getCount(ctx, px.url, dir)
		if err != nil {
			return m, err
		}
		m.ResponseBytes = n
	}
	peak, err := e.peakRSS(ctx, px)
	if err != nil {
		return m, err
	}
	m.GrowthBytes = peak - before
	m.Ratio = float64(m.GrowthBytes) / float64(m.ResponseBytes)
	m.Met = m.Ratio <= 2
	return m, nil
}

// getCount GETs a path and counts the answer's bytes without keeping them.
func (e *env) getCount(ctx context.Context, base, p string) (int64, error) {
	u, err := fsURL(base, p, nil)
	if err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", e.auth)
	resp, err := e.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", p, resp.Status)
	}
	return n, err
}

// uploadMemory runs a proxy of its own (so no other workload's connections
// are counted), starts slowUploads uploads of a large file that send
// 256 KiB and then trickle a KiB every 100 ms, and reports what each one
// adds to the proxy's RSS and goroutines once all are streaming to every
// replica.
func (e *env) uploadMemory(ctx context.Context) (*Memory, error) {
	ports, err := devcluster.FreePorts("127.0.0.1", 1)
	if err != nil {
		return nil, err
	}
	px, err := e.startProxy(ctx, net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])), e.nodes, "proxy-"+WorkloadUploadMemory+".log")
	if err != nil {
		return nil, err
	}
	defer e.stopProxy(px)
	// Uploads first: the proxy learns that its nodes keep stamps (it learns
	// a node's kind from its answers before the ack; the slowest
	// replica's comes after), so the uploads measured are not hashed.
	for k := range 10 {
		if err := e.upload(ctx, px.url, fmt.Sprintf("bench/upload-memory/warm%d", k), 4<<10); err != nil {
			return nil, err
		}
	}
	m := &Memory{Name: WorkloadUploadMemory, Title: fmt.Sprintf("%d slow uploads", slowUploads), Uploads: slowUploads, Target: "≤ 160 KiB per upload"}
	rss0, g0, err := e.settled(ctx, px, 0)
	if err != nil {
		return m, err
	}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	// The form's head only: the file never ends, the upload stays in flight.
	form, err := charmapi.NewFormBoundary("f", "b")
	if err != nil {
		return m, err
	}
	for k := range slowUploads {
		c, err := net.Dial("tcp", strings.TrimPrefix(px.url, "http://"))
		if err != nil {
			return m, err
		}
		conns = append(conns, c)
		target := charmapi.FSURL(&url.URL{}, fmt.Sprintf("bench/upload-memory/f%d", k), url.Values{"mode": {"420"}})
		fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: cring\r\nAuthorization: %s\r\n"+
			"Content-Type: %s\r\nContent-Length: %d\r\n\r\n%s", target.RequestURI(), e.auth, form.ContentType(), 1<<30, form.Head())
		if _, err := c.Write(make([]byte, 256<<10)); err != nil {
			return m, err
		}
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		chunk := make([]byte, 1<<10)
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				for _, c := range conns {
					_ = c.SetWriteDeadline(time.Now().Add(time.Second))
					_, _ = c.Write(chunk)
				}
			}
		}
	}()
	rss1, g1, err := e.settled(ctx, px, slowUploads)
	if err != nil {
		return m, err
	}
	m.RSSPerUpload = (rss1 - rss0) / slowUploads
	m.GoroutinesPerUpload = float64(g1-g0) / slowUploads
	m.Met = m.RSSPerUpload <= 160<<10
	return m, nil
}

// settled waits until the proxy serves inFlight client requests and its
// goroutine count holds still, and returns its RSS and goroutines then.
func (e *env) settled(ctx context.Context, px *proc, inFlight int) (rss int64, goroutines int, err error) {
	deadline := time.Now().Add(30 * time.Second)
	last := -1
	for {
		if err := ctx.Err(); err != nil {
			return 0, 0, err
		}
		n, err := e.metric(ctx, px, "cring_http_requests_in_flight")
		if err != nil {
			return 0, 0, err
		}
		g, err := e.goroutines(ctx, px)
		if err != nil {
			return 0, 0, err
		}
		if int(n) >= inFlight && g == last {
			rss, err := currentRSS(px)
			return rss, g, err
		}
		last = g
		if time.Now().After(deadline) {
			return 0, 0, fmt.Errorf("the proxy did not settle: %v requests in flight, want %d", n, inFlight)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// metric reads one unlabelled value from the proxy's /metrics.
func (e *env) metric(ctx context.Context, px *proc, name string) (float64, error) {
	body, err := e.adminGet(ctx, px, "/metrics")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("no %s in the proxy's /metrics", name)
}

// goroutines is the proxy's goroutine count (its pprof endpoint, which the
// bench turns on).
func (e *env) goroutines(ctx context.Context, px *proc) (int, error) {
	body, err := e.adminGet(ctx, px, "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(body, "\n")
	v, ok := strings.CutPrefix(line, "goroutine profile: total ")
	if !ok {
		return 0, fmt.Errorf("goroutine profile: %q", line)
	}
	return strconv.Atoi(strings.TrimSpace(v))
}

func (e *env) adminGet(ctx context.Context, px *proc, p string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, px.admin+p, nil)
	if err != nil {
		return "", err
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("proxy %s: %s", p, resp.Status)
	}
	return string(b), err
}

// currentRSS is a process's resident memory now (Linux: VmRSS).
func currentRSS(px *proc) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", px.pid()))
	if err != nil {
		return 0, fmt.Errorf("proxy RSS: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			fields := strings.Fields(v)
			if len(fields) == 2 && fields[1] == "kB" {
				kb, err := strconv.ParseInt(fields[0], 10, 64)
				return kb << 10, err
			}
		}
	}
	return 0, errors.New("proxy RSS: no VmRSS in /proc/<pid>/status")
}

// runMemory runs name if it is a memory workload, adding its result to r.
func (r *Report) runMemory(ctx context.Context, e *env, name string) (bool, error) {
	var m *Memory
	var err error
	switch name {
	case WorkloadListMemory:
		m, err = e.listMemory(ctx)
	case WorkloadUploadMemory:
		m, err = e.uploadMemory(ctx)
	default:
		return false, nil
	}
	if m != nil && err == nil {
		r.Memory = append(r.Memory, m)
	}
	return true, err
}

// writeMemory prints the memory workloads' results.
func writeMemory(b *strings.Builder, ms []*Memory, dim, good, bad lipgloss.Style) {
	if len(ms) == 0 {
		return
	}
	b.WriteString("\n")
	rows := [][]string{{"memory", "measured", "target", ""}}
	for _, m := range ms {
		var what string
		switch m.Name {
		case WorkloadListMemory:
			what = fmt.Sprintf("listing of %s, proxy peak RSS +%s: %.2fx", mib(m.ResponseBytes), mib(m.GrowthBytes), m.Ratio)
		case WorkloadUploadMemory:
			what = fmt.Sprintf("proxy RSS +%.0f KiB and %.1f goroutines per upload", float64(m.RSSPerUpload)/1024, m.GoroutinesPerUpload)
		}
		verdict := good.Render("✓ met")
		if !m.Met {
			verdict = bad.Render("✗ missed")
		}
		rows = append(rows, []string{m.Title, what, m.Target, verdict})
	}
	table(b, rows, make([]*lipgloss.Style, len(rows)-1), dim, 2)
}
