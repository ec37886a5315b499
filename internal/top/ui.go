package top

import (
	"context"
	"fmt"
	"math"
	"strings"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/mattn/go-runewidth"
)

// Options configure the live view.
type Options struct {
	Admin    string                       // shown in the header
	Interval time.Duration                // between scrapes
	Timeout  time.Duration                // per scrape
	Scrape   func(context.Context) Scrape // one round of reads
	Now      func() time.Time             // clock (tests)
}

// Model is the bubbletea model of `cring top`.
type Model struct {
	opt       Options
	prev, cur *Scrape // the last two scrapes that answered, for rates
	last      *Scrape // the latest attempt
	lastOK    time.Time
	sum       Summary  // of prev and cur
	paused    *Summary // the frozen frame while paused
	width     int
	height    int
}

type scrapeMsg Scrape

type tickMsg struct{}

// New returns the view's model.
func New(o Options) Model {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Timeout <= 0 {
		o.Timeout = min(max(o.Interval, time.Second), 5*time.Second)
	}
	return Model{opt: o, sum: Summarize(nil, nil)}
}

// Init starts the first scrape.
func (m Model) Init() tea.Cmd { return m.scrape() }

func (m Model) scrape() tea.Cmd {
	return func() tea.Msg {
		ctx, cancel := context.WithTimeout(context.Background(), m.opt.Timeout)
		defer cancel()
		return scrapeMsg(m.opt.Scrape(ctx))
	}
}

// Update handles keys, resizes and scrape results. Scrapes run one at a time:
// the next is scheduled an interval after the previous one answered.
func (m Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.KeyMsg:
		switch msg.String() {
		case "q", "ctrl+c", "esc":
			return m, tea.Quit
		case "p", " ":
			if m.paused == nil {
				s := m.sum
				m.paused = &s
			} else {
				m.paused = nil
			}
		}
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
	case scrapeMsg:
		m.record(Scrape(msg))
		return m, tea.Tick(m.opt.Interval, func(time.Time) tea.Msg { return tickMsg{} })
	case tickMsg:
		return m, m.scrape()
	}
	return m, nil
}

func (m *Model) record(s Scrape) {
	gap := m.last == nil || m.last.MetricsErr != nil
	m.last = &s
	if s.Metrics == nil && s.Ready == nil {
		return
	}
	// Rates span one interval: after a failed scrape they start afresh.
	if !gap && s.Metrics != nil && m.cur != nil && m.cur.Metrics != nil {
		m.prev = m.cur
	} else {
		m.prev = nil
	}
	m.cur = &s
	m.lastOK = s.At
	m.sum = Summarize(m.prev, m.cur)
}

// Styles, in the palette of `cring dev`.
var (
	stTitle  = lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Color("212"))
	stDim    = lipgloss.NewStyle().Foreground(lipgloss.Color("245"))
	stHead   = lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Color("63"))
	stGood   = lipgloss.NewStyle().Foreground(lipgloss.Color("42"))
	stBad    = lipgloss.NewStyle().Foreground(lipgloss.Color("203"))
	stWarn   = lipgloss.NewStyle().Foreground(lipgloss.Color("214"))
	stBanner = lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Color("231")).Background(lipgloss.Color("160"))
	stPaused = lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Color("16")).Background(lipgloss.Color("214"))
)

// View renders the frame, cut to the terminal's size.
func (m Model) View() string {
	now := m.opt.Now()
	s := m.sum
	if m.paused != nil {
		s = *m.paused
	}
	var lines []string
	add := func(l ...string) { lines = append(lines, l...) }

	title := stTitle.Render("cring top") + "  " + stDim.Render(fmt.Sprintf("admin %s · every %s", m.opt.Admin, m.opt.Interval))
	clock := now.Format("15:04:05")
	if m.paused != nil {
		clock = stPaused.Render(" PAUSED ") + " " + clock
	}
	add(spread(title, clock, m.lineWidth()))

	switch {
	case m.last == nil:
		add(stDim.Render("connecting to " + m.opt.Admin + " …"))
	case m.last.Failed():
		what := "admin API " + m.opt.Admin + " unreachable"
		if !m.last.Unreachable() {
			what = "admin API " + m.opt.Admin + " answered badly"
		}
		since := "never reached"
		if !m.lastOK.IsZero() {
			since = "last good scrape " + fmtAge(now.Sub(m.lastOK)) + " ago, figures below are from then"
		}
		add(stBanner.Render(" ✗ "+what+" "), stBad.Render(m.last.Problem()),
			stDim.Render("retrying every "+m.opt.Interval.String()+" · "+since))
	default:
		add(readyLine(s))
	}
	if m.cur != nil {
		add("")
		add(overview(s)...)
		add("")
		add(nodeTable(s, m.lineWidth())...)
		if len(s.Routes) > 0 {
			add("")
			add(routeTable(s)...)
		}
	}
	add("")
	foot := "q quit · p pause"
	if m.paused != nil {
		foot = "q quit · p resume"
	}
	window := "rates need a second scrape"
	switch {
	case m.last != nil && m.last.Failed() && m.lastOK.IsZero():
		window = ""
	case m.last != nil && m.last.Failed():
		window = "figures from " + m.lastOK.Format("15:04:05")
	case s.Window > 0:
		window = "rates and latency over the last " + fmtDuration(s.Window)
	}
	add(spread(stDim.Render(foot), stDim.Render(window), m.lineWidth()))

	if m.height > 0 && len(lines) > m.height {
		lines = append(lines[:m.height-1], lines[len(lines)-1])
	}
	if m.width > 0 {
		cut := lipgloss.NewStyle().MaxWidth(m.width)
		for i, l := range lines {
			lines[i] = cut.Render(l)
		}
	}
	return strings.Join(lines, "\n")
}

func (m Model) lineWidth() int {
	if m.width > 0 {
		return m.width
	}
	return 100
}

func readyLine(s Summary) string {
	if !s.ReadyKnown {
		return stDim.Render("readiness unknown")
	}
	state := stGood.Render("● ready")
	if !s.Ready {
		state = stBad.Render("● NOT READY")
	}
	parts := []string{fmt.Sprintf("%d/%d nodes healthy", s.Healthy, len(s.Nodes)), fmt.Sprintf("%d needed", s.Required)}
	if !math.IsNaN(s.Replicas) && !math.IsNaN(s.Quorum) {
		parts = append(parts, fmt.Sprintf("N=%.0f W=%.0f", s.Replicas, s.Quorum))
	}
	if s.Uptime > 0 {
		parts = append(parts, "proxy running "+fmtAge(s.Uptime))
	}
	if !math.IsNaN(s.RSS) {
		parts = append(parts, "rss "+fmtBytes(s.RSS))
	}
	return state + "  " + stDim.Render(strings.Join(parts, " · "))
}

func overview(s Summary) []string {
	label := func(l string) string { return stHead.Render(runewidth.FillRight(l, 10)) }
	field := func(name, v string) string { return stDim.Render(name+" ") + v }
	bad := func(v float64, text string) string {
		if v > 0 {
			return stBad.Render(text)
		}
		return text
	}
	gauge := func(v float64, format func(float64) string) string {
		if math.IsNaN(v) {
			return stDim.Render("—")
		}
		if v > 0 {
			return stWarn.Render(format(v))
		}
		return format(v)
	}
	join := func(parts ...string) string { return strings.Join(parts, "   ") }
	return []string{
		label("REQUESTS") + join(
			fmtRate(s.ReqRate)+"/s",
			field("in flight", fmtCount(s.InFlight)),
			field("p50", fmtSeconds(s.P50)),
			field("p99", fmtSeconds(s.P99)),
			field("in", fmtBytes(s.InRate)+"/s"),
			field("out", fmtBytes(s.OutRate)+"/s")),
		label("ERRORS") + join(
			field("5xx", bad(s.Rate5xx, fmtRate(s.Rate5xx)+"/s")),
			field("4xx", fmtRate(s.Rate4xx)+"/s"),
			field("quorum failures", bad(s.QuorumRate, fmtRate(s.QuorumRate)+"/s")+stDim.Render(" ("+fmtCount(s.QuorumFailures)+" total)"))),
		label("SSH") + join(
			field("active", fmtCount(s.SSHActive)),
			field("new", fmtRate(s.SSHRate)+"/s")+stDim.Render(" ("+fmtCount(s.SSHTotal)+" total)"),
			field("failovers", fmtCount(s.SSHFailovers)),
			field("rejected", bad(s.SSHRejected, fmtCount(s.SSHRejected)))),
		label("QUEUES") + join(
			field("backup depth", gauge(s.BackupDepth, fmtCount)),
			field("backup lag", gauge(s.BackupLag, func(v float64) string { return fmtDuration(time.Duration(v * float64(time.Second))) })),
			field("hints pending", gauge(s.HintsPending, fmtCount))),
		label("REPAIR") + join(
			// What the last scan found; it repaired them as it went, so
			// the live figure is hints pending, not this one.
			field("under-replicated", gauge(s.UnderReplicated, fmtCount)+stDim.Render(" left by the last scan")),
			field("copied", fmtRate(s.CopyRate)+"/s"),
			field("read repairs", fmtRate(s.ReadRepairRate)+"/s"),
			field("hints replayed", fmtRate(s.HintReplayRate)+"/s")),
	}
}

// Column widths of the node table (LAST ERROR takes the rest).
var nodeCols = []int{12, 9, 9, 8, 8, 9, 9, 11}

func nodeTable(s Summary, width int) []string {
	head := []string{"NODE", "STATE", "FOR", "REQ/s", "ERR/s", "P50", "P99", "REPL FAIL", "LAST ERROR"}
	used := 0
	for _, w := range nodeCols {
		used += w
	}
	errWidth := max(width-used, 10)
	out := []string{stHead.Render(row(head, nodeCols, errWidth))}
	for _, n := range s.Nodes {
		state := "? unknown"
		switch {
		case n.HealthKnown && n.Healthy:
			state = "● up"
		case n.HealthKnown:
			state = "○ down"
		}
		forText := "—"
		if n.HealthKnown && (n.For > 0 || !n.Healthy) {
			forText = fmtAge(n.For)
		}
		repl := fmtCount(n.ReplicaFail)
		if n.ReplicaNew > 0 {
			repl += fmt.Sprintf(" +%.0f", n.ReplicaNew)
		}
		cells := []string{n.Name, state, forText, fmtRate(n.ReqRate), fmtRate(n.ErrRate),
			fmtSeconds(n.P50), fmtSeconds(n.P99), repl, shortError(n.LastError)}
		styles := make([]lipgloss.Style, len(cells))
		switch {
		case n.HealthKnown && n.Healthy:
			styles[1] = stGood
		case n.HealthKnown:
			styles[1] = stBad
			styles[8] = stBad
		}
		if n.ErrRate > 0 {
			styles[4] = stBad
		}
		if n.ReplicaNew > 0 {
			styles[7] = stBad
		} else if n.ReplicaFail > 0 {
			styles[7] = stWarn
		}
		out = append(out, styledRow(cells, styles, nodeCols, errWidth))
	}
	return out
}

var routeCols = []int{14, 9, 9, 9, 9}

func routeTable(s Summary) []string {
	out := []string{stHead.Render(row([]string{"ROUTE", "REQ/s", "5xx/s", "P50", "P99"}, routeCols, 0))}
	for _, r := range s.Routes {
		cells := []string{r.Route, fmtRate(r.ReqRate), fmtRate(r.Rate5xx), fmtSeconds(r.P50), fmtSeconds(r.P99)}
		styles := make([]lipgloss.Style, len(cells))
		if r.Rate5xx > 0 {
			styles[2] = stBad
		}
		out = append(out, styledRow(cells, styles, routeCols, 0))
	}
	return out
}

// row lays out plain cells in fixed columns; the cell past widths gets last.
func row(cells []string, widths []int, last int) string {
	return styledRow(cells, make([]lipgloss.Style, len(cells)), widths, last)
}

func styledRow(cells []string, styles []lipgloss.Style, widths []int, last int) string {
	var b strings.Builder
	for i, c := range cells {
		w := last
		if i < len(widths) {
			w = widths[i]
		}
		if w <= 0 {
			continue
		}
		text := runewidth.Truncate(oneLine(c), w-1, "…")
		if i < len(cells)-1 {
			text = runewidth.FillRight(text, w)
		}
		b.WriteString(styles[i].Render(text))
	}
	return strings.TrimRight(b.String(), " ")
}

// shortError drops the `Get "url": ` prefix of a failed probe: the node's
// row already says which node it is.
func shortError(e string) string {
	if strings.HasPrefix(e, `Get "`) {
		if i := strings.Index(e, `": `); i > 0 {
			return e[i+3:]
		}
	}
	return e
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// spread puts left and right on one line of width w.
func spread(left, right string, w int) string {
	gap := max(w-lipgloss.Width(left)-lipgloss.Width(right), 2)
	return left + strings.Repeat(" ", gap) + right
}

func fmtRate(v float64) string {
	switch {
	case math.IsNaN(v):
		return "—"
	case v == 0:
		return "0"
	case v < 10:
		return fmt.Sprintf("%.1f", v)
	case v < 1000:
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1fk", v/1000)
}

func fmtSeconds(v float64) string {
	switch {
	case math.IsNaN(v):
		return "—"
	case v < 0.001:
		return fmt.Sprintf("%.0fµs", v*1e6)
	case v < 0.01:
		return fmt.Sprintf("%.1fms", v*1e3)
	case v < 1:
		return fmt.Sprintf("%.0fms", v*1e3)
	case v < 10:
		return fmt.Sprintf("%.2fs", v)
	}
	return fmt.Sprintf("%.1fs", v)
}

func fmtBytes(v float64) string {
	if math.IsNaN(v) {
		return "—"
	}
	units := []string{"B", "kB", "MB", "GB", "TB"}
	i := 0
	for v >= 1000 && i < len(units)-1 {
		v /= 1000
		i++
	}
	if i == 0 || v >= 100 {
		return fmt.Sprintf("%.0f %s", v, units[i])
	}
	return fmt.Sprintf("%.1f %s", v, units[i])
}

func fmtCount(v float64) string {
	if math.IsNaN(v) {
		return "—"
	}
	return fmt.Sprintf("%.0f", v)
}

// fmtAge is a coarse duration: 45s, 3m12s, 2h05m, 3d04h.
func fmtAge(d time.Duration) string {
	d = max(d, 0).Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}

// fmtDuration is a short precise duration: 1s, 1.5s, 250ms.
func fmtDuration(d time.Duration) string {
	if d >= time.Minute {
		return fmtAge(d)
	}
	if d >= time.Second {
		return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.1f", d.Seconds()), "0"), ".") + "s"
	}
	return d.Round(time.Millisecond).String()
}
