package testenv

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
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisNode is a private redis-server process of a test.
type RedisNode struct {
	Addr string
	port int
	args []string
	dir  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// needRedisServer skips t when redis-server is not installed
// (scripts/services.sh installs it).
func needRedisServer(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: starts redis-server processes")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not installed (scripts/services.sh installs it): skipping the Redis Cluster and Sentinel tests")
	}
}

// freeRedisPort returns a free port p whose cluster bus port, p+10000, is
// free too.
func freeRedisPort(t testing.TB) int {
	t.Helper()
	for range 200 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if p+10000 > 65535 {
			continue
		}
		bus, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+10000))
		if err != nil {
			continue
		}
		bus.Close()
		return p
	}
	t.Fatal("no free port pair for a Redis Cluster node")
	return 0
}

// startRedisNode starts redis-server in dir on a free port (args gives
// the arguments that depend on the port), stopped (SIGKILL) when the test
// ends. A port taken between the probe and the start (another test's
// server answering there) is noticed by the process id the server reports,
// and another port is tried.
func startRedisNode(t testing.TB, dir string, args func(port int) []string) *RedisNode {
	t.Helper()
	var lastErr error
	for range 5 {
		port := freeRedisPort(t)
		n := &RedisNode{Addr: "127.0.0.1:" + strconv.Itoa(port), port: port, dir: dir, args: args(port)}
		if err := n.Start(); err != nil {
			t.Fatal(err)
		}
		if lastErr = n.waitOwn(10 * time.Second); lastErr == nil {
			t.Cleanup(n.Kill)
			return n
		}
		n.Kill()
	}
	t.Fatalf("redis-server in %s: %v", dir, lastErr)
	return nil
}

// serverArgs are the arguments of a data node on port.
func serverArgs(dir string, extra ...string) func(port int) []string {
	return func(port int) []string {
		return append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
			"--save", "", "--appendonly", "no", "--logfile", filepath.Join(dir, "redis.log")}, extra...)
	}
}

// waitOwn waits until the node's process answers on its address (and not
// another process that took the port).
func (n *RedisNode) waitOwn(timeout time.Duration) error {
	c := redis.NewClient(&redis.Options{Addr: n.Addr, DialTimeout: 200 * time.Millisecond, MaxRetries: -1})
	defer c.Close()
	pid, done := n.Pid(), n.exited()
	deadline := time.Now().Add(timeout)
	for {
		info, err := c.Info(context.Background(), "server").Result()
		if err == nil {
			if strings.Contains(info, "process_id:"+strconv.Itoa(pid)+"\r") {
				return nil
			}
			return fmt.Errorf("%s answered by another process", n.Addr)
		}
		select {
		case <-done:
			return fmt.Errorf("redis-server on %s exited: %s", n.Addr, n.Log())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on %s: %w\n%s", n.Addr, err, n.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// exited is closed when the running process has exited.
func (n *RedisNode) exited() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.done
}

// Start starts the process (again, after Kill: with the data its
// configuration keeps, none by default).
func (n *RedisNode) Start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		return errors.New("already running")
	}
	n.cmd = exec.Command("redis-server", n.args...)
	if err := n.cmd.Start(); err != nil {
		n.cmd = nil
		return err
	}
	n.done = make(chan struct{})
	go func(c *exec.Cmd, done chan struct{}) {
		_ = c.Wait()
		close(done)
	}(n.cmd, n.done)
	return nil
}

// Pid is the process id (0 when it is not running).
func (n *RedisNode) Pid() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// StartRedis starts a private single redis-server, stopped when the test
// ends. It skips the test where redis-server is not installed.
func StartRedis(t testing.TB) *RedisNode {
	t.Helper()
	needRedisServer(t)
	dir := t.TempDir()
	return startRedisNode(t, dir, serverArgs(dir))
}

// Kill stops the process with SIGKILL, as a crash would, and waits until
// it has exited (its port is free again).
func (n *RedisNode) Kill() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-n.done:
	case <-time.After(10 * time.Second):
	}
	n.cmd = nil
}

// Log is the node's log file.
func (n *RedisNode) Log() string {
	b, _ := os.ReadFile(filepath.Join(n.dir, "redis.log"))
	return string(b)
}

// RedisCluster is a private Redis Cluster: masters with a replica each,
// redis-server processes on free ports, created with redis-cli --cluster
// create, with a short cluster-node-timeout so that a killed master's
// replica is promoted within seconds.
type RedisCluster struct {
	Nodes []*RedisNode
}

// ClusterNodeTimeout is the cluster-node-timeout of StartRedisCluster: a
// master is failed over about 1-2 of these after it dies.
const ClusterNodeTimeout = 1500 * time.Millisecond

// StartRedisCluster starts a cluster of masters masters with replicas
// replicas each, waits until every slot is served, and stops it when the
// test ends. It skips the test where redis-server is not installed.
func StartRedisCluster(t testing.TB, masters, replicas int) *RedisCluster {
	t.Helper()
	needRedisServer(t)
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Skip("redis-cli is not installed (scripts/services.sh installs it): skipping the Redis Cluster tests")
	}
	rc := &RedisCluster{}
	var addrs []string
	for i := range masters * (1 + replicas) {
		dir := filepath.Join(t.TempDir(), fmt.Sprint("node", i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		n := startRedisNode(t, dir, serverArgs(dir, "--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(dir, "nodes.conf"),
			"--cluster-node-timeout", strconv.Itoa(int(ClusterNodeTimeout/time.Millisecond)),
			"--cluster-replica-validity-factor", "0", // a replica fails over however long it was cut off
			"--cluster-require-full-coverage", "no")) // the other masters' slots stay writable meanwhile
		rc.Nodes = append(rc.Nodes, n)
		addrs = append(addrs, n.Addr)
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	if err := rc.WaitHealthy(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	return rc
}

// Addrs are the addresses of every node, the seed nodes a client is given.
func (rc *RedisCluster) Addrs() []string {
	out := make([]string, len(rc.Nodes))
	for i, n := range rc.Nodes {
		out[i] = n.Addr
	}
	return out
}

// Node returns the node listening on addr.
func (rc *RedisCluster) Node(addr string) *RedisNode {
	for _, n := range rc.Nodes {
		if n.Addr == addr {
			return n
		}
	}
	return nil
}

// Client is a Cluster client of the test, closed when it ends.
func (rc *RedisCluster) Client(t testing.TB) *redis.ClusterClient {
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: rc.Addrs()})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// clusterNode is a line of CLUSTER NODES.
type clusterNode struct {
	addr, flags string
	slots       int
}

// view reads CLUSTER NODES from the first node of rc that answers.
func (rc *RedisCluster) view() ([]clusterNode, error) {
	var lastErr error
	for _, n := range rc.Nodes {
		c := redis.NewClient(&redis.Options{Addr: n.Addr, DialTimeout: 300 * time.Millisecond, MaxRetries: -1})
		out, err := c.ClusterNodes(context.Background()).Result()
		c.Close()
		if err != nil {
			lastErr = err
			continue
		}
		var nodes []clusterNode
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 8 {
				continue
			}
			cn := clusterNode{addr: strings.SplitN(f[1], "@", 2)[0], flags: f[2]}
			for _, r := range f[8:] {
				if strings.HasPrefix(r, "[") { // a slot being migrated
					continue
				}
				lo, hi, ok := strings.Cut(r, "-")
				a, _ := strconv.Atoi(lo)
				b := a
				if ok {
					b, _ = strconv.Atoi(hi)
				}
				cn.slots += b - a + 1
			}
			nodes = append(nodes, cn)
		}
		return nodes, nil
	}
	return nil, lastErr
}

// Masters are the addresses of the masters serving slots now.
func (rc *RedisCluster) Masters() ([]string, error) {
	nodes, err := rc.view()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, n := range nodes {
		if strings.Contains(n.flags, "master") && !strings.Contains(n.flags, "fail") && n.slots > 0 {
			out = append(out, n.addr)
		}
	}
	return out, nil
}

// WaitHealthy waits until every node that runs agrees the cluster is ok
// and live masters serve all 16384 slots.
func (rc *RedisCluster) WaitHealthy(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := rc.healthy()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis cluster not healthy after %v: %w", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (rc *RedisCluster) healthy() error {
	nodes, err := rc.view()
	if err != nil {
		return err
	}
	slots := 0
	for _, n := range nodes {
		if strings.Contains(n.flags, "master") && !strings.Contains(n.flags, "fail") && rc.running(n.addr) {
			slots += n.slots
		}
	}
	if slots != 16384 {
		return fmt.Errorf("live masters serve %d slots", slots)
	}
	for _, n := range rc.Nodes {
		if !rc.running(n.Addr) {
			continue
		}
		c := redis.NewClient(&redis.Options{Addr: n.Addr, DialTimeout: 300 * time.Millisecond, MaxRetries: -1})
		info, err := c.ClusterInfo(context.Background()).Result()
		c.Close()
		if err != nil {
			return err
		}
		if !strings.Contains(info, "cluster_state:ok") {
			return fmt.Errorf("%s: cluster state not ok", n.Addr)
		}
	}
	return nil
}

// running reports whether the node on addr is a process of rc that runs.
func (rc *RedisCluster) running(addr string) bool {
	n := rc.Node(addr)
	if n == nil {
		return false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd != nil
}

// MasterOf returns the address of the master serving key now.
func (rc *RedisCluster) MasterOf(key string) (string, error) {
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: rc.Addrs(), MaxRetries: -1, DialTimeout: 300 * time.Millisecond})
	defer c.Close()
	ctx := context.Background()
	slot, err := c.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		return "", err
	}
	shards, err := c.ClusterSlots(ctx).Result()
	if err != nil {
		return "", err
	}
	for _, s := range shards {
		if int64(s.Start) <= slot && slot <= int64(s.End) && len(s.Nodes) > 0 {
			return s.Nodes[0].Addr, nil
		}
	}
	return "", fmt.Errorf("no master serves slot %d", slot)
}

// RedisSentinel is a private Sentinel-managed Redis: a primary, a replica
// and three Sentinels (quorum 2), failing over within about two seconds
// of the primary's death.
type RedisSentinel struct {
	Master    string // the name the Sentinels monitor
	Primary   *RedisNode
	Replica   *RedisNode
	Sentinels []*RedisNode
}

// StartRedisSentinel starts a Sentinel group and waits until its
// Sentinels know the replica. It skips the test where redis-server is not
// installed.
func StartRedisSentinel(t testing.TB) *RedisSentinel {
	t.Helper()
	needRedisServer(t)
	rs := &RedisSentinel{Master: "presence-test"}
	pdir, rdir := t.TempDir(), t.TempDir()
	rs.Primary = startRedisNode(t, pdir, serverArgs(pdir))
	rs.Replica = startRedisNode(t, rdir, serverArgs(rdir, "--replicaof", "127.0.0.1", strconv.Itoa(rs.Primary.port)))
	for range 3 {
		dir := t.TempDir()
		n := startRedisNode(t, dir, func(port int) []string {
			// A Sentinel rewrites its configuration file: one per start.
			conf := filepath.Join(dir, fmt.Sprint("sentinel-", port, ".conf"))
			body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nlogfile %s\n"+
				"sentinel monitor %s 127.0.0.1 %d 2\n"+
				"sentinel down-after-milliseconds %s 1000\n"+
				"sentinel failover-timeout %s 5000\n"+
				"sentinel parallel-syncs %s 1\n",
				port, dir, filepath.Join(dir, "redis.log"), rs.Master, rs.Primary.port, rs.Master, rs.Master, rs.Master)
			if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			return []string{conf, "--sentinel"}
		})
		rs.Sentinels = append(rs.Sentinels, n)
	}
	// Ready once every Sentinel knows the replica and the other Sentinels.
	deadline := time.Now().Add(30 * time.Second)
	for _, s := range rs.Sentinels {
		c := redis.NewSentinelClient(&redis.Options{Addr: s.Addr})
		for {
			replicas, err1 := c.Replicas(context.Background(), rs.Master).Result()
			sentinels, err2 := c.Sentinels(context.Background(), rs.Master).Result()
			if err1 == nil && err2 == nil && len(replicas) == 1 && len(sentinels) == 2 {
				break
			}
			if time.Now().After(deadline) {
				c.Close()
				t.Fatalf("sentinel %s: replicas %v (%v), sentinels %d (%v)", s.Addr, replicas, err1, len(sentinels), err2)
			}
			time.Sleep(100 * time.Millisecond)
		}
		c.Close()
	}
	return rs
}

// Addrs are the Sentinels' addresses.
func (rs *RedisSentinel) Addrs() []string {
	out := make([]string, len(rs.Sentinels))
	for i, n := range rs.Sentinels {
		out[i] = n.Addr
	}
	return out
}

// PrimaryAddr asks a Sentinel for the primary's address now.
func (rs *RedisSentinel) PrimaryAddr() (string, error) {
	var lastErr error
	for _, s := range rs.Sentinels {
		c := redis.NewSentinelClient(&redis.Options{Addr: s.Addr, DialTimeout: 300 * time.Millisecond})
		addr, err := c.GetMasterAddrByName(context.Background(), rs.Master).Result()
		c.Close()
		if err == nil && len(addr) == 2 {
			return net.JoinHostPort(addr[0], addr[1]), nil
		}
		lastErr = err
	}
	return "", lastErr
}
