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

// Backup is the optional backup target (validated here, used by the backup package).
type Backup struct {
	URL       string `yaml:"url" env:"CRING_BACKUP_URL" flag:"backup-url" help:"backup target: S3 endpoint URL or file:///dir"`
	Bucket    string `yaml:"bucket" env:"CRING_BACKUP_BUCKET" flag:"backup-bucket" help:"S3 backup bucket"`
	Zone      string `yaml:"zone" env:"CRING_BACKUP_ZONE" flag:"backup-zone" help:"S3 backup region"`
	Mode      string `yaml:"mode" env:"CRING_BACKUP_MODE" flag:"backup-mode" help:"async: writes are acked once queued durably under --data-dir; sync: once the backup stored them"` // async (default): durable local queue; sync: acked once stored
	PathStyle bool   `yaml:"path-style" env:"CRING_BACKUP_PATH_STYLE" flag:"backup-path-style" help:"path-style S3 bucket lookup (automatic for IPs and localhost)"`
}

// Config is the proxy's whole configuration. Each setting has one name in
// three places: its cring.yaml key (yaml), its CRING_* variable (env) and
// its flag (flag, with help); Resolve merges them (settings.go). Flag
// options after the name: min1 refuses values below 1, size reads a byte
// size such as 32MiB, zero-off makes 0 mean off (stored as -1).
type Config struct {
	// File is the cring.yaml the rest was read from (--config).
	File string `yaml:"-" env:"CRING_CONFIG" flag:"config" help:"cring.yaml with per-node settings (name, url, ssh, health, zone)"`
	// Hosts are nodes given by URL alone (--host); Resolve appends them
	// to Nodes.
	Hosts           []string       `yaml:"hosts" env:"CRING_HOST" flag:"host" help:"Charm node HTTP URL (repeat for every node)"`
	Nodes           []cluster.Node `yaml:"nodes"`
	Replicas        int            `yaml:"replicas" env:"CRING_REPLICAS" flag:"replicas,min1" help:"copies of every file (N), clamped to the node count"`
	WriteQuorum     int            `yaml:"write-quorum" env:"CRING_WRITE_QUORUM" flag:"write-quorum,min1" help:"replicas that must store a write before it is acknowledged (W; default 2, or N when N < 2)"` // 0: the default
	PublicURL       string         `yaml:"public-url" env:"CRING_PUBLIC_URL" flag:"public-url" help:"the URL clients use, which the nodes sign tokens for (default: what the nodes announce)"`
	Address         string         `yaml:"address" env:"CRING_ADDRESS" flag:"address" help:"HTTP listen address"`
	SSHProxyAddress string         `yaml:"ssh-proxy-address" env:"CRING_SSH_PROXY_ADDRESS" flag:"ssh-proxy-address" help:"SSH listen address"`
	SSHBackendPort  int            `yaml:"ssh-backend-port" env:"CRING_SSH_BACKEND_PORT" flag:"ssh-backend-port" help:"nodes' SSH port (a --host node's SSH address is its host name plus this port)"`
	AdminAddress    string         `yaml:"admin-address" env:"CRING_ADMIN_ADDRESS" flag:"admin-address" help:"health, status, metrics and profiles listen address (/healthz, /readyz, /status, /metrics); not loopback only with --admin-token"`
	AdminToken      string         `yaml:"admin-token" env:"CRING_ADMIN_TOKEN" flag:"admin-token" help:"bearer token the admin address requires (all but /healthz, /readyz and an aggregate /status); required when it is not loopback; better in CRING_ADMIN_TOKEN or the config file than on a command line"` // required when AdminAddress is not loopback
	HealthInterval  time.Duration  `yaml:"health-interval" env:"CRING_HEALTH_INTERVAL" flag:"health-interval" help:"how often every node is probed"`
	NodeTimeout     time.Duration  `yaml:"node-timeout" env:"CRING_NODE_TIMEOUT" flag:"node-timeout" help:"how long a node may take to answer or stall mid-body before it loses the request"`
	SSHMaxConns     int            `yaml:"ssh-max-conns" env:"CRING_SSH_MAX_CONNS" flag:"ssh-max-conns" help:"SSH connections in total; more are closed at once"`
	SSHIdleTimeout  time.Duration  `yaml:"ssh-idle-timeout" env:"CRING_SSH_IDLE_TIMEOUT" flag:"ssh-idle-timeout" help:"an SSH connection with no byte either way for this long is closed"`
	// SSHMaxConnsPerAddress bounds the SSH connections from one source
	// address; a client that has not finished its SSH key exchange within
	// SSHHandshakeTimeout is closed.
	SSHMaxConnsPerAddress int           `yaml:"ssh-max-conns-per-address" env:"CRING_SSH_MAX_CONNS_PER_ADDRESS" flag:"ssh-max-conns-per-address" help:"SSH connections from one source address (an IPv6 /64 is one); more are closed at once"`
	SSHHandshakeTimeout   time.Duration `yaml:"ssh-handshake-timeout" env:"CRING_SSH_HANDSHAKE_TIMEOUT" flag:"ssh-handshake-timeout" help:"an SSH client that has not finished its key exchange this long after connecting is closed"`
	// Accounts says where nodes keep accounts: "per-node" (stock nodes, each
	// its own sqlite) or "shared" (one store every node uses).
	Accounts string `yaml:"accounts" env:"CRING_ACCOUNTS" flag:"accounts" help:"where nodes keep accounts: per-node (stock charm serve) or shared (cring node on one database)"`
	Backup   Backup `yaml:"backup"`
	// ServerKey is the charm_server_ed25519 every node shares: with it the
	// proxy repairs replicas for users (healing is on when it is set).
	ServerKey      string        `yaml:"server-key" env:"CRING_SERVER_KEY" flag:"server-key" help:"the nodes' shared charm_server_ed25519: turns on self-healing (repairs act for users with tokens it signs)"`
	DataDir        string        `yaml:"data-dir" env:"CRING_DATA_DIR" flag:"data-dir" help:"where durable state lives: hints, known users, backup queue (default under the user's data dir)"` // durable hints, users, queues
	ScanInterval   time.Duration `yaml:"scan-interval" env:"CRING_SCAN_INTERVAL" flag:"scan-interval" help:"time between background anti-entropy scans"`
	RepairRate     float64       `yaml:"repair-rate" env:"CRING_REPAIR_RATE" flag:"repair-rate" help:"repairs per second the healer may do"` // repairs per second
	RepairByteRate int64         `yaml:"repair-byte-rate" env:"CRING_REPAIR_BYTE_RATE" flag:"repair-byte-rate,size" help:"bytes per second the healer's repairs may copy, all nodes together"`
	TombstoneGrace time.Duration `yaml:"tombstone-grace" env:"CRING_TOMBSTONE_GRACE" flag:"tombstone-grace" help:"how long deletes are remembered; a node away longer may bring deleted files back"`
	// ScrubInterval 0 in the file is the default (as for every setting);
	// 0 from a flag or variable, or negative anywhere, is no scrub.
	ScrubInterval time.Duration `yaml:"scrub-interval" env:"CRING_SCRUB_INTERVAL" flag:"scrub-interval,zero-off" help:"time from one scrub pass's start to the next (every copy hashed, rotten ones repaired); 0: no scrub"`
	ScrubRate     int64         `yaml:"scrub-rate" env:"CRING_SCRUB_RATE" flag:"scrub-rate,size" help:"bytes per second the scrub may read from each node"` // bytes per second per node
	// State is the PostgreSQL URL of the cluster's shared state: hints,
	// known users and heartbeats every proxy sees (empty: each proxy keeps
	// its own hints and users under DataDir).
	State string `yaml:"state" env:"CRING_STATE" flag:"state" help:"PostgreSQL URL (postgres://…) where every proxy shares hints, known users and heartbeats, so another finishes what a lost proxy owed; empty: each proxy keeps its own under --data-dir"`
	// BodyIdleTimeout bounds how long a client's request or response body
	// may make no progress before the request is abandoned.
	BodyIdleTimeout time.Duration `yaml:"body-idle-timeout" env:"CRING_BODY_IDLE_TIMEOUT" flag:"body-idle-timeout" help:"how long a client may send no byte of its request body (408) or read none of its answer before the request is abandoned"`
	// MaxRequestsPerClient bounds the requests one client (charm ID, or
	// source address on unauthenticated routes) has in flight (429 past
	// it); MaxRequests bounds them in total (503 past it).
	MaxRequestsPerClient int `yaml:"max-requests-per-client" env:"CRING_MAX_REQUESTS_PER_CLIENT" flag:"max-requests-per-client" help:"requests one client (charm ID; source address on unauthenticated routes) may have in flight; more get 429"`
	MaxRequests          int `yaml:"max-requests" env:"CRING_MAX_REQUESTS" flag:"max-requests" help:"requests in flight in total; more get 503"`
	// MaxConnsPerAddress bounds the HTTP connections from one source
	// address (an IPv6 /64 is one); MaxConns bounds them in total.
	MaxConnsPerAddress int `yaml:"max-conns-per-address" env:"CRING_MAX_CONNS_PER_ADDRESS" flag:"max-conns-per-address" help:"HTTP connections from one source address (an IPv6 /64 is one); more are refused (429); raise it behind a reverse proxy"`
	MaxConns           int `yaml:"max-conns" env:"CRING_MAX_CONNS" flag:"max-conns" help:"HTTP connections in total; more are refused (503)"`

	// PostQuorumTimeout bounds the replicas still writing after a write was
	// answered at quorum.
	PostQuorumTimeout time.Duration `yaml:"post-quorum-timeout" env:"CRING_POST_QUORUM_TIMEOUT" flag:"post-quorum-timeout" help:"after a write is answered at quorum, how long the last replicas may take before they are cancelled and hinted"`
	Debug             bool          `yaml:"debug" env:"CRING_DEBUG" flag:"debug" help:"debug logging"`
	// LogFormat is text or json (log/slog's handlers).
	LogFormat string `yaml:"log-format" env:"CRING_LOG_FORMAT" flag:"log-format" help:"log format: text or json"`
	// Pprof serves /debug/pprof/ on the admin address.
	Pprof bool `yaml:"pprof" env:"CRING_PPROF" flag:"pprof" help:"serve Go profiles on the admin address (/debug/pprof/)"`
	// TLSCert and TLSKey (PEM files) make the HTTP address serve HTTPS; the
	// public URL should then be https://.
	TLSCert string `yaml:"tls-cert" env:"CRING_TLS_CERT" flag:"tls-cert" help:"PEM certificate (chain) to serve HTTPS on --address; re-read when it changes"`
	TLSKey  string `yaml:"tls-key" env:"CRING_TLS_KEY" flag:"tls-key" help:"PEM private key of --tls-cert"`
	// NodeCA is a PEM file of CA certificates trusted, besides the
	// system's roots, for https node URLs (nodes serving TLS with
	// certificates from a private CA).
	NodeCA string `yaml:"node-ca" env:"CRING_NODE_CA" flag:"node-ca" help:"PEM CA certificate(s) trusted, besides the system's roots, for https node URLs (nodes serving TLS with a private CA's certificates)"`
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
	var c Config
	if err := decodeFile(path, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

// decodeFile reads a cring.yaml onto c: keys it names replace c's values,
// the others keep theirs.
func decodeFile(path string, c *Config) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil {
		// yaml lists problems on several lines; the operator gets one.
		msg := strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
		return fmt.Errorf("parse config %s: %s", path, msg)
	}
	return nil
}

// NodeFromHost turns a prototype-style --host URL into a node: its name is the
// URL's host:port and its SSH address the host name plus sshPort.
func NodeFromHost(host string, sshPort int) (cluster.Node, error) {
	u, err := parseNodeURL(host)
	if err != nil {
		return cluster.Node{}, fmt.Errorf("--host %q: %w", host, err)
	}
	return cluster.Node{
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
	switch c.LogFormat {
	case "":
		c.LogFormat = "text"
	case "text", "json":
	default:
		return fmt.Errorf("log-format must be text or json, got %q", c.LogFormat)
	}
	switch c.Accounts {
	case "":
		c.Accounts = AccountsPerNode
	case AccountsPerNode, AccountsShared:
	default:
		return fmt.Errorf("accounts must be %q or %q, got %q", AccountsPerNode, AccountsShared, c.Accounts)
	}
	if c.State != "" {
		// Never echo the URL: it may hold a password.
		u, err := url.Parse(c.State)
		if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.Host == "" {
			return errors.New("state: want a postgres:// URL like postgres://cring:secret@db.example.com:5432/charm (percent-encode special characters in the password)")
		}
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
