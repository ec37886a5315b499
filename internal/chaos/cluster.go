package chaos

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
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
	"github.com/cring-dev/cring/internal/netns"
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
	fronts    *fronts  // nil with test hosts
	hosts     *hostNet // nil without
	user      string   // the charm ID every client acts as
	jwt       string
	admin     string // the proxies' admin token with test hosts

	mu      sync.Mutex
	crashes []Finding
}

// node is one Charm server process and its front.
type node struct {
	name    string
	dev     *devcluster.Node // ports and data dir
	meta    int              // cring node's metadata port (0: stock)
	front   nodeFront
	proc    *proc
	httpURL string // direct, not through the front
	// What the proxies' cring.yaml says: the front's listeners, or with
	// test hosts the node's own address.
	proxyURL, proxyMeta string
}

// proxyProc is one `cring serve` process.
type proxyProc struct {
	name  string
	url   string // http://host:port
	admin string
	ssh   string // host:port
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
	c := &cluster{o: o, dir: dir}
	if o.Hosts {
		var err error
		if c.hosts, err = newHostNet(o.Nodes, o.Proxies); err != nil {
			return nil, err
		}
		if c.admin, err = adminToken(); err != nil {
			c.close()
			return nil, err
		}
	} else {
		c.fronts = newFronts()
	}
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
	ports, proxyPorts, err := c.layout()
	if err != nil {
		return err
	}
	c.publicURL = "http://" + proxyPorts[0][0]
	c.keyPath = filepath.Join(dir, "key", "charm_server_ed25519")
	kp, err := keygen.New(c.keyPath, keygen.WithKeyType(keygen.Ed25519), keygen.WithWrite())
	if err != nil {
		return fmt.Errorf("server key: %w", err)
	}
	dc := &devcluster.Cluster{} // only to seed accounts into the nodes' sqlite
	for i := range o.Nodes {
		np := ports[i]
		dn := &devcluster.Node{Name: fmt.Sprintf("node%d", i+1), Host: np.host,
			HTTPPort: np.ports[0], SSHPort: np.ports[1], HealthPort: np.ports[2], StatsPort: np.ports[3],
			DataDir: filepath.Join(dir, "nodes", fmt.Sprintf("node%d", i+1))}
		n := &node{name: dn.Name, dev: dn, httpURL: dn.HTTPURL()}
		if o.Kind == KindCringNode {
			n.meta = np.ports[4]
		}
		if err := writeKey(dn.DataDir, kp.RawPrivateKey(), kp.RawAuthorizedKey()); err != nil {
			return err
		}
		n.proc = &proc{name: dn.Name, logPath: filepath.Join(dir, "logs", dn.Name+".log"),
			command: c.nodeCommand(i, n), ready: dn.HealthURL(), crashed: c.crashed, client: c.readyClient()}
		c.nodes = append(c.nodes, n)
		dc.Nodes = append(dc.Nodes, dn)
	}
	if err := c.seedUser(dc, dir); err != nil {
		return err
	}
	for i, n := range c.nodes {
		if err := c.openFront(i, n); err != nil {
			return err
		}
		if err := n.proc.start(ctx); err != nil {
			return err
		}
	}
	cfgPath, err := c.writeConfig()
	if err != nil {
		return err
	}
	for i := range o.Proxies {
		pp := proxyPorts[i]
		p := &proxyProc{
			name:  fmt.Sprintf("proxy%d", i+1),
			url:   "http://" + pp[0],
			ssh:   pp[1],
			admin: "http://" + pp[2],
		}
		p.proc = &proc{name: p.name, logPath: filepath.Join(dir, "logs", p.name+".log"),
			command: c.proxyCommand(i, p, cfgPath), ready: p.admin + "/healthz", crashed: c.crashed, client: c.readyClient()}
		c.proxies = append(c.proxies, p)
		o.logf("starting %s on %s", p.name, p.url)
		if err := p.proc.start(ctx); err != nil {
			return err
		}
	}
	return nil
}

// nodePorts is one node's address and its HTTP, SSH, health, stats and
// metadata ports.
type nodePorts struct {
	host  string
	ports [portsPerNode]int
}

// layout gives every node its address and ports, and every proxy its
// HTTP, SSH and admin addresses (host:port): free loopback ports, all
// drawn at once so no two collide, or with test hosts each host's address
// and the usual ports.
func (c *cluster) layout() ([]nodePorts, [][3]string, error) {
	o := c.o
	nodes := make([]nodePorts, o.Nodes)
	proxies := make([][3]string, o.Proxies)
	if c.hosts != nil {
		for i, h := range c.hosts.nodes {
			nodes[i] = nodePorts{h.Addr.String(), [portsPerNode]int{hostHTTPPort, hostSSHPort, hostHealthPort, hostStatsPort, hostMetaPort}}
		}
		for i, h := range c.hosts.proxies {
			a := h.Addr.String()
			proxies[i] = [3]string{net.JoinHostPort(a, strconv.Itoa(hostHTTPPort)), net.JoinHostPort(a, strconv.Itoa(hostSSHPort)),
				net.JoinHostPort(a, strconv.Itoa(hostAdminPort))}
		}
		return nodes, proxies, nil
	}
	ports, err := devcluster.FreePorts("127.0.0.1", portsPerNode*o.Nodes+3*o.Proxies)
	if err != nil {
		return nil, nil, err
	}
	for i := range nodes {
		nodes[i].host = "127.0.0.1"
		copy(nodes[i].ports[:], ports[portsPerNode*i:])
	}
	pp := ports[portsPerNode*o.Nodes:]
	for i := range proxies {
		for j := range 3 {
			proxies[i][j] = net.JoinHostPort("127.0.0.1", strconv.Itoa(pp[3*i+j]))
		}
	}
	return nodes, proxies, nil
}

// openFront puts node i behind what its network faults act on, and says
// where the proxies reach it.
func (c *cluster) openFront(i int, n *node) error {
	metaURL := func(host string, port int) string { return "http://" + net.JoinHostPort(host, strconv.Itoa(port)) }
	if c.hosts != nil {
		n.front = &hostFront{node: c.hosts.nodes[i], proxies: c.hosts.proxies}
		n.proxyURL = n.httpURL
		if n.meta != 0 {
			n.proxyMeta = metaURL(n.dev.Host, n.meta)
		}
		c.o.logf("starting %s (%s) on host %s, %s", n.name, c.o.Kind, c.hosts.nodes[i], n.httpURL)
		return nil
	}
	upstreams := []string{net.JoinHostPort(n.dev.Host, strconv.Itoa(n.dev.HTTPPort))}
	if n.meta != 0 {
		upstreams = append(upstreams, net.JoinHostPort(n.dev.Host, strconv.Itoa(n.meta)))
	}
	f, err := c.fronts.open(n.name, upstreams...)
	if err != nil {
		return err
	}
	n.front = f
	n.proxyURL = "http://" + f.addr(0)
	if n.meta != 0 {
		n.proxyMeta = "http://" + f.addr(1)
	}
	c.o.logf("starting %s (%s) on %s, front %s", n.name, c.o.Kind, n.httpURL, f.addr(0))
	return nil
}

// readyClient checks that a process serves: from the clients' host with
// test hosts, else nil (proc's own).
func (c *cluster) readyClient() *http.Client {
	if c.hosts == nil {
		return nil
	}
	return c.hosts.httpClient()
}

// command runs bin for node or proxy i: on its own host with test hosts.
func (c *cluster) command(hosts func(*hostNet) []*netns.Host, i int, bin string, args ...string) *exec.Cmd {
	if c.hosts == nil {
		return exec.Command(bin, args...)
	}
	return hosts(c.hosts)[i].Command(bin, args...)
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
func (c *cluster) nodeCommand(i int, n *node) func() *exec.Cmd {
	nodes := func(hn *hostNet) []*netns.Host { return hn.nodes }
	return func() *exec.Cmd {
		dn := n.dev
		var cmd *exec.Cmd
		if c.o.Kind == KindCringNode {
			cmd = c.command(nodes, i, c.o.CringBin, "node", "--shutdown-timeout", "1s", "--meta-port", strconv.Itoa(n.meta))
		} else {
			cmd = c.command(nodes, i, c.o.CharmBin, "serve")
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
func (c *cluster) proxyCommand(i int, p *proxyProc, cfgPath string) func() *exec.Cmd {
	proxies := func(hn *hostNet) []*netns.Host { return hn.proxies }
	return func() *exec.Cmd {
		cmd := c.command(proxies, i, c.o.CringBin, "serve",
			"--config", cfgPath,
			"--address", strings.TrimPrefix(p.url, "http://"),
			"--ssh-proxy-address", p.ssh,
			"--admin-address", strings.TrimPrefix(p.admin, "http://"),
			"--data-dir", filepath.Join(c.dir, "proxies", p.name),
			"--server-key", c.keyPath,
			"--scan-interval", c.o.ScanInterval.String(),
			"--post-quorum-timeout", "2s",
			"--node-timeout", "3s",
			"--health-interval", "500ms",
		)
		cmd.Env = childEnv()
		if c.admin != "" {
			// Not on the command line: the admin address is not loopback.
			cmd.Env = append(cmd.Env, "CRING_ADMIN_TOKEN="+c.admin)
		}
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
		yn := yamlNode{Name: n.name, URL: n.proxyURL, SSH: n.dev.SSHAddr(), Meta: n.proxyMeta}
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

// heal ends every fault: fronts clean, every link between hosts whole,
// every process running and not stopped.
func (c *cluster) heal(ctx context.Context) error {
	var errs []error
	for _, n := range c.nodes {
		errs = append(errs, n.front.clear())
		errs = append(errs, n.proc.heal(ctx))
	}
	if c.hosts != nil {
		for _, h := range c.hosts.proxies {
			errs = append(errs, h.Heal())
		}
	}
	for _, p := range c.proxies {
		errs = append(errs, p.proc.heal(ctx))
	}
	return errors.Join(errs...)
}

// close kills every process and closes the fronts, and removes the test
// hosts.
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
	if c.hosts != nil {
		if err := c.hosts.close(); err != nil {
			c.o.logf("removing the test hosts: %v", err)
		}
	}
}
