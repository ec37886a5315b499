// Package clusterinit generates what a real cring deployment needs: the shared
// Charm server key pair, env files, data directories and systemd units for the
// nodes (`cring node` on a shared PostgreSQL by default, stock `charm serve`
// as an option), the proxy's cring.yaml and unit with self-healing on, and a
// compose file. It never overwrites a key: a cluster's key pair is its identity.
package clusterinit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/charmbracelet/keygen"
	"github.com/cring-dev/cring/internal/config"
	"github.com/cring-dev/cring/internal/nodetls"
	"gopkg.in/yaml.v3"
)

// Defaults and the fixed layout of a generated cluster.
const (
	DefaultNodes   = 3
	DefaultDataDir = "/var/lib/charm"
	// NamePlaceholder in a data dir is replaced by each node's name, so
	// several nodes can share one machine (tests, a single-host trial).
	NamePlaceholder = "{name}"
	CharmImage      = "charmcli/charm:v0.12.6"
	KeyName         = "charm_server_ed25519"
	NodeCAName      = "node-ca" // keys/node-ca.pem and .key (--node-tls)

	SSHPort    = 35353
	HTTPPort   = 35354
	StatsPort  = 35355
	HealthPort = 35356
	MetaPort   = 35357 // cring node's metadata endpoint, for the healer

	maxNodes = 128 // a typo like --nodes 3000 should not fill a disk with directories
)

// Where the generated files go on the machines; the units and README refer to them.
const (
	charmBin      = "/usr/local/bin/charm"
	charmEnvPath  = "/etc/charm/charm.env"
	cringBin      = "/usr/local/bin/cring"
	cringYAMLPath = "/etc/cring/cring.yaml"
	cringKeyPath  = "/etc/cring/" + KeyName
	// TLSCertPath and TLSKeyPath are where cring.yaml expects the proxy's
	// certificate when the public URL is https.
	TLSCertPath = "/etc/cring/tls/fullchain.pem"
	TLSKeyPath  = "/etc/cring/tls/privkey.pem"
	// With --node-tls: each node's certificate, key and the CA that issued
	// them (for local checks) on the node, and the CA on the proxy.
	NodeTLSDir      = "/etc/charm/tls"
	NodeCertPath    = NodeTLSDir + "/node.pem"
	NodeKeyPath     = NodeTLSDir + "/node.key"
	NodeLocalCAPath = NodeTLSDir + "/ca.pem"
	NodeCAPath      = "/etc/cring/node-ca.pem"
	// NodeCertValidity is how long the node CA and certificates are valid:
	// long, as only this cluster's proxies trust the CA (docs/deploy.md
	// says how to issue a new certificate).
	NodeCertValidity = 10 * 365 * 24 * time.Hour
	// ProxyDataDir is the proxy's state (hints, known users, backup queue):
	// the unit's StateDirectory.
	ProxyDataDir = "/var/lib/cring"
	stateRoot    = "/var/lib/"
	distroless   = "gcr.io/distroless/static-debian12"
	postgresImg  = "postgres:16"
)

// Options shape a generated cluster.
type Options struct {
	Dir         string   // output directory
	Nodes       int      // default: len(Hosts), else 3
	PublicURL   string   // required: the URL clients use (the proxy's), http or https
	Hosts       []string // node host names or IPs; default charm1..charmN
	Replicas    int      // default 3, clamped to Nodes
	WriteQuorum int      // default 2 (Replicas when Replicas < 2)
	Zones       []string // optional, one per node
	DataDir     string   // CHARM_SERVER_DATA_DIR on the nodes; default /var/lib/charm; may contain {name}
	// Accounts is the PostgreSQL URL every cring node keeps accounts in
	// (required unless Stock).
	Accounts string
	// Stock generates stock `charm serve` nodes, each with its own sqlite
	// accounts, instead of cring nodes.
	Stock bool
	// NodeTLS makes the nodes serve TLS (CHARM_SERVER_USE_TLS) with
	// certificates from a private CA generated here, which the proxy trusts
	// (node-ca); node URLs are then https.
	NodeTLS bool
	// Now is the clock certificates are dated by (time.Now when nil).
	Now func() time.Time
}

// Node is one generated node.
type Node struct {
	Name    string // stable name: placement depends on it
	Host    string
	Zone    string
	DataDir string // CHARM_SERVER_DATA_DIR on the node
	Dir     string // nodes/<name> under the output directory
}

// Result is what Generate wrote.
type Result struct {
	Dir         string
	PublicURL   string
	Replicas    int
	WriteQuorum int
	Stock       bool
	Nodes       []Node
	PublicKey   string   // the shared server key, authorized_keys form
	Files       []string // paths relative to Dir, in write order
	// NodeTLSUntil is when the node certificates expire (zero without
	// NodeTLS).
	NodeTLSUntil time.Time
}

// KeysExistError means the output directory already holds a server key.
type KeysExistError struct{ Path string }

func (e *KeysExistError) Error() string {
	return fmt.Sprintf("refusing to overwrite existing keys: %s already exists (a cluster was generated there; use a new directory)", e.Path)
}

// plan is Options with defaults applied and every value checked.
type plan struct {
	dir         string
	publicURL   string
	replicas    int
	writeQuorum int
	nodes       []Node
	stock       bool
	nodeTLS     bool
	// nodeTLSUntil is when the node certificates expire (with nodeTLS).
	nodeTLSUntil time.Time
	accounts     string // PostgreSQL URL (cring nodes)
	composePass  string // the compose file's own PostgreSQL password (cring nodes)
	adminToken   string // the compose proxy's admin token
}

// Validate reports whether the options describe a valid cluster, without
// touching the disk. Its errors are one line, meant for an operator.
func (o Options) Validate() error {
	_, err := o.plan()
	return err
}

func (o Options) plan() (*plan, error) {
	p := &plan{dir: o.Dir}
	if strings.TrimSpace(o.Dir) == "" {
		return nil, errors.New("output directory is required")
	}
	pu, err := normalizePublicURL(o.PublicURL)
	if err != nil {
		return nil, err
	}
	p.publicURL = pu
	p.stock = o.Stock
	p.nodeTLS = o.NodeTLS
	if err := checkAccounts(o.Accounts, o.Stock); err != nil {
		return nil, err
	}
	p.accounts = o.Accounts

	n := o.Nodes
	if n == 0 {
		n = DefaultNodes
		if len(o.Hosts) > 0 {
			n = len(o.Hosts)
		}
	}
	if n < 1 || n > maxNodes {
		return nil, fmt.Errorf("nodes must be between 1 and %d, got %d", maxNodes, n)
	}
	hosts := o.Hosts
	if len(hosts) == 0 {
		for i := range n {
			hosts = append(hosts, fmt.Sprintf("charm%d", i+1))
		}
	}
	if len(hosts) != n {
		return nil, fmt.Errorf("%d hosts given for %d nodes: give one host per node", len(hosts), n)
	}
	if len(o.Zones) != 0 && len(o.Zones) != n {
		return nil, fmt.Errorf("%d zones given for %d nodes: give one zone per node, or none", len(o.Zones), n)
	}
	dataDir := o.DataDir
	if dataDir == "" {
		dataDir = DefaultDataDir
	}
	if err := checkDataDir(dataDir); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for i, h := range hosts {
		h = strings.TrimSpace(h)
		if err := checkHost(h); err != nil {
			return nil, err
		}
		if seen[strings.ToLower(h)] {
			return nil, fmt.Errorf("host %q is listed twice: every node needs its own address (nodes use the standard ports)", h)
		}
		seen[strings.ToLower(h)] = true
		name := fmt.Sprintf("charm%d", i+1)
		nd := Node{
			Name:    name,
			Host:    h,
			DataDir: strings.ReplaceAll(dataDir, NamePlaceholder, name),
			Dir:     filepath.Join("nodes", name),
		}
		if len(o.Zones) > 0 {
			nd.Zone = strings.TrimSpace(o.Zones[i])
			if nd.Zone == "" {
				return nil, fmt.Errorf("zone %d is empty", i+1)
			}
		}
		p.nodes = append(p.nodes, nd)
	}

	// Same defaults and clamping as config.Normalize, written out explicitly
	// so the generated cring.yaml says what the proxy will do.
	p.replicas = o.Replicas
	if p.replicas == 0 {
		p.replicas = config.DefaultReplicas
	}
	if p.replicas < 0 {
		return nil, fmt.Errorf("replicas must be at least 1, got %d", p.replicas)
	}
	p.replicas = min(p.replicas, n)
	p.writeQuorum = o.WriteQuorum
	if p.writeQuorum == 0 {
		p.writeQuorum = config.DefaultWriteQuorum
		if p.replicas < 2 {
			p.writeQuorum = p.replicas
		}
	}
	if p.writeQuorum < 1 {
		return nil, fmt.Errorf("write-quorum must be at least 1, got %d", p.writeQuorum)
	}
	if p.writeQuorum > p.replicas {
		return nil, fmt.Errorf("write-quorum %d is larger than replicas %d (%d nodes)", p.writeQuorum, p.replicas, n)
	}
	return p, nil
}

// normalizePublicURL keeps scheme://host[:port]: the nodes put it in every
// token's iss and the proxy compares it, so one spelling must be used everywhere.
func normalizePublicURL(s string) (string, error) {
	if s == "" {
		return "", errors.New("public-url is required: the URL clients use to reach the proxy, e.g. https://charm.example.com:35354")
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		return "", fmt.Errorf("public-url %q: want an http:// or https:// URL like https://charm.example.com:35354", s)
	}
	if u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("public-url %q: want only scheme, host and port (charm clients ignore any path)", s)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("public-url %q: bad port %q", s, p)
		}
	}
	return u.Scheme + "://" + u.Host, nil
}

// checkAccounts wants a postgres:// URL for cring nodes and none for stock
// ones. The URL lands unquoted in env files that systemd and compose parse
// differently, so characters either treats specially must be percent-encoded.
func checkAccounts(s string, stock bool) error {
	if stock {
		if s != "" {
			return errors.New("accounts: stock nodes keep their own sqlite accounts; drop --accounts, or drop --stock for cring nodes on PostgreSQL")
		}
		return nil
	}
	if s == "" {
		return errors.New("accounts is required: the PostgreSQL URL every cring node keeps accounts in, e.g. postgres://charm:secret@db.example.com:5432/charm (or --stock for stock charm serve nodes)")
	}
	if !strings.HasPrefix(s, "postgres://") && !strings.HasPrefix(s, "postgresql://") {
		return errors.New("accounts: want a postgres:// URL like postgres://charm:secret@db.example.com:5432/charm")
	}
	if i := strings.IndexAny(s, " \t\"'\\$#`"); i >= 0 {
		return fmt.Errorf("accounts: %q is not allowed in the URL (env files): percent-encode it (%%%02X)", s[i], s[i])
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return errors.New("accounts: not a valid postgres:// URL (percent-encode special characters in the password)")
	}
	return nil
}

func checkHost(h string) error {
	if h == "" {
		return errors.New("empty host in the host list")
	}
	if ip := net.ParseIP(h); ip != nil {
		return nil
	}
	if strings.Contains(h, ":") {
		return fmt.Errorf("host %q: give a host name or IP address without a port (nodes use ports %d-%d)", h, SSHPort, HealthPort)
	}
	if len(h) > 253 {
		return fmt.Errorf("host %q: name too long", h)
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("host %q: not a valid host name or IP address", h)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return fmt.Errorf("host %q: not a valid host name or IP address", h)
			}
		}
	}
	return nil
}

// checkDataDir keeps the path plain: it lands unquoted in env files (which
// systemd and compose parse differently) and in unit files (where % is special).
func checkDataDir(d string) error {
	if !strings.HasPrefix(d, "/") { // a path on the Linux nodes, whatever runs init
		return fmt.Errorf("data-dir %q must be an absolute path", d)
	}
	for _, r := range strings.ReplaceAll(d, NamePlaceholder, "") {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-+@", r)) {
			return fmt.Errorf("data-dir %q: only letters, digits, / . _ - + @ and %s are allowed", d, NamePlaceholder)
		}
	}
	return nil
}

// file is one output file.
type file struct {
	rel    string
	data   []byte
	perm   fs.FileMode
	secret bool // a key: created exclusively, never replaced
}

// Generate writes a cluster into o.Dir. It refuses when the directory already
// holds a server key. Ordinary files are written first (replacing earlier
// ones atomically), keys last and exclusively, so a failed run leaves no key
// behind and can simply be repeated.
func Generate(ctx context.Context, o Options) (*Result, error) {
	p, err := o.plan()
	if err != nil {
		return nil, err
	}
	if err := checkNoKeys(p.dir); err != nil {
		return nil, err
	}
	kp, err := keygen.New(filepath.Join(p.dir, "keys", KeyName), keygen.WithKeyType(keygen.Ed25519))
	if err != nil {
		return nil, fmt.Errorf("generate server key: %w", err)
	}
	priv := kp.RawPrivateKey()
	pub := []byte(kp.AuthorizedKey() + "\n")
	if len(priv) == 0 {
		return nil, errors.New("generate server key: empty private key")
	}

	var tlsFiles []file
	if p.nodeTLS {
		now := time.Now
		if o.Now != nil {
			now = o.Now
		}
		t := now()
		p.nodeTLSUntil = t.Add(NodeCertValidity)
		if tlsFiles, err = nodeTLSFiles(p, t); err != nil {
			return nil, err
		}
	}
	if !p.stock {
		if p.composePass, err = randomHex(16); err != nil {
			return nil, fmt.Errorf("generate the compose database password: %w", err)
		}
	}
	if p.adminToken, err = randomHex(24); err != nil {
		return nil, fmt.Errorf("generate the compose admin token: %w", err)
	}
	// Env files, cring.yaml (state:) and compose.yaml hold database
	// passwords with cring nodes; compose.yaml always holds the admin token.
	secretPerm := fs.FileMode(0o644)
	if !p.stock {
		secretPerm = 0o600
	}
	files := []file{
		{rel: "README.txt", data: readme(p), perm: 0o644},
		{rel: "cring.yaml", data: cringYAML(p, false), perm: secretPerm},
		{rel: "cring.service", data: cringUnit(p), perm: 0o644},
		{rel: "compose.yaml", data: composeYAML(p), perm: 0o600},
		{rel: filepath.Join("compose", "cring.yaml"), data: cringYAML(p, true), perm: secretPerm},
	}
	for _, n := range p.nodes {
		files = append(files,
			file{rel: filepath.Join(n.Dir, "charm.env"), data: charmEnv(p, n), perm: secretPerm},
			file{rel: filepath.Join(n.Dir, "charm.service"), data: nodeUnit(p, n), perm: 0o644},
		)
	}
	keyFiles := []file{
		{rel: filepath.Join("keys", KeyName), data: priv, perm: 0o600, secret: true},
		{rel: filepath.Join("keys", KeyName+".pub"), data: pub, perm: 0o644, secret: true},
	}
	for _, n := range p.nodes {
		ssh := filepath.Join(n.Dir, "data", ".ssh")
		keyFiles = append(keyFiles,
			file{rel: filepath.Join(ssh, KeyName), data: priv, perm: 0o600, secret: true},
			file{rel: filepath.Join(ssh, KeyName+".pub"), data: pub, perm: 0o644, secret: true},
		)
	}

	res := &Result{Dir: p.dir, PublicURL: p.publicURL, Replicas: p.replicas, WriteQuorum: p.writeQuorum,
		Stock: p.stock, Nodes: p.nodes, PublicKey: strings.TrimSpace(string(pub))}
	keyFiles = append(keyFiles, tlsFiles...)
	res.NodeTLSUntil = p.nodeTLSUntil
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", p.dir, err)
	}
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := writeFile(p.dir, f); err != nil {
			return nil, err
		}
		res.Files = append(res.Files, f.rel)
	}
	// The proxy must accept what we generated; check before any key exists.
	for _, rel := range []string{"cring.yaml", filepath.Join("compose", "cring.yaml")} {
		c, err := config.Load(filepath.Join(p.dir, rel))
		if err == nil {
			err = c.Normalize()
		}
		if err != nil {
			return nil, fmt.Errorf("generated %s does not load: %w", rel, err)
		}
	}
	var written []string
	for _, f := range keyFiles {
		err := ctx.Err()
		if err == nil {
			err = writeFile(p.dir, f)
		}
		if err != nil {
			// Keys from a failed run are useless; removing them lets the
			// operator just run again. Nothing older is touched.
			for _, w := range written {
				_ = os.Remove(filepath.Join(p.dir, w))
			}
			return nil, err
		}
		written = append(written, f.rel)
		res.Files = append(res.Files, f.rel)
	}
	return res, nil
}

// nodeTLSFiles is a private CA (keys/node-ca.pem, keys/node-ca.key) and a
// certificate from it for every node (nodes/<name>/tls/), written like keys:
// exclusively, and removed again if the run fails.
func nodeTLSFiles(p *plan, now time.Time) ([]file, error) {
	ca, err := nodetls.NewCA("cring cluster nodes ("+p.publicURL+")", now, NodeCertValidity)
	if err != nil {
		return nil, err
	}
	files := []file{
		{rel: filepath.Join("keys", NodeCAName+".pem"), data: ca.CertPEM, perm: 0o644, secret: true},
		{rel: filepath.Join("keys", NodeCAName+".key"), data: ca.KeyPEM, perm: 0o600, secret: true},
	}
	for _, n := range p.nodes {
		cert, key, err := ca.Issue(certHosts(n), now, NodeCertValidity)
		if err != nil {
			return nil, err
		}
		dir := filepath.Join(n.Dir, "tls")
		files = append(files,
			file{rel: filepath.Join(dir, path.Base(NodeCertPath)), data: cert, perm: 0o644, secret: true},
			file{rel: filepath.Join(dir, path.Base(NodeKeyPath)), data: key, perm: 0o600, secret: true},
			file{rel: filepath.Join(dir, path.Base(NodeLocalCAPath)), data: ca.CertPEM, perm: 0o644, secret: true},
		)
	}
	return files, nil
}

// certHosts are the names a node's certificate is valid for: its host (what
// cring.yaml reaches it by), its name (compose's service name) and loopback
// (health checks on the node itself).
func certHosts(n Node) []string {
	hosts := []string{n.Host}
	for _, h := range []string{n.Name, "localhost", "127.0.0.1", "::1"} {
		if !slices.Contains(hosts, h) {
			hosts = append(hosts, h)
		}
	}
	return hosts
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// checkNoKeys refuses a directory that already holds the shared key or any
// node's copy of it.
func checkNoKeys(dir string) error {
	candidates := []string{
		filepath.Join(dir, "keys", KeyName),
		filepath.Join(dir, "keys", KeyName+".pub"),
		filepath.Join(dir, "keys", NodeCAName+".key"),
	}
	for _, pat := range []string{KeyName, KeyName + ".pub"} {
		m, err := filepath.Glob(filepath.Join(dir, "nodes", "*", "data", ".ssh", pat))
		if err != nil {
			return fmt.Errorf("look for existing keys: %w", err)
		}
		candidates = append(candidates, m...)
	}
	for _, c := range candidates {
		_, err := os.Lstat(c)
		if err == nil {
			return &KeysExistError{Path: c}
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("look for existing keys: %w", err)
		}
	}
	return nil
}

// writeFile writes through a temporary file in the same directory: ordinary
// files are renamed over the old one, keys are hard-linked into place, which
// fails instead of replacing an existing key.
func writeFile(root string, f file) error {
	path := filepath.Join(root, f.rel)
	dirPerm := fs.FileMode(0o755)
	if f.secret {
		dirPerm = 0o700
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, dirPerm); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if f.secret {
		// MkdirAll leaves existing directories alone; key dirs must be private.
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("protect %s: %w", dir, err)
		}
	}
	tmp, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", f.rel, err)
	}
	defer os.Remove(tmp.Name()) // no-op after a rename; the link's leftover otherwise
	if _, err := tmp.Write(f.data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", f.rel, err)
	}
	if err := tmp.Chmod(f.perm); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", f.rel, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", f.rel, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", f.rel, err)
	}
	if f.secret {
		if err := os.Link(tmp.Name(), path); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return &KeysExistError{Path: path}
			}
			return fmt.Errorf("write %s: %w", f.rel, err)
		}
		return nil
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", f.rel, err)
	}
	return nil
}

// yq renders a string as a YAML scalar, quoted only when needed (an IPv6
// "[fd00::1]:35353" would otherwise start a YAML list).
func yq(s string) string {
	b, err := yaml.Marshal(s)
	if err != nil {
		return strconv.Quote(s) // a JSON string is valid YAML
	}
	return strings.TrimSuffix(string(b), "\n")
}

func hostPort(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }

// metaBind is where a cring node's metadata endpoint listens for the proxy:
// the node's IP, or every interface when it is known by name (as charm's
// own ports then listen).
func metaBind(host string) string {
	if net.ParseIP(host) == nil {
		return "0.0.0.0"
	}
	return host
}

// bindAddress is what charm formats as "<bind>:<port>": only an IP literal
// binds (a name might resolve elsewhere), and IPv6 needs brackets there.
func bindAddress(host string) string {
	ip := net.ParseIP(host)
	switch {
	case ip == nil:
		return ""
	case ip.To4() == nil:
		return "[" + host + "]"
	default:
		return host
	}
}
