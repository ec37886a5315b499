package chaos

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/charmbracelet/keygen"
	"gopkg.in/yaml.v3"

	"github.com/cring-dev/cring/internal/devcluster"
	"github.com/cring-dev/cring/internal/token"
)

// cluster is the system under test: node processes behind fronts, and
// proxy processes on one generated cring.yaml.
type cluster struct {
	o         Options
	dir       string
	publicURL string
	keyPath   string
	nodes     []*node
	proxies   []*proxyProc
	fronts    *fronts
	user      string // the charm ID every client acts as
	jwt       string

	mu      sync.Mutex
	crashes []Finding
}

// node is one Charm server process and its front.
type node struct {
	name    string
	dev     *devcluster.Node // ports and data dir
	meta    int              // cring node's metadata port (0: stock)
	front   *front
	proc    *proc
	httpURL string // direct, not through the front
}

// proxyProc is one `cring serve` process.
type proxyProc struct {
	name  string
	url   string // http://host:port
	admin string
	proc  *proc
}

func (c *cluster) crashed(f Finding) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.crashes = append(c.crashes, f)
}

func (c *cluster) crashFindings() []Finding {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Finding(nil), c.crashes...)
}

// portsPerNode: HTTP, SSH, health, stats and a cring node's metadata port.
const portsPerNode = 5

// startCluster lays out the work dir, seeds one user on every node, and
// starts the nodes, their fronts and the proxies.
func startCluster(ctx context.Context, o Options, dir string) (*cluster, error) {
	c := &cluster{o: o, dir: dir, fronts: newFronts()}
	if err := c.start(ctx); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

func (c *cluster) start(ctx context.Context) error {
	o, dir := c.o, c.dir
	for _, d := range []string{"logs", "proxies", "key"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return fmt.Errorf("work dir: %w", err)
		}
	}
	// Every port at once, so no two of them collide.
	ports, err := devcluster.FreePorts("127.0.0.1", portsPerNode*o.Nodes+3*o.Proxies)
	if err != nil {
		return err
	}
	proxyPorts := ports[portsPerNode*o.Nodes:]
	c.publicURL = fmt.Sprintf("http://127.0.0.1:%d", proxyPorts[0])
	c.keyPath = filepath.Join(dir, "key", "charm_server_ed25519")
	kp, err := keygen.New(c.keyPath, keygen.WithKeyType(keygen.Ed25519), keygen.WithWrite())
	if err != nil {
		return fmt.Errorf("server key: %w", err)
	}
	dc := &devcluster.Cluster{} // only to seed accounts into the nodes' sqlite
	for i := range o.Nodes {
		np := ports[portsPerNode*i:]
		dn := &devcluster.Node{Name: fmt.Sprintf("node%d", i+1), Host: "127.0.0.1",
			HTTPPort: np[0], SSHPort: np[1], HealthPort: np[2], StatsPort: np[3],
			DataDir: filepath.Join(dir, "nodes", fmt.Sprintf("node%d", i+1))}
		n := &node{name: dn.Name, dev: dn, httpURL: dn.HTTPURL()}
		if o.Kind == KindCringNode {
			n.meta = np[4]
		}
		if err := writeKey(dn.DataDir, kp.RawPrivateKey(), kp.RawAuthorizedKey()); err != nil {
			return err
		}
		n.proc = &proc{name: dn.Name, logPath: filepath.Join(dir, "logs", dn.Name+".log"),
			command: c.nodeCommand(n), ready: dn.HealthURL(), crashed: c.crashed}
		c.nodes = append(c.nodes, n)
		dc.Nodes = append(dc.Nodes, dn)
	}
	if err := c.seedUser(dc, dir); err != nil {
		return err
	}
	for _, n := range c.nodes {
		upstreams := []string{net.JoinHostPort(n.dev.Host, strconv.Itoa(n.dev.HTTPPort))}
		if n.meta != 0 {
			upstreams = append(upstreams, net.JoinHostPort(n.dev.Host, strconv.Itoa(n.meta)))
		}
		if n.front, err = c.fronts.open(n.name, upstreams...); err != nil {
			return err
		}
		o.logf("starting %s (%s) on %s, front %s", n.name, o.Kind, n.httpURL, n.front.addr(0))
		if err := n.proc.start(ctx); err != nil {
			return err
		}
	}
	cfgPath, err := c.writeConfig()
	if err != nil {
		return err
	}
	for i := range o.Proxies {
		pp := proxyPorts[3*i:]
		p := &proxyProc{
			name:  fmt.Sprintf("proxy%d", i+1),
			url:   fmt.Sprintf("http://127.0.0.1:%d", pp[0]),
			admin: fmt.Sprintf("http://127.0.0.1:%d", pp[2]),
		}
		p.proc = &proc{name: p.name, logPath: filepath.Join(dir, "logs", p.name+".log"),
			command: c.proxyCommand(p, cfgPath, pp[1]), ready: p.admin + "/healthz", crashed: c.crashed}
		c.proxies = append(c.proxies, p)
		o.logf("starting %s on %s", p.name, p.url)
		if err := p.proc.start(ctx); err != nil {
			return err
		}
	}
	return nil
}

// seedUser gives every node the same account (as `cring accounts sync`
// would for stock nodes) and signs the clients' token with the shared key.
func (c *cluster) seedUser(dc *devcluster.Cluster, dir string) error {
	kp, err := keygen.New(filepath.Join(dir, "client", "charm_ed25519"), keygen.WithKeyType(keygen.Ed25519))
	if err != nil {
		return fmt.Errorf("client key: %w", err)
	}
	if c.user, err = dc.SeedUser(kp.RawAuthorizedKey()); err != nil {
		return err
	}
	signer, err := token.LoadSigner(c.keyPath)
	if err != nil {
		return err
	}
	// Valid for the whole run and then some: the run never needs a refresh.
	ttl := c.o.Duration + c.o.ConvergeTimeout + 2*time.Hour
	c.jwt, err = signer.Sign(c.user, c.publicURL, ttl)
	return err
}

// writeKey puts the shared server key pair where charm looks for it.
func writeKey(dataDir string, priv, pub []byte) error {
	ssh := filepath.Join(dataDir, ".ssh")
	if err := os.MkdirAll(ssh, 0o700); err != nil {
		return fmt.Errorf("server key: %w", err)
	}
	for name, b := range map[string][]byte{"charm_server_ed25519": priv, "charm_server_ed25519.pub": pub} {
		if err := os.WriteFile(filepath.Join(ssh, name), b, 0o600); err != nil {
			return fmt.Errorf("server key: %w", err)
		}
	}
	return nil
}

// nodeCommand is how node n runs: stock `charm serve` or `cring node`,
// configured like a real deployment through CHARM_SERVER_*.
func (c *cluster) nodeCommand(n *node) func() *exec.Cmd {
	return func() *exec.Cmd {
		dn := n.dev
		var cmd *exec.Cmd
		if c.o.Kind == KindCringNode {
			cmd = exec.Command(c.o.CringBin, "node", "--shutdown-timeout", "1s", "--meta-port", strconv.Itoa(n.meta))
		} else {
			cmd = exec.Command(c.o.CharmBin, "serve")
		}
		cmd.Env = append(childEnv(),
			"CHARM_SERVER_BIND_ADDRESS="+dn.Host,
			"CHARM_SERVER_HOST="+dn.Host,
			"CHARM_SERVER_HTTP_PORT="+strconv.Itoa(dn.HTTPPort),
			"CHARM_SERVER_SSH_PORT="+strconv.Itoa(dn.SSHPort),
			"CHARM_SERVER_HEALTH_PORT="+strconv.Itoa(dn.HealthPort),
			"CHARM_SERVER_STATS_PORT="+strconv.Itoa(dn.StatsPort),
			"CHARM_SERVER_DATA_DIR="+dn.DataDir,
			"CHARM_SERVER_PUBLIC_URL="+c.publicURL,
		)
		return cmd
	}
}

// proxyCommand is how proxy p runs: `cring serve` on the shared
// cring.yaml, with its own data dir and short timers.
func (c *cluster) proxyCommand(p *proxyProc, cfgPath string, sshPort int) func() *exec.Cmd {
	return func() *exec.Cmd {
		cmd := exec.Command(c.o.CringBin, "serve",
			"--config", cfgPath,
			"--address", strings.TrimPrefix(p.url, "http://"),
			"--ssh-proxy-address", fmt.Sprintf("127.0.0.1:%d", sshPort),
			"--admin-address", strings.TrimPrefix(p.admin, "http://"),
			"--data-dir", filepath.Join(c.dir, "proxies", p.name),
			"--server-key", c.keyPath,
			"--scan-interval", c.o.ScanInterval.String(),
			"--post-quorum-timeout", "2s",
			"--node-timeout", "3s",
			"--health-interval", "500ms",
		)
		cmd.Env = childEnv()
		return cmd
	}
}

// childEnv is this process's environment without CRING_* and CHARM_*
// variables: children are configured by exactly what the run gives them.
func childEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CRING_") && !strings.HasPrefix(kv, "CHARM_") {
			out = append(out, kv)
		}
	}
	return out
}

// yamlNode and yamlConfig are the part of cring.yaml the run sets.
type yamlNode struct {
	Name string `yaml:"name"`
	URL  string `yaml:"url"`
	SSH  string `yaml:"ssh"`
	Meta string `yaml:"meta,omitempty"`
}

type yamlConfig struct {
	Replicas    int        `yaml:"replicas"`
	WriteQuorum int        `yaml:"write-quorum"`
	PublicURL   string     `yaml:"public-url"`
	Nodes       []yamlNode `yaml:"nodes"`
}

// writeConfig writes the cring.yaml both proxies share: every node's HTTP
// (and metadata) through its front, SSH direct.
func (c *cluster) writeConfig() (string, error) {
	y := yamlConfig{Replicas: c.o.Replicas, WriteQuorum: c.o.WriteQuorum, PublicURL: c.publicURL}
	for _, n := range c.nodes {
		yn := yamlNode{Name: n.name, URL: "http://" + n.front.addr(0), SSH: n.dev.SSHAddr()}
		if n.meta != 0 {
			yn.Meta = "http://" + n.front.addr(1)
		}
		y.Nodes = append(y.Nodes, yn)
	}
	b, err := yaml.Marshal(y)
	if err != nil {
		return "", fmt.Errorf("cring.yaml: %w", err)
	}
	path := filepath.Join(c.dir, "cring.yaml")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return "", fmt.Errorf("cring.yaml: %w", err)
	}
	return path, nil
}

// heal ends every fault: fronts clean, every process running and not
// stopped.
func (c *cluster) heal(ctx context.Context) error {
	var errs []error
	for _, n := range c.nodes {
		n.front.clear()
		errs = append(errs, n.proc.heal(ctx))
	}
	for _, p := range c.proxies {
		errs = append(errs, p.proc.heal(ctx))
	}
	return errors.Join(errs...)
}

// close kills every process and closes the fronts.
func (c *cluster) close() {
	for _, p := range c.proxies {
		p.proc.kill()
	}
	for _, n := range c.nodes {
		n.proc.kill()
		if n.front != nil {
			n.front.close()
		}
	}
}
