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
	fronts    *fronts   // nil with test hosts
	hosts     *hostNet  // nil without
	lb        *balancer // nil without Options.Balancer
	state     *pgState  // nil without Options.State
	// tmp is a private directory outside the work dir for what needs a
	// short path or another owner (HAProxy's socket, PostgreSQL's data
	// directory), removed by close; "" when nothing needs it.
	tmp   string
	user  string // the charm ID every client acts as
	jwt   string
	admin string // the proxies' admin token with test hosts

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

	mu      sync.Mutex
	dataDir string // the next start's --data-dir
	gen     int    // how many times it was destroyed
}

// dir is the data dir the proxy runs (or will next run) on.
func (p *proxyProc) dir() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dataDir
}

// destroy kills the proxy and deletes its data dir, as when its machine
// is lost; its next start is a fresh proxy on a new, empty data dir
// (proxies/<name>.<n>), as on the machine that replaces it.
func (p *proxyProc) destroy() (string, error) {
	p.proc.kill()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := os.RemoveAll(p.dataDir); err != nil {
		return "", fmt.Errorf("destroy %s: %w", p.name, err)
	}
	p.gen++
	p.dataDir = filepath.Join(filepath.Dir(p.dataDir), fmt.Sprintf("%s.%d", p.name, p.gen+1))
	return p.dataDir, nil
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
	if o.State || o.Balancer != "" {
		var err error
		if c.tmp, err = os.MkdirTemp("", "cring-chaos-private-"); err != nil {
			return nil, fmt.Errorf("private dir: %w", err)
		}
	}
	if o.Hosts {
		var err error
		if c.hosts, err = newHostNet(o.Nodes, o.Proxies, o.Balancer != "", o.State); err != nil {
			c.close()
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
	l, err := c.layout()
	if err != nil {
		return err
	}
	ports, proxyPorts := l.nodes, l.proxies
	// The nodes sign tokens for the public URL, which is where clients
	// come in: the balancer's when there is one.
	c.publicURL = "http://" + proxyPorts[0][0]
	if l.balancer != "" {
		c.publicURL = "http://" + l.balancer
	}
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
	if o.State {
		if err := c.startState(ctx, l.state); err != nil {
			return err
		}
	}
	for i := range o.Proxies {
		pp := proxyPorts[i]
		p := &proxyProc{
			name:    fmt.Sprintf("proxy%d", i+1),
			url:     "http://" + pp[0],
			ssh:     pp[1],
			admin:   "http://" + pp[2],
			dataDir: filepath.Join(dir, "proxies", fmt.Sprintf("proxy%d", i+1)),
		}
		p.proc = &proc{name: p.name, logPath: filepath.Join(dir, "logs", p.name+".log"),
			command: c.proxyCommand(i, p, cfgPath), ready: p.admin + "/healthz", crashed: c.crashed, client: c.readyClient()}
		c.proxies = append(c.proxies, p)
		o.logf("starting %s on %s", p.name, p.url)
		if err := p.proc.start(ctx); err != nil {
			return err
		}
	}
	if l.balancer != "" {
		return c.startBalancer(ctx, l.balancer)
	}
	return nil
}

// nodePorts is one node's address and its HTTP, SSH, health, stats and
// metadata ports.
type nodePorts struct {
	host  string
	ports [portsPerNode]int
}

// layout is where every server of a run listens.
type layout struct {
	nodes   []nodePorts
	proxies [][3]string // HTTP, SSH and admin addresses (host:port)
	// The balancer's HTTP address and PostgreSQL's (host:port), "" when
	// the run has none.
	balancer, state string
}

// layout gives every node its address and ports, every proxy its HTTP,
// SSH and admin addresses, and the balancer and PostgreSQL theirs: free
// loopback ports, all drawn at once so no two collide, or with test hosts
// each host's address and the usual ports.
func (c *cluster) layout() (layout, error) {
	o := c.o
	nodes := make([]nodePorts, o.Nodes)
	proxies := make([][3]string, o.Proxies)
	l := layout{nodes: nodes, proxies: proxies}
	if c.hosts != nil {
		for i, h := range c.hosts.nodes {
			nodes[i] = nodePorts{h.Addr.String(), [portsPerNode]int{hostHTTPPort, hostSSHPort, hostHealthPort, hostStatsPort, hostMetaPort}}
		}
		for i, h := range c.hosts.proxies {
			a := h.Addr.String()
			proxies[i] = [3]string{net.JoinHostPort(a, strconv.Itoa(hostHTTPPort)), net.JoinHostPort(a, strconv.Itoa(hostSSHPort)),
				net.JoinHostPort(a, strconv.Itoa(hostAdminPort))}
		}
		if h := c.hosts.balancer; h != nil {
			l.balancer = net.JoinHostPort(h.Addr.String(), strconv.Itoa(hostHTTPPort))
		}
		if h := c.hosts.state; h != nil {
			l.state = net.JoinHostPort(h.Addr.String(), strconv.Itoa(hostPGPort))
		}
		return l, nil
	}
	ports, err := devcluster.FreePorts("127.0.0.1", portsPerNode*o.Nodes+3*o.Proxies+2)
	if err != nil {
		return layout{}, err
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
	rest := pp[3*o.Proxies:]
	if o.Balancer != "" {
		l.balancer = net.JoinHostPort("127.0.0.1", strconv.Itoa(rest[0]))
	}
	if o.State {
		l.state = net.JoinHostPort("127.0.0.1", strconv.Itoa(rest[1]))
	}
	return l, nil
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
			// --meta-bind: the proxies reach the metadata endpoint on the
			// node's address (loopback, or its test host's).
			cmd = c.command(nodes, i, c.o.CringBin, "node", "--shutdown-timeout", "1s", "--meta-port", strconv.Itoa(n.meta), "--meta-bind", dn.Host)
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
		args := []string{"serve",
			"--config", cfgPath,
			"--address", strings.TrimPrefix(p.url, "http://"),
			"--ssh-proxy-address", p.ssh,
			"--admin-address", strings.TrimPrefix(p.admin, "http://"),
			"--data-dir", p.dir(),
			"--server-key", c.keyPath,
			"--scan-interval", c.o.ScanInterval.String(),
			"--post-quorum-timeout", "2s",
			"--node-timeout", "3s",
			"--health-interval", "500ms",
		}
		if c.state != nil {
			args = append(args, "--state", c.state.url)
		}
		cmd := c.command(proxies, i, c.o.CringBin, args...)
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
	// Raised behind a balancer, as docs/deploy.md says: every connection
	// comes from its address.
	MaxConnsPerAddress    int `yaml:"max-conns-per-address,omitempty"`
	SSHMaxConnsPerAddress int `yaml:"ssh-max-conns-per-address,omitempty"`
}

// writeConfig writes the cring.yaml every proxy shares: every node's HTTP
// (and metadata) through its front, SSH direct.
func (c *cluster) writeConfig() (string, error) {
	y := yamlConfig{Replicas: c.o.Replicas, WriteQuorum: c.o.WriteQuorum, PublicURL: c.publicURL}
	if c.o.Balancer != "" {
		y.MaxConnsPerAddress, y.SSHMaxConnsPerAddress = 4096, 1024
	}
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
	if c.lb != nil {
		errs = append(errs, c.lb.proc.heal(ctx))
	}
	return errors.Join(errs...)
}

// close kills every process and closes the fronts, and removes the test
// hosts.
func (c *cluster) close() {
	if c.lb != nil {
		c.lb.proc.kill()
	}
	for _, p := range c.proxies {
		p.proc.kill()
	}
	if c.state != nil {
		c.state.stop()
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
	if c.tmp != "" {
		if err := os.RemoveAll(c.tmp); err != nil {
			c.o.logf("removing %s: %v", c.tmp, err)
		}
	}
}
