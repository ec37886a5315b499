// Package metrics exposes what the proxy sees as Prometheus metrics on the
// admin address. It implements the proxy's Observer, so the proxy itself
// stays free of Prometheus types.
package metrics

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics is the proxy's registry and instruments.
type Metrics struct {
	reg *prometheus.Registry

	requests        *prometheus.CounterVec
	requestDuration *prometheus.HistogramVec
	nodeRequests    *prometheus.CounterVec
	nodeDuration    *prometheus.HistogramVec
	replicaFailures *prometheus.CounterVec
	quorumFailures  *prometheus.CounterVec
	received        prometheus.Counter
	sent            prometheus.Counter
	inFlight        prometheus.Gauge
	nodeUp          *prometheus.GaugeVec
	sshConnections  prometheus.Counter
	sshFailovers    prometheus.Counter
	sshRejected     prometheus.Counter
	hedged          prometheus.Counter
	limited         *prometheus.CounterVec
	connRejected    *prometheus.CounterVec

	errMu   sync.Mutex
	nodeErr map[string]uint64 // failed node requests (transport errors, 5xx), for /status

	// The per-request instruments' children, looked up once per label set
	// (routes, methods, codes and configured nodes are closed sets):
	// hashing the labels on every request and every node request was a
	// measurable part of what a small request costs. Nothing deletes
	// these series; whatever does must drop its cached children too.
	reqChildren  sync.Map // reqLabels → *reqChild
	nodeChildren sync.Map // nodeLabels → *nodeChild
}

type reqLabels struct {
	route, method string
	code          int // 0: out of range ("other")
}

type reqChild struct {
	count    prometheus.Counter
	duration prometheus.Observer
}

type nodeLabels struct {
	node  string
	class int // status / 100; -1: error
}

type nodeChild struct {
	count    prometheus.Counter
	duration prometheus.Observer // nil for errors: no answer to time
}

// New registers every instrument on a fresh registry (plus Go and process
// collectors).
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	latency := []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cring_http_requests_total", Help: "Client HTTP requests answered, by route, method and status code.",
	}, []string{"route", "method", "code"})
	m.requestDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "cring_http_request_duration_seconds", Help: "Time to answer a client HTTP request, by route and method.", Buckets: latency,
	}, []string{"route", "method"})
	m.nodeRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cring_node_requests_total", Help: "Requests the proxy sent to nodes, by node and outcome (2xx..5xx, error).",
	}, []string{"node", "outcome"})
	m.nodeDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "cring_node_request_duration_seconds", Help: "Time until a node answered (headers), by node.", Buckets: latency,
	}, []string{"node"})
	m.replicaFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cring_replica_failures_total", Help: "Replica writes that did not store, by node and operation.",
	}, []string{"node", "op"})
	m.quorumFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cring_quorum_failures_total", Help: "Requests answered 503 because too few nodes answered, by operation.",
	}, []string{"op"})
	m.received = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "cring_client_received_bytes_total", Help: "Request body bytes received from clients.",
	})
	m.sent = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "cring_client_sent_bytes_total", Help: "Response body bytes sent to clients.",
	})
	m.inFlight = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "cring_http_requests_in_flight", Help: "Client requests being served now (a long transfer counts here until it ends).",
	})
	m.nodeUp = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "cring_node_up", Help: "1 when the node is believed healthy, else 0.",
	}, []string{"node"})
	m.sshConnections = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "cring_ssh_connections_total", Help: "SSH connections proxied to a node.",
	})
	m.sshFailovers = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "cring_ssh_failovers_total", Help: "SSH connections that went to a node other than the first candidate.",
	})
	m.sshRejected = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "cring_ssh_rejected_total", Help: "SSH connections closed because no node could be dialed or the cap was reached.",
	})
	m.hedged = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "cring_hedged_reads_total", Help: "Reads that also asked the next replica because the first was slower than its p95.",
	})
	m.limited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cring_http_requests_limited_total", Help: "Client requests refused by a bound on requests in flight: scope client (429) or total (503).",
	}, []string{"scope"})
	m.connRejected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cring_http_connections_rejected_total", Help: "Client HTTP connections refused at accept: reason max_conns_per_address or max_conns.",
	}, []string{"reason"})
	m.reg.MustRegister(m.hedged, m.limited, m.connRejected, m.requests, m.requestDuration, m.nodeRequests, m.nodeDuration, m.replicaFailures,
		m.quorumFailures, m.received, m.sent, m.inFlight, m.nodeUp, m.sshConnections, m.sshFailovers, m.sshRejected,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry lets other parts (backups, healing) add their own instruments.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Request records one answered client request. The method and code come
// from a client (or a node) and become labels only from a closed set, so
// requests with made-up methods can't grow the series without bound.
func (m *Metrics) Request(route, method string, code int, d time.Duration, in, out int64) {
	k := reqLabels{route: route, method: Method(method), code: code}
	if code < 100 || code > 599 {
		k.code = 0
	}
	c, ok := m.reqChildren.Load(k)
	if !ok {
		c, _ = m.reqChildren.LoadOrStore(k, &reqChild{
			count:    m.requests.WithLabelValues(route, k.method, statusLabel(code)),
			duration: m.requestDuration.WithLabelValues(route, k.method),
		})
	}
	rc := c.(*reqChild)
	rc.count.Inc()
	rc.duration.Observe(d.Seconds())
}

// Method is an HTTP method as a label value: the standard ones, else "other".
func Method(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace:
		return m
	}
	return "other"
}

// statusLabel is a status code as a label value: 100..599, else "other".
func statusLabel(code int) string {
	if code < 100 || code > 599 {
		return "other"
	}
	return strconv.Itoa(code)
}

// Streamed counts client body bytes as they pass, so rates show during long
// transfers, not only when they end.
func (m *Metrics) Streamed(in, out int64) {
	if in > 0 {
		m.received.Add(float64(in))
	}
	if out > 0 {
		m.sent.Add(float64(out))
	}
}

// InFlight moves the gauge of requests being served.
func (m *Metrics) InFlight(delta int) { m.inFlight.Add(float64(delta)) }

// NodeRequest records one request to a node (status 0 with err on failure).
func (m *Metrics) NodeRequest(node string, status int, err error, d time.Duration) {
	k := nodeLabels{node: node, class: -1}
	if err == nil {
		k.class = status / 100
	}
	c, ok := m.nodeChildren.Load(k)
	if !ok {
		nc := &nodeChild{count: m.nodeRequests.WithLabelValues(node, "error")}
		if err == nil {
			nc.count = m.nodeRequests.WithLabelValues(node, strconv.Itoa(k.class)+"xx")
			nc.duration = m.nodeDuration.WithLabelValues(node)
		}
		c, _ = m.nodeChildren.LoadOrStore(k, nc)
	}
	nc := c.(*nodeChild)
	if nc.duration != nil {
		nc.duration.Observe(d.Seconds())
	}
	nc.count.Inc()
	if err != nil || status >= 500 {
		m.errMu.Lock()
		if m.nodeErr == nil {
			m.nodeErr = map[string]uint64{}
		}
		m.nodeErr[node]++
		m.errMu.Unlock()
	}
}

// NodeErrors counts failed requests per node since start.
func (m *Metrics) NodeErrors() map[string]uint64 {
	m.errMu.Lock()
	defer m.errMu.Unlock()
	out := make(map[string]uint64, len(m.nodeErr))
	for k, v := range m.nodeErr {
		out[k] = v
	}
	return out
}

// ReplicaFailure records a replica that did not store a write.
func (m *Metrics) ReplicaFailure(node, op string) {
	m.replicaFailures.WithLabelValues(node, Method(op)).Inc()
}

// Hedged records a hedged read.
func (m *Metrics) Hedged() { m.hedged.Inc() }

// QuorumFailure records a request refused for lack of nodes (op: a method,
// or "version" or "backup" for the records an ack also needs).
func (m *Metrics) QuorumFailure(op string) {
	if op != "version" && op != "backup" {
		op = Method(op)
	}
	m.quorumFailures.WithLabelValues(op).Inc()
}

// ConnRejected records a client HTTP connection refused by a bound.
func (m *Metrics) ConnRejected(reason string) {
	if reason != "max_conns_per_address" {
		reason = "max_conns"
	}
	m.connRejected.WithLabelValues(reason).Inc()
}

// Limited records a request refused by a bound: "client" (429, the
// client's own bound) or "total" (503, the proxy's).
func (m *Metrics) Limited(scope string) {
	if scope != "client" {
		scope = "total"
	}
	m.limited.WithLabelValues(scope).Inc()
}

// NodeHealth records a node's state.
func (m *Metrics) NodeHealth(node string, up bool) {
	v := 0.0
	if up {
		v = 1
	}
	m.nodeUp.WithLabelValues(node).Set(v)
}

// ForgetNode drops a node no longer configured.
func (m *Metrics) ForgetNode(node string) {
	m.nodeUp.DeleteLabelValues(node)
}

// SSHConnect records a proxied SSH connection.
func (m *Metrics) SSHConnect(failover bool) {
	m.sshConnections.Inc()
	if failover {
		m.sshFailovers.Inc()
	}
}

// SSHRejected records an SSH connection that could not be proxied.
func (m *Metrics) SSHRejected() { m.sshRejected.Inc() }

// GaugeFunc registers a gauge read at scrape time (active SSH connections,
// queue depths).
func (m *Metrics) GaugeFunc(name, help string, f func() float64) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
}

// CounterFunc registers a counter read at scrape time.
func (m *Metrics) CounterFunc(name, help string, f func() float64) {
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f))
}
