package bench

import (
	"fmt"
	"io"
	"strings"

	"github.com/charmbracelet/lipgloss"
)

// WriteTable prints the report as tables: every run, then the proxy's ratios
// against its baseline with the targets, then the big upload's memory.
func (r *Report) WriteTable(out io.Writer) error {
	re := lipgloss.NewRenderer(out)
	title := re.NewStyle().Bold(true).Foreground(lipgloss.Color("212"))
	dim := re.NewStyle().Foreground(lipgloss.Color("245"))
	good := re.NewStyle().Foreground(lipgloss.Color("42"))
	bad := re.NewStyle().Foreground(lipgloss.Color("203"))
	proxyRow := re.NewStyle().Bold(true)

	var b strings.Builder
	cpu := fmt.Sprintf("%d CPUs", r.Machine.CPUs)
	if r.Machine.CPU != "" {
		cpu += " (" + r.Machine.CPU + ")"
	}
	if r.Machine.Pinned != "" {
		cpu += " · pinned: " + r.Machine.Pinned
	}
	if r.Machine.Nodes == "in-process" {
		cpu += " · nodes in the bench process"
	}
	fmt.Fprintf(&b, "%s\n%s\n\n", title.Render(fmt.Sprintf("cring bench · %d nodes, N=%d W=%d · %s per run", r.Nodes, r.Replicas, r.WriteQuorum, r.Duration)),
		dim.Render(fmt.Sprintf("%s · %s/%s · %s", cpu, r.Machine.OS, r.Machine.Arch, r.Machine.GoVersion)))

	var main, peerWs []*Workload
	for _, w := range r.Workloads {
		if isPeers(w.Name) {
			peerWs = append(peerWs, w)
		} else {
			main = append(main, w)
		}
	}
	if len(main) > 0 {
		rows := [][]string{{"workload", "mode", "ops/s", "MB/s", "p50", "p99", "max", "errors", "cpu µs/op bench+proxy", "cpu busy", "proxy peak RSS"}}
		var styles []*lipgloss.Style
		for _, w := range main {
			for k, run := range w.Runs {
				name := ""
				if k == 0 {
					name = w.Title
				}
				rss := ""
				if run.PeakRSS > 0 {
					rss = mib(run.PeakRSS)
				}
				cpu, busy := "", ""
				if run.CPUBusy > 0 {
					cpu = fmt.Sprintf("%.0f+%.0f", run.BenchCPUPerOpUs, run.ProxyCPUPerOpUs)
					busy = fmt.Sprintf("%.0f%%", 100*run.CPUBusy)
				}
				rows = append(rows, []string{name, run.Mode, num(run.OpsPerSec), num(run.MBPerSec),
					msec(run.P50Ms), msec(run.P99Ms), msec(run.MaxMs), fmt.Sprint(run.Errors), cpu, busy, rss})
				var st *lipgloss.Style
				if run.Mode == ModeProxy {
					st = &proxyRow
				}
				styles = append(styles, st)
			}
		}
		table(&b, rows, styles, dim, 2)

		b.WriteString("\n")
		rows = [][]string{{"workload", "proxy vs", "throughput", "p50", "p99", "target", ""}}
		styles = nil
		for _, w := range main {
			if w.Ratio == nil {
				continue
			}
			verdict := dim.Render("no target")
			switch {
			case w.Met == nil:
			case *w.Met:
				verdict = good.Render("✓ met")
			default:
				verdict = bad.Render("✗ " + strings.Join(w.Misses, "; "))
			}
			target := w.Target
			if target == "" {
				target = "—"
			}
			rows = append(rows, []string{w.Title, w.Baseline, fmt.Sprintf("%.2fx", w.Ratio.Throughput),
				fmt.Sprintf("%.2fx", w.Ratio.P50), fmt.Sprintf("%.2fx", w.Ratio.P99), target, verdict})
			styles = append(styles, nil)
			if lr := w.LimitRatio; lr != nil {
				rows = append(rows, []string{"", ModeLimit, fmt.Sprintf("%.2fx", lr.Throughput),
					fmt.Sprintf("%.2fx", lr.P50), fmt.Sprintf("%.2fx", lr.P99), "—", dim.Render("for reference")})
				styles = append(styles, nil)
			}
		}
		table(&b, rows, styles, dim, 2)
	}

	if len(peerWs) > 0 {
		writePeers(&b, peerWs, proxyRow, dim, good, bad)
	}

	if bu := r.BigUpload; bu != nil {
		verdict := good.Render("✓ met")
		if !bu.Met {
			verdict = bad.Render("✗ missed")
		}
		fmt.Fprintf(&b, "\n%s upload through the proxy: peak RSS %s → %s, growth %.1f MiB (target < 64 MiB) %s, %.0f MB/s\n",
			FormatSize(bu.Size), mib(bu.Before), mib(bu.After), bu.GrowthMiB, verdict, bu.MBPerSec)
	}
	for _, rp := range r.Replays {
		verdict := good.Render("✓ met")
		if !rp.Met {
			verdict = bad.Render("✗ " + strings.Join(rp.Misses, ", "))
		}
		fmt.Fprintf(&b, "\n%s: %d hints (written at %.0f/s) caught up in %.1f s (%.1f s to see the node up), %.0f hints/s, proxy %.0f µs CPU/hint; target %s %s",
			rp.Title, rp.Hints, rp.WritesPerSec, rp.CatchUpSeconds, rp.DetectSeconds, rp.HintsPerSec, rp.ProxyCPUPerHintUs, rp.Target, verdict)
	}
	if len(r.Replays) > 0 {
		b.WriteString("\n")
	}
	writeMemory(&b, r.Memory, dim, good, bad)
	if len(r.Hashes) > 0 {
		b.WriteString("\nchecksums, one core:")
		for _, h := range r.Hashes {
			fmt.Fprintf(&b, "  %s %.0f MB/s", h.Name, h.MBPerSec)
			if h.VsUpload > 0 {
				fmt.Fprintf(&b, " (%.1fx the proxy's large uploads)", h.VsUpload)
			}
			if h.Chosen {
				b.WriteString(" ← recorded")
			}
		}
		b.WriteString("\n")
	}
	b.WriteString("\n" + dim.Render("direct: one node, no replication · limit: the client sends every write to all N replicas itself · proxy: through cring") + "\n")
	b.WriteString(dim.Render("cpu µs/op: CPU time per operation of the client and the nodes (the bench process, and the node processes if any) + the proxy process; cpu busy: all of them over all CPUs") + "\n")
	_, err := io.WriteString(out, b.String())
	return err
}

// writePeers prints the peers workloads: every mode's CPU per request
// (medians over the rounds), then cring's over each other mode's.
func writePeers(b *strings.Builder, ws []*Workload, proxyRow, dim, good, bad lipgloss.Style) {
	if b.Len() > 0 {
		b.WriteString("\n")
	}
	rows := [][]string{{"peers", "mode", "ops/s", "p50", "p99", "errors", "front µs/op", "node reqs/op", "front µs/node req", "nodes µs/op", "client µs/op"}}
	var styles []*lipgloss.Style
	us := func(v float64) string {
		if v == 0 {
			return "—"
		}
		return fmt.Sprintf("%.0f", v)
	}
	for _, w := range ws {
		for k, run := range w.Runs {
			name := ""
			if k == 0 {
				name = w.Title
			}
			rows = append(rows, []string{name, run.Mode, num(run.OpsPerSec), msec(run.P50Ms), msec(run.P99Ms), fmt.Sprint(run.Errors),
				us(run.ProxyCPUPerOpUs), fmt.Sprintf("%.2f", run.UpstreamPerOp), us(run.ProxyCPUPerUpstreamUs),
				us(run.NodesCPUPerOpUs), us(run.BenchCPUPerOpUs - run.NodesCPUPerOpUs)})
			var st *lipgloss.Style
			if run.Mode == ModeProxy {
				st = &proxyRow
			}
			styles = append(styles, st)
		}
	}
	table(b, rows, styles, dim, 2)

	b.WriteString("\n")
	rows = [][]string{{"peers", "cring vs", "cpu/op", "cpu/node req", "nodes' cpu/op"}}
	styles = nil
	x := func(v float64) string {
		if v == 0 {
			return "—"
		}
		return fmt.Sprintf("%.2fx", v)
	}
	var verdicts []string
	for _, w := range ws {
		for k, c := range w.CPU {
			name := ""
			if k == 0 {
				name = w.Title
			}
			rows = append(rows, []string{name, c.Vs, x(c.ProxyPerOp), x(c.ProxyPerUpstream), x(c.NodesPerOp)})
			styles = append(styles, nil)
		}
		verdict := dim.Render("no target")
		switch {
		case w.Met == nil:
		case *w.Met:
			verdict = good.Render("✓ met")
		default:
			verdict = bad.Render("✗ " + strings.Join(w.Misses, "; "))
		}
		verdicts = append(verdicts, fmt.Sprintf("%s: %s %s", w.Title, w.Target, verdict))
	}
	table(b, rows, styles, dim, 2)
	for _, v := range verdicts {
		b.WriteString(v + "\n")
	}
	b.WriteString(dim.Render("front: the process between client and nodes (cring, nginx with its workers, HAProxy, go-floor: a bare httputil.ReverseProxy); medians over the rounds") + "\n")
}

// table writes rows with columns aligned (text left, numbers right); row 0
// is the header. styles[i] (may be nil) styles data row i.
func table(b *strings.Builder, rows [][]string, styles []*lipgloss.Style, header lipgloss.Style, gap int) {
	widths := map[int]int{}
	for _, row := range rows {
		for c, v := range row {
			widths[c] = max(widths[c], lipgloss.Width(v))
		}
	}
	for i, row := range rows {
		var line strings.Builder
		for c, v := range row {
			pad := strings.Repeat(" ", widths[c]-lipgloss.Width(v))
			if c >= 2 && isNumeric(v) {
				line.WriteString(pad + v)
			} else {
				line.WriteString(v + pad)
			}
			if c < len(row)-1 {
				line.WriteString(strings.Repeat(" ", gap))
			}
		}
		s := strings.TrimRight(line.String(), " ")
		switch {
		case i == 0:
			s = header.Render(s)
		case styles[i-1] != nil:
			s = styles[i-1].Render(s)
		}
		b.WriteString(s + "\n")
	}
}

func isNumeric(s string) bool {
	return s != "" && (s[0] >= '0' && s[0] <= '9')
}

func num(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func msec(v float64) string {
	if v >= 100 {
		return fmt.Sprintf("%.0f ms", v)
	}
	return fmt.Sprintf("%.2f ms", v)
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
