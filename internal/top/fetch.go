package top

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/common/expfmt"
)

// Ready is the admin API's /readyz answer.
type Ready struct {
	Ready    bool         `json:"ready"`
	Healthy  int          `json:"healthy"`
	Required int          `json:"required"`
	Nodes    []NodeStatus `json:"nodes"`
}

// NodeStatus is one node's health as /readyz reports it.
type NodeStatus struct {
	Name      string    `json:"name"`
	Healthy   bool      `json:"healthy"`
	LastError string    `json:"last_error"`
	Since     time.Time `json:"since"`
	LastCheck time.Time `json:"last_check"`
}

// Scrape is one round of reads from the admin API. A part that failed is
// nil, with its error beside it.
type Scrape struct {
	At         time.Time
	Metrics    *Snapshot
	MetricsErr error
	Ready      *Ready
	ReadyErr   error
}

// Failed reports whether any part failed.
func (s Scrape) Failed() bool { return s.MetricsErr != nil || s.ReadyErr != nil }

// Unreachable reports whether the admin API could not be reached at all,
// as opposed to answering badly.
func (s Scrape) Unreachable() bool {
	var a, b *url.Error
	return errors.As(s.MetricsErr, &a) && errors.As(s.ReadyErr, &b)
}

// Problem is one line saying what went wrong ("" if nothing).
func (s Scrape) Problem() string {
	if s.Unreachable() {
		var ue *url.Error
		errors.As(s.MetricsErr, &ue)
		if ue.Timeout() {
			return "no answer (timeout)"
		}
		return ue.Err.Error()
	}
	var msgs []string
	for _, err := range []error{s.MetricsErr, s.ReadyErr} {
		if err != nil {
			msgs = append(msgs, err.Error())
		}
	}
	return strings.Join(msgs, "; ")
}

// Client reads a proxy's admin API.
type Client struct {
	base string
	http *http.Client
	// Token is the proxy's admin token, sent as a bearer token ("": none).
	Token string
}

// NewClient takes the admin address as host:port or as a URL.
func NewClient(admin string, timeout time.Duration) (*Client, error) {
	base := admin
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	base = strings.TrimRight(base, "/")
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("admin address %q: want host:port or an http(s):// URL", admin)
	}
	return &Client{base: base, http: &http.Client{Timeout: timeout}}, nil
}

// Scrape reads /metrics and /readyz.
func (c *Client) Scrape(ctx context.Context) Scrape {
	s := Scrape{At: time.Now()}
	s.Metrics, s.MetricsErr = c.metrics(ctx, s.At)
	s.Ready, s.ReadyErr = c.ready(ctx)
	return s
}

func (c *Client) get(ctx context.Context, path, accept string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	return c.http.Do(req)
}

func (c *Client) metrics(ctx context.Context, at time.Time) (*Snapshot, error) {
	resp, err := c.get(ctx, "/metrics", string(expfmt.FmtText))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusUnauthorized {
		return nil, fmt.Errorf("GET /metrics: %s: the proxy wants its admin token (--admin-token or CRING_ADMIN_TOKEN)", resp.Status)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	format := expfmt.ResponseFormat(resp.Header)
	if format == expfmt.FmtUnknown {
		format = expfmt.FmtText
	}
	return Parse(io.LimitReader(resp.Body, 64<<20), format, at)
}

func (c *Client) ready(ctx context.Context) (*Ready, error) {
	resp, err := c.get(ctx, "/readyz", "application/json")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	// 503 means fewer than W nodes are healthy: the body still says which.
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusServiceUnavailable {
		return nil, fmt.Errorf("GET /readyz: %s", resp.Status)
	}
	var r Ready
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&r); err != nil {
		return nil, fmt.Errorf("GET /readyz: decode: %w", err)
	}
	return &r, nil
}
