// Package config holds everything `cring serve` needs to front a cluster, from
// flags, CRING_* environment variables and an optional cring.yaml, and checks it
// before anything listens.
package config

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cring-dev/cring/internal/cluster"
	"gopkg.in/yaml.v3"
)

// Defaults shared by the flags and the config file.
const (
	DefaultAddress         = ":35354"
	DefaultSSHProxyAddress = ":35353"
	DefaultAdminAddress    = "127.0.0.1:35356"
	DefaultSSHBackendPort  = 35353
	DefaultReplicas        = 3
	DefaultWriteQuorum     = 2
	DefaultBackupZone      = "us-east-1"
	DefaultHealthInterval  = 2 * time.Second
	DefaultNodeTimeout     = 30 * time.Second
	DefaultScanInterval    = time.Hour
	DefaultRepairRate      = 500
	DefaultRepairByteRate  = 32 << 20
	DefaultTombstoneGrace  = 30 * 24 * time.Hour
	// A scrub pass a week, like Ceph's deep scrub; 8 MiB/s per node reads
	// about 4.8 TiB a week, more than one node holds here.
	DefaultScrubInterval = 7 * 24 * time.Hour
	DefaultScrubRate     = 8 << 20
	DefaultPostQuorum    = 10 * time.Second
	// Bounds per client and in total (README, "Limits").
	DefaultBodyIdleTimeout      = 30 * time.Second
	DefaultMaxRequestsPerClient = 32
	DefaultMaxRequests          = 1024
	DefaultMaxConnsPerAddress   = 256
	DefaultMaxConns             = 4096
)

// Account store modes.
const (
	AccountsPerNode = "per-node"
	AccountsShared  = "shared"
)

// SSH front door bounds (sshproxy).
const (
	DefaultSSHMaxConns           = 1024
	DefaultSSHMaxConnsPerAddress = 64
	DefaultSSHHandshakeTimeout   = 30 * time.Second
	DefaultSSHIdleTimeout        = 10 * time.Minute
)

// Node is one Charm server behind the proxy (the membership's type: the
// config declares the nodes the membership is built from).
type Node = cluster.Node

// Backup is the optional backup target (validated here, used by the backup package).
type Backup struct {
	URL       string `yaml:"url"`
	Bucket    string `yaml:"bucket"`
	Zone      string `yaml:"zone"`
	Mode      string `yaml:"mode"` // async (default): durable local queue; sync: acked once stored
	PathStyle bool   `yaml:"path-style"`
}

// Config is the proxy's whole configuration.
type Config struct {
	Nodes           []Node        `yaml:"nodes"`
	Replicas        int           `yaml:"replicas"`
	WriteQuorum     int           `yaml:"write-quorum"`
	PublicURL       string        `yaml:"public-url"`
	Address         string        `yaml:"address"`
	SSHProxyAddress string        `yaml:"ssh-proxy-address"`
	SSHBackendPort  int           `yaml:"ssh-backend-port"`
	AdminAddress    string        `yaml:"admin-address"`
	AdminToken      string        `yaml:"admin-token"` // required when AdminAddress is not loopback
	HealthInterval  time.Duration `yaml:"health-interval"`
	NodeTimeout     time.Duration `yaml:"node-timeout"`
	SSHMaxConns     int           `yaml:"ssh-max-conns"`
	SSHIdleTimeout  time.Duration `yaml:"ssh-idle-timeout"`
	// SSHMaxConnsPerAddress bounds the SSH connections from one source
	// address; a client that has not finished its SSH key exchange within
	// SSHHandshakeTimeout is closed.
	SSHMaxConnsPerAddress int           `yaml:"ssh-max-conns-per-address"`
	SSHHandshakeTimeout   time.Duration `yaml:"ssh-handshake-timeout"`
	// Accounts says where nodes keep accounts: "per-node" (stock nodes, each
	// its own sqlite) or "shared" (one store every node uses).
	Accounts string `yaml:"accounts"`
	Backup   Backup `yaml:"backup"`
	// ServerKey is the charm_server_ed25519 every node shares: with it the
	// proxy repairs replicas for users (healing is on when it is set).
	ServerKey      string        `yaml:"server-key"`
	DataDir        string        `yaml:"data-dir"` // durable hints, users, queues
	ScanInterval   time.Duration `yaml:"scan-interval"`
	RepairRate     float64       `yaml:"repair-rate"` // repairs per second
	RepairByteRate int64         `yaml:"repair-byte-rate"`
	TombstoneGrace time.Duration `yaml:"tombstone-grace"`
	ScrubInterval  time.Duration `yaml:"scrub-interval"` // 0 in the file: default; negative: no scrub
	ScrubRate      int64         `yaml:"scrub-rate"`     // bytes per second per node
	// BodyIdleTimeout bounds how long a client's request or response body
	// may make no progress before the request is abandoned.
	BodyIdleTimeout time.Duration `yaml:"body-idle-timeout"`
	// MaxRequestsPerClient bounds the requests one client (charm ID, or
	// source address on unauthenticated routes) has in flight (429 past
	// it); MaxRequests bounds them in total (503 past it).
	MaxRequestsPerClient int `yaml:"max-requests-per-client"`
	MaxRequests          int `yaml:"max-requests"`
	// MaxConnsPerAddress bounds the HTTP connections from one source
	// address (an IPv6 /64 is one); MaxConns bounds them in total.
	MaxConnsPerAddress int `yaml:"max-conns-per-address"`
	MaxConns           int `yaml:"max-conns"`

	// PostQuorumTimeout bounds the replicas still writing after a write was
	// answered at quorum.
	PostQuorumTimeout time.Duration `yaml:"post-quorum-timeout"`
	Debug             bool          `yaml:"debug"`
	// Pprof serves /debug/pprof/ on the admin address.
	Pprof bool `yaml:"pprof"`
	// TLSCert and TLSKey (PEM files) make the HTTP address serve HTTPS; the
	// public URL should then be https://.
	TLSCert string `yaml:"tls-cert"`
	TLSKey  string `yaml:"tls-key"`
	// NodeCA is a PEM file of CA certificates trusted, besides the
	// system's roots, for https node URLs (nodes serving TLS with
	// certificates from a private CA).
	NodeCA string `yaml:"node-ca"`
}

// MinAdminToken is the shortest admin token accepted.
const MinAdminToken = 16

// LoopbackAddress reports whether a listen address (host:port) or a Host
// header names only this machine: localhost or a loopback IP. An empty host
// is every interface.
func LoopbackAddress(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = strings.Trim(addr, "[]") // a Host header without a port
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Load reads a cring.yaml. Unknown keys are an error so typos don't pass silently.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	defer f.Close()
	var c Config
	dec := yaml.NewDecoder(f)
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		// yaml lists problems on several lines; the operator gets one.
		msg := strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
		return nil, fmt.Errorf("parse config %s: %s", path, msg)
	}
	return &c, nil
}

// NodeFromHost turns a prototype-style --host URL into a node: its name is the
// URL's host:port and its SSH address the host name plus sshPort.
func NodeFromHost(host string, sshPort int) (Node, error) {
	u, err := parseNodeURL(host)
	if err != nil {
		return Node{}, fmt.Errorf("--host %q: %w", host, err)
	}
	return Node{
		Name: u.Host,
		URL:  host,
		SSH:  net.JoinHostPort(u.Hostname(), strconv.Itoa(sshPort)),
	}, nil
}

func parseNodeURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, errors.New("want an http:// or https:// URL like http://charm1:35354")
	}
	if u.Hostname() == "" {
		return nil, errors.New("missing host")
	}
	return u, nil
}

// Normalize fills defaults and derived values, then validates. The error is
// one line meant for an operator.
func (c *Config) Normalize() error {
	if len(c.Nodes) == 0 {
		return errors.New("no nodes configured: give --host URL (repeatable) or nodes in --config")
	}
	if c.SSHBackendPort == 0 {
		c.SSHBackendPort = DefaultSSHBackendPort
	}
	names := map[string]bool{}
	urls := map[string]string{}
	for i := range c.Nodes {
		n := &c.Nodes[i]
		u, err := parseNodeURL(n.URL)
		if err != nil {
			return fmt.Errorf("node %d (%s): url %q: %w", i+1, n.Name, n.URL, err)
		}
		n.URL = strings.TrimRight(n.URL, "/")
		if n.Name == "" {
			n.Name = u.Host
		}
		if n.SSH == "" {
			n.SSH = net.JoinHostPort(u.Hostname(), strconv.Itoa(c.SSHBackendPort))
		}
		if _, _, err := net.SplitHostPort(n.SSH); err != nil {
			return fmt.Errorf("node %s: ssh address %q: %w", n.Name, n.SSH, err)
		}
		if n.Health != "" {
			if _, err := parseNodeURL(n.Health); err != nil {
				return fmt.Errorf("node %s: health url %q: %w", n.Name, n.Health, err)
			}
		}
		if n.Meta != "" {
			if _, err := parseNodeURL(n.Meta); err != nil {
				return fmt.Errorf("node %s: meta url %q: %w", n.Name, n.Meta, err)
			}
		}
		if names[n.Name] {
			return fmt.Errorf("duplicate node name %q", n.Name)
		}
		names[n.Name] = true
		if other, ok := urls[n.URL]; ok {
			return fmt.Errorf("duplicate node url %s (nodes %s and %s)", n.URL, other, n.Name)
		}
		urls[n.URL] = n.Name
	}
	if c.Replicas == 0 {
		c.Replicas = DefaultReplicas
	}
	if c.Replicas < 0 {
		return fmt.Errorf("replicas must be at least 1, got %d", c.Replicas)
	}
	if c.Replicas > len(c.Nodes) {
		c.Replicas = len(c.Nodes)
	}
	if c.WriteQuorum == 0 {
		c.WriteQuorum = DefaultWriteQuorum
		if c.Replicas < 2 {
			c.WriteQuorum = c.Replicas
		}
	}
	if c.WriteQuorum < 1 {
		return fmt.Errorf("write-quorum must be at least 1, got %d", c.WriteQuorum)
	}
	if c.WriteQuorum > c.Replicas {
		return fmt.Errorf("write-quorum %d is larger than replicas %d (%d nodes)", c.WriteQuorum, c.Replicas, len(c.Nodes))
	}
	if c.PublicURL != "" {
		if _, err := parseNodeURL(c.PublicURL); err != nil {
			return fmt.Errorf("public-url %q: %w", c.PublicURL, err)
		}
	}
	for _, a := range []struct{ name, v, def string }{
		{"address", c.Address, DefaultAddress},
		{"ssh-proxy-address", c.SSHProxyAddress, DefaultSSHProxyAddress},
		{"admin-address", c.AdminAddress, DefaultAdminAddress},
	} {
		v := a.v
		if v == "" {
			v = a.def
		}
		if _, _, err := net.SplitHostPort(v); err != nil {
			return fmt.Errorf("%s %q: %w", a.name, v, err)
		}
	}
	if c.AdminToken != "" && len(c.AdminToken) < MinAdminToken {
		return fmt.Errorf("admin-token is %d characters: use at least %d (e.g. openssl rand -hex 32)", len(c.AdminToken), MinAdminToken)
	}
	if admin := cmp.Or(c.AdminAddress, DefaultAdminAddress); c.AdminToken == "" && !LoopbackAddress(admin) {
		return fmt.Errorf("admin-address %s is reachable from the network and its status, metrics and profiles are for operators: "+
			"set an admin-token (--admin-token or CRING_ADMIN_TOKEN; clients send it as Authorization: Bearer), or listen on loopback (127.0.0.1:35356)", admin)
	}
	if c.SSHMaxConns < 0 || c.SSHMaxConnsPerAddress < 0 || c.SSHHandshakeTimeout < 0 || c.SSHIdleTimeout < 0 {
		return errors.New("ssh-max-conns, ssh-max-conns-per-address, ssh-handshake-timeout and ssh-idle-timeout must not be negative")
	}
	if c.SSHMaxConns == 0 {
		c.SSHMaxConns = DefaultSSHMaxConns
	}
	if c.SSHMaxConnsPerAddress == 0 {
		c.SSHMaxConnsPerAddress = min(DefaultSSHMaxConnsPerAddress, c.SSHMaxConns)
	}
	if c.SSHHandshakeTimeout == 0 {
		c.SSHHandshakeTimeout = DefaultSSHHandshakeTimeout
	}
	if c.SSHIdleTimeout == 0 {
		c.SSHIdleTimeout = DefaultSSHIdleTimeout
	}
	if c.Address == "" {
		c.Address = DefaultAddress
	}
	if c.SSHProxyAddress == "" {
		c.SSHProxyAddress = DefaultSSHProxyAddress
	}
	if c.AdminAddress == "" {
		c.AdminAddress = DefaultAdminAddress
	}
	if c.HealthInterval <= 0 {
		c.HealthInterval = DefaultHealthInterval
	}
	if c.NodeTimeout <= 0 {
		c.NodeTimeout = DefaultNodeTimeout
	}
	if c.ScanInterval == 0 {
		c.ScanInterval = DefaultScanInterval
	}
	if c.RepairRate == 0 {
		c.RepairRate = DefaultRepairRate
	}
	if c.RepairByteRate == 0 {
		c.RepairByteRate = DefaultRepairByteRate
	}
	if c.PostQuorumTimeout <= 0 {
		c.PostQuorumTimeout = DefaultPostQuorum
	}
	if c.BodyIdleTimeout <= 0 {
		c.BodyIdleTimeout = DefaultBodyIdleTimeout
	}
	if c.MaxRequestsPerClient < 0 || c.MaxRequests < 0 || c.MaxConnsPerAddress < 0 || c.MaxConns < 0 {
		return errors.New("max-requests-per-client, max-requests, max-conns-per-address and max-conns must not be negative")
	}
	if c.MaxRequestsPerClient == 0 {
		c.MaxRequestsPerClient = DefaultMaxRequestsPerClient
	}
	if c.MaxRequests == 0 {
		c.MaxRequests = DefaultMaxRequests
	}
	if c.MaxConnsPerAddress == 0 {
		c.MaxConnsPerAddress = DefaultMaxConnsPerAddress
	}
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.ScrubInterval == 0 {
		c.ScrubInterval = DefaultScrubInterval
	}
	if c.ScrubRate == 0 {
		c.ScrubRate = DefaultScrubRate
	}
	if c.TombstoneGrace == 0 {
		c.TombstoneGrace = DefaultTombstoneGrace
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("TLS needs both --tls-cert and --tls-key (PEM files)")
	}
	if c.ServerKey != "" && c.DataDir == "" {
		return errors.New("healing needs --data-dir for its durable hints (with --server-key)")
	}
	switch c.Accounts {
	case "":
		c.Accounts = AccountsPerNode
	case AccountsPerNode, AccountsShared:
	default:
		return fmt.Errorf("accounts must be %q or %q, got %q", AccountsPerNode, AccountsShared, c.Accounts)
	}
	if c.Backup.URL != "" {
		if _, err := url.Parse(c.Backup.URL); err != nil {
			return fmt.Errorf("backup-url %q: %w", c.Backup.URL, err)
		}
		if c.Backup.Bucket == "" && !strings.HasPrefix(c.Backup.URL, "file://") {
			return errors.New("backup-bucket is required when backup-url is an S3 endpoint")
		}
	}
	switch c.Backup.Mode {
	case "":
		c.Backup.Mode = "async"
	case "async", "sync":
	default:
		return fmt.Errorf("backup-mode must be sync or async, got %q", c.Backup.Mode)
	}
	if c.Backup.URL != "" && c.DataDir == "" {
		return errors.New("backups need --data-dir for their durable queue")
	}
	if c.Backup.Zone == "" {
		c.Backup.Zone = DefaultBackupZone
	}
	return nil
}
