package top

import (
	"math"
	"time"
)

// Metric names the view reads (see internal/metrics).
const (
	mRequests       = "cring_http_requests_total"
	mRequestSeconds = "cring_http_request_duration_seconds"
	mNodeRequests   = "cring_node_requests_total"
	mNodeSeconds    = "cring_node_request_duration_seconds"
	mReplicaFails   = "cring_replica_failures_total"
	mQuorumFails    = "cring_quorum_failures_total"
	mReceived       = "cring_client_received_bytes_total"
	mSent           = "cring_client_sent_bytes_total"
	mNodeUp         = "cring_node_up"
	mSSHConns       = "cring_ssh_connections_total"
	mSSHFailovers   = "cring_ssh_failovers_total"
	mSSHRejected    = "cring_ssh_rejected_total"
	mSSHActive      = "cring_ssh_active_connections"
	mInFlight       = "cring_http_requests_in_flight"
	mWriteQuorum    = "cring_write_quorum"
	mReplicas       = "cring_replicas"
	mBackupDepth    = "cring_backup_queue_depth"
	mBackupLag      = "cring_backup_queue_lag_seconds"
	mHintsPending   = "cring_heal_hints_pending"
	mUnderRepl      = "cring_heal_last_scan_under_replicated"
	mHealCopied     = "cring_heal_copied_total"
	mReadRepairs    = "cring_heal_read_repairs_total"
	mHintsReplayed  = "cring_heal_hints_replayed_total"
	mStartTime      = "process_start_time_seconds"
	mRSS            = "process_resident_memory_bytes"
)

// Summary is one frame of the view. Unknown or absent figures are NaN.
type Summary struct {
	At     time.Time     // of the latest scrape
	Window time.Duration // between the two scrapes rates come from; 0 without two

	ReadyKnown        bool
	Ready             bool
	Healthy, Required int
	Replicas, Quorum  float64
	Uptime            time.Duration // of the proxy process; 0 if unknown
	RSS               float64

	ReqRate, Rate4xx, Rate5xx float64
	InFlight                  float64 // requests being served (long transfers count until they end)
	P50, P99                  float64
	InRate, OutRate           float64
	QuorumFailures            float64 // total
	QuorumRate                float64

	SSHActive, SSHRate, SSHTotal, SSHFailovers, SSHRejected float64

	BackupDepth, BackupLag, HintsPending float64

	UnderReplicated                          float64 // left unrepaired by the healer's last scan
	CopyRate, ReadRepairRate, HintReplayRate float64

	Nodes  []NodeRow
	Routes []RouteRow
}

// NodeRow is one node's line.
type NodeRow struct {
	Name        string
	HealthKnown bool
	Healthy     bool
	For         time.Duration // in the current state
	LastError   string
	ReqRate     float64
	ErrRate     float64 // transport errors and 5xx answers
	P50, P99    float64
	ReplicaFail float64 // total
	ReplicaNew  float64 // during the window
}

// RouteRow is one client route's line.
type RouteRow struct {
	Route            string
	ReqRate, Rate5xx float64
	P50, P99         float64
}

// Summarize computes a frame from the latest scrape and the one before it
// (prev may be nil: rates are then NaN).
func Summarize(prev, cur *Scrape) Summary {
	nan := math.NaN()
	s := Summary{ReqRate: nan, Rate4xx: nan, Rate5xx: nan, P50: nan, P99: nan, InRate: nan, OutRate: nan,
		QuorumFailures: nan, QuorumRate: nan, SSHActive: nan, SSHRate: nan, SSHTotal: nan, SSHFailovers: nan,
		SSHRejected: nan, BackupDepth: nan, BackupLag: nan, HintsPending: nan, Replicas: nan, Quorum: nan, RSS: nan,
		UnderReplicated: nan, CopyRate: nan, ReadRepairRate: nan, HintReplayRate: nan}
	if cur == nil {
		return s
	}
	s.At = cur.At
	var p, c *Snapshot
	if prev != nil && prev.Metrics != nil && cur.Metrics != nil {
		p = prev.Metrics
		s.Window = cur.Metrics.At.Sub(p.At)
	}
	c = cur.Metrics

	if r := cur.Ready; r != nil {
		s.ReadyKnown, s.Ready, s.Healthy, s.Required = true, r.Ready, r.Healthy, r.Required
	}
	if c != nil {
		s.Replicas = c.Max(mReplicas, nil)
		s.Quorum = c.Max(mWriteQuorum, nil)
		if st := c.startTime(); st > 0 {
			s.Uptime = max(c.At.Sub(time.Unix(0, int64(st*1e9))), 0).Round(time.Second)
		}
		s.RSS = c.Max(mRSS, nil)
		s.QuorumFailures = c.Count(mQuorumFails, nil)
		s.SSHActive = c.Max(mSSHActive, nil)
		s.InFlight = c.Max(mInFlight, nil)
		s.SSHTotal = c.Count(mSSHConns, nil)
		s.SSHFailovers = c.Count(mSSHFailovers, nil)
		s.SSHRejected = c.Count(mSSHRejected, nil)
		s.BackupDepth = c.Sum(mBackupDepth, nil)
		s.BackupLag = c.Max(mBackupLag, nil)
		s.HintsPending = c.Sum(mHintsPending, nil)
		s.UnderReplicated = c.Sum(mUnderRepl, nil)
	}
	if !s.ReadyKnown && c != nil && !math.IsNaN(s.Quorum) {
		// No /readyz: judge readiness from the node gauges.
		s.Healthy = int(c.Count(mNodeUp, nil))
		s.Required = int(s.Quorum)
		s.Ready = s.Healthy >= s.Required
		s.ReadyKnown = true
	}
	if p != nil {
		s.ReqRate = Rate(p, c, mRequests, nil)
		s.Rate4xx = Rate(p, c, mRequests, Prefix("code", "4"))
		s.Rate5xx = Rate(p, c, mRequests, Prefix("code", "5"))
		lat := HistIncrease(p, c, mRequestSeconds, nil)
		s.P50, s.P99 = Quantile(0.5, lat), Quantile(0.99, lat)
		s.InRate = Rate(p, c, mReceived, nil)
		s.OutRate = Rate(p, c, mSent, nil)
		s.QuorumRate = Rate(p, c, mQuorumFails, nil)
		s.SSHRate = Rate(p, c, mSSHConns, nil)
		// Healing counters exist only when healing is on.
		optional := func(name string) float64 {
			if !c.Has(name) {
				return nan
			}
			return Rate(p, c, name, nil)
		}
		s.CopyRate = optional(mHealCopied)
		s.ReadRepairRate = optional(mReadRepairs)
		s.HintReplayRate = optional(mHintsReplayed)
	}
	s.Nodes = nodeRows(p, c, cur.Ready, cur.At)
	s.Routes = routeRows(p, c)
	return s
}

func nodeRows(p, c *Snapshot, r *Ready, at time.Time) []NodeRow {
	var rows []NodeRow
	seen := map[string]bool{}
	if r != nil {
		for _, n := range r.Nodes {
			seen[n.Name] = true
			// last_check is the proxy's clock, like since: no skew. Before
			// the first probe, our own clock will do.
			now := n.LastCheck
			if now.IsZero() {
				now = at
			}
			rows = append(rows, NodeRow{Name: n.Name, HealthKnown: true, Healthy: n.Healthy, LastError: n.LastError,
				For: max(now.Sub(n.Since), 0).Round(time.Second)})
		}
	}
	// Without /readyz (or for a node it lacks), the gauges still tell.
	for _, name := range c.LabelValues(mNodeUp, "node") {
		if seen[name] {
			continue
		}
		up := c.Max(mNodeUp, Eq("node", name))
		rows = append(rows, NodeRow{Name: name, HealthKnown: !math.IsNaN(up), Healthy: up == 1})
	}
	for i := range rows {
		n := &rows[i]
		node := Eq("node", n.Name)
		n.ReqRate, n.ErrRate, n.P50, n.P99, n.ReplicaNew = math.NaN(), math.NaN(), math.NaN(), math.NaN(), math.NaN()
		n.ReplicaFail = math.NaN()
		if c != nil {
			n.ReplicaFail = c.Count(mReplicaFails, node)
		}
		if p == nil {
			continue
		}
		n.ReqRate = Rate(p, c, mNodeRequests, node)
		n.ErrRate = Rate(p, c, mNodeRequests, And(node, Eq("outcome", "error", "5xx")))
		lat := HistIncrease(p, c, mNodeSeconds, node)
		n.P50, n.P99 = Quantile(0.5, lat), Quantile(0.99, lat)
		n.ReplicaNew = Increase(p, c, mReplicaFails, node)
	}
	return rows
}

func routeRows(p, c *Snapshot) []RouteRow {
	var rows []RouteRow
	for _, route := range c.LabelValues(mRequests, "route") {
		r := RouteRow{Route: route, ReqRate: math.NaN(), Rate5xx: math.NaN(), P50: math.NaN(), P99: math.NaN()}
		if p != nil {
			f := Eq("route", route)
			r.ReqRate = Rate(p, c, mRequests, f)
			r.Rate5xx = Rate(p, c, mRequests, And(f, Prefix("code", "5")))
			lat := HistIncrease(p, c, mRequestSeconds, f)
			r.P50, r.P99 = Quantile(0.5, lat), Quantile(0.99, lat)
		}
		rows = append(rows, r)
	}
	return rows
}
