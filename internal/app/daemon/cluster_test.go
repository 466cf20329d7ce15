package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/presence-dev/presence/cluster"
	"github.com/presence-dev/presence/internal/app/loadgen"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// The cluster test's fleet: devices clusterFirstID.. publish every
// clusterPeriod; the last clusterSilent of them go silent in step 4.
const (
	clusterDevices = 300
	clusterSilent  = 50
	clusterFirstID = 7001
	clusterPeriod  = 500 * time.Millisecond
	// clusterTimeout must exceed the failover time (memberlist's LAN
	// failure detection, ~5-7 s, plus the rebuild): a survivor rebuilds
	// the dead node's devices from their last_seen in Redis, and those
	// whose deadline passed in the gap turn offline at once (cause handoff,
	// by design), although they kept publishing: their messages reached the
	// survivors during the gap but were forwarded to the dead owner and
	// dropped. With a 3 s timeout every device of the dead node flips
	// offline and back. 20 s: the detection measured 5-7 s, but without a
	// confirming peer memberlist's suspicion lasts up to ~12 s, and a
	// starved node stretches its probes (its health awareness).
	clusterTimeout = 20 * time.Second
)

// clusterNode is one presenced process of the cluster test.
type clusterNode struct {
	name   string
	p      *proc
	api    string // HTTP address
	gossip string
}

// testClusterKey is the nodes' cluster key (base64 of 32 bytes): the
// processes run as production does, data channel authenticated and
// encrypted. It must never appear in their output.
const testClusterKey = "cHJlc2VuY2UtdGVzdC1jbHVzdGVyLWtleS0zMi1ieXQ="

func startClusterNode(t *testing.T, s *stack, c Config, name string, join string, extraEnv ...string) *clusterNode {
	t.Helper()
	return startNodeEnv(t, s.env(c), name, join, extraEnv...)
}

// startNodeEnv starts a cluster node with environment env.
func startNodeEnv(t *testing.T, env []string, name string, join string, extraEnv ...string) *clusterNode {
	t.Helper()
	n := &clusterNode{name: name, gossip: testenv.FreeAddr(t)}
	env = append(env[:len(env):len(env)], "PRESENCE_NODE_NAME="+name, "PRESENCE_CLUSTER_BIND="+n.gossip,
		"PRESENCE_CLUSTER_DATA_ADDR="+testenv.FreeAddr(t), "PRESENCE_CLUSTER_KEY="+testClusterKey)
	env = append(env, extraEnv...)
	if join != "" {
		env = append(env, "PRESENCE_CLUSTER_JOIN="+join)
	}
	n.p = startProc(t, env)
	n.api = n.p.waitServing(t)
	t.Cleanup(func() {
		if out := n.p.output(); strings.Contains(out, testClusterKey) {
			t.Errorf("node %s logged the cluster key", name)
		}
	})
	return n
}

func (n *clusterNode) getJSON(path string, v any) error {
	cl := http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get("http://" + n.api + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s GET %s: %d %s", n.name, path, resp.StatusCode, b)
	}
	return json.Unmarshal(b, v)
}

func (n *clusterNode) cluster() (clusterView, error) {
	var v clusterView
	err := n.getJSON("/v1/cluster", &v)
	return v, err
}

// held returns the ids (of ids) this node's engine holds (scope=local).
func (n *clusterNode) held(ids []string) ([]string, error) {
	body, _ := json.Marshal(map[string][]string{"ids": ids})
	cl := http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Post("http://"+n.api+"/v1/devices:batchGet?scope=local", "application/json", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s batchGet: %d %s", n.name, resp.StatusCode, b)
	}
	var out struct {
		Devices []struct {
			ID string `json:"id"`
		} `json:"devices"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, err
	}
	held := make([]string, len(out.Devices))
	for i, d := range out.Devices {
		held[i] = d.ID
	}
	return held, nil
}

// formed checks that every node sees exactly the members of nodes, all
// usable, with the partitions split among them as the rendezvous table
// over their names splits them.
func formed(nodes ...*clusterNode) error {
	var names []string
	for _, n := range nodes {
		names = append(names, n.name)
	}
	want := cluster.NewTable(cluster.DefaultPartitions, names).Counts()
	for _, n := range nodes {
		v, err := n.cluster()
		if err != nil {
			return err
		}
		if !v.Clustered || v.Node != n.name || v.Partitions != cluster.DefaultPartitions {
			return fmt.Errorf("%s: %+v", n.name, v)
		}
		if len(v.Members) != len(nodes) {
			return fmt.Errorf("%s sees %d members, want %d: %+v", n.name, len(v.Members), len(nodes), v.Members)
		}
		sum := 0
		for _, m := range v.Members {
			if !m.Usable || m.State != "alive" || m.Partitions != want[m.Name] || m.Partitions == 0 {
				return fmt.Errorf("%s sees member %+v, want %d partitions", n.name, m, want[m.Name])
			}
			sum += m.Partitions
		}
		if sum != cluster.DefaultPartitions {
			return fmt.Errorf("%s: partitions sum to %d", n.name, sum)
		}
	}
	return nil
}

// ownedExactly checks that every device is held by exactly one of nodes,
// the one the rendezvous table over their names names, that the nodes'
// owned_devices (GET /v1/cluster) and /v1/stats totals sum to len(ids),
// and returns the per-node counts.
func ownedExactly(ids []string, nodes ...*clusterNode) (map[string]int, error) {
	var names []string
	for _, n := range nodes {
		names = append(names, n.name)
	}
	table := cluster.NewTable(cluster.DefaultPartitions, names)
	holders := make(map[string][]string, len(ids))
	counts := map[string]int{}
	owned, stats := 0, 0
	for _, n := range nodes {
		h, err := n.held(ids)
		if err != nil {
			return nil, err
		}
		for _, id := range h {
			holders[id] = append(holders[id], n.name)
		}
		v, err := n.cluster()
		if err != nil {
			return nil, err
		}
		var st struct {
			Total int `json:"total"`
		}
		if err := n.getJSON("/v1/stats?scope=local", &st); err != nil {
			return nil, err
		}
		owned += v.OwnedDevices
		stats += st.Total
		counts[n.name] = v.OwnedDevices
	}
	var bad []string
	for _, id := range ids {
		if h := holders[id]; len(h) != 1 || h[0] != table.OwnerOf(id) {
			bad = append(bad, fmt.Sprintf("%s held by %v, owner %s", id, h, table.OwnerOf(id)))
		}
	}
	if len(bad) > 0 {
		return counts, fmt.Errorf("%d devices misplaced, e.g. %v", len(bad), bad[:min(len(bad), 5)])
	}
	if owned != len(ids) || stats != len(ids) {
		return counts, fmt.Errorf("owned_devices sum %d, /v1/stats totals sum %d, want %d (%v)", owned, stats, len(ids), counts)
	}
	return counts, nil
}

// redisAll checks that every id has status want in Redis.
func redisAll(s *stack, ids []string, want string) error {
	st, err := redisStatuses(s, ids)
	if err != nil {
		return err
	}
	for _, id := range ids {
		if st[id] != want {
			return fmt.Errorf("device %s: %q in Redis, want %q", id, st[id], want)
		}
	}
	return nil
}

// redisStatuses reads the status key of every id in one MGET ("" when
// missing).
func redisStatuses(s *stack, ids []string) (map[string]string, error) {
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = s.name + ":device:status:" + id
	}
	vals, err := s.rdb.MGet(context.Background(), keys...).Result()
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(ids))
	for i, v := range vals {
		str, _ := v.(string)
		out[ids[i]] = str
	}
	return out, nil
}

// allHistory returns every device's history rows, oldest first.
func allHistory(s *stack) (map[string][]historyRow, error) {
	rows, err := s.pool.Query(context.Background(),
		"SELECT device_id, status, cause, changed_at FROM "+s.history+" ORDER BY changed_at, status DESC")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string][]historyRow{}
	for rows.Next() {
		var id string
		var r historyRow
		if err := rows.Scan(&id, &r.status, &r.cause, &r.at); err != nil {
			return nil, err
		}
		out[id] = append(out[id], r)
	}
	return out, rows.Err()
}

func countStatus(rows []historyRow, status string) int {
	n := 0
	for _, r := range rows {
		if r.status == status {
			n++
		}
	}
	return n
}

// redisWatch polls every device's Redis status and remembers each device
// seen not online while it was expected online.
type redisWatch struct {
	s        *stack
	ids      []string
	expected func(id string) bool // whether id must be online now
	mu       sync.Mutex
	bad      map[string]string // id -> first violation
	polls    int
}

func (w *redisWatch) run(ctx context.Context) {
	tk := time.NewTicker(200 * time.Millisecond)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
		st, err := redisStatuses(w.s, w.ids)
		if err != nil {
			continue
		}
		now := time.Now()
		w.mu.Lock()
		w.polls++
		for _, id := range w.ids {
			if st[id] != "online" && w.expected(id) {
				if _, seen := w.bad[id]; !seen {
					w.bad[id] = fmt.Sprintf("%q at %s", st[id], now.Format("15:04:05.000"))
				}
			}
		}
		w.mu.Unlock()
	}
}

func (w *redisWatch) violations() (map[string]string, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return maps.Clone(w.bad), w.polls
}

// startLoad runs a loadgen Runner publishing telemetry for ids
// first..first+n-1 every clusterPeriod until the returned stop is called.
func startLoad(t *testing.T, s *stack, clientID string, first, n, conns int) (stop func() loadgen.Summary) {
	t.Helper()
	cfg := loadgen.DefaultConfig()
	cfg.Broker, cfg.ClientID = testenv.MQTTURL(), clientID
	cfg.Devices, cfg.IDStart, cfg.Conns, cfg.QoS = n, uint64(first), conns, 1
	cfg.Rate = float64(n) / clusterPeriod.Seconds()
	cfg.Topic = s.name + "/devices/{id}/telemetry"
	cfg.Progress = 0
	r, err := loadgen.New(cfg, loadgen.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var sum loadgen.Summary
	var runErr error
	go func() {
		defer close(done)
		sum, runErr = r.Run(ctx)
	}()
	var once sync.Once
	stop = func() loadgen.Summary {
		once.Do(func() {
			cancel()
			<-done
			if runErr != nil {
				t.Errorf("loadgen %s: %v", clientID, runErr)
			}
		})
		return sum
	}
	t.Cleanup(func() { stop() })
	return stop
}

// pollUntil polls cond every 100 ms until it returns nil and returns how
// long that took; it fails the test with cond's last error after timeout.
func pollUntil(t *testing.T, timeout time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		err := cond()
		if err == nil {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("%s: not reached within %v: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func logsOf(nodes ...*clusterNode) string {
	var b strings.Builder
	for _, n := range nodes {
		for _, line := range strings.Split(n.p.output(), "\n") {
			if strings.Contains(line, "cluster") || strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
				fmt.Fprintf(&b, "[%s] %s\n", n.name, line)
			}
		}
	}
	return b.String()
}

// Issue 6's multi-process test: three presenced processes share a fleet
// published by the load generator through the real Mosquitto, Redis and
// Postgres; one is killed with SIGKILL, a fourth joins, one leaves
// gracefully, and throughout every device has exactly one live owner and
// its Redis status follows what it published.
func TestClusterProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	s := newStack(t)
	c := s.config()
	c.Engine.DefaultTimeout = clusterTimeout
	presenced(t) // build before the clock matters

	ids := make([]string, clusterDevices)
	for i := range ids {
		ids[i] = strconv.Itoa(clusterFirstID + i)
	}
	steady, silent := ids[:clusterDevices-clusterSilent], ids[clusterDevices-clusterSilent:]
	isSilent := make(map[string]bool, len(silent))
	for _, id := range silent {
		isSilent[id] = true
	}

	// 1. Three nodes, B and C joining A.
	start := time.Now()
	a := startClusterNode(t, s, c, "node-a", "")
	b := startClusterNode(t, s, c, "node-b", a.gossip)
	cn := startClusterNode(t, s, c, "node-c", a.gossip)
	var all []*clusterNode
	all = append(all, a, b, cn)
	dumpOnFailure := func() {
		if dir := os.Getenv("PRESENCE_CLUSTER_TEST_LOGS"); dir != "" {
			for _, n := range all {
				os.WriteFile(filepath.Join(dir, n.name+".log"), []byte(n.p.output()), 0o644)
			}
		}
		if t.Failed() {
			t.Logf("cluster logs:\n%s", logsOf(all...))
		}
	}
	t.Cleanup(dumpOnFailure)
	took := pollUntil(t, 20*time.Second, "three-node cluster", func() error { return formed(a, b, cn) })
	for _, n := range []*clusterNode{a, b, cn} {
		testenv.Eventually(t, 10*time.Second, func() error {
			return n.getJSON("/readyz", &json.RawMessage{})
		})
	}
	t.Logf("three nodes formed %v after the first start (%v since all serving)", time.Since(start).Round(time.Millisecond), took.Round(time.Millisecond))

	// 2. Load: the steady devices and the future silent ones, separately so
	// that the silent ones can be stopped at a chosen moment.
	stopSteady := startLoad(t, s, s.name+"-steady", clusterFirstID, len(steady), 2)
	stopSilent := startLoad(t, s, s.name+"-silent", clusterFirstID+len(steady), len(silent), 1)
	took = pollUntil(t, 15*time.Second, "every device online and owned once", func() error {
		st, err := redisStatuses(s, ids)
		if err != nil {
			return err
		}
		for _, id := range ids {
			if st[id] != "online" {
				return fmt.Errorf("device %s: %q in Redis", id, st[id])
			}
		}
		_, err = ownedExactly(ids, a, b, cn)
		return err
	})
	counts, _ := ownedExactly(ids, a, b, cn)
	t.Logf("all %d devices online in Redis and owned exactly once after %v: %v", len(ids), took.Round(time.Millisecond), counts)

	var silencedAt atomic.Int64 // unix ns; 0 while the silent devices publish
	watch := &redisWatch{s: s, ids: ids, bad: map[string]string{}, expected: func(id string) bool {
		return !isSilent[id] || silencedAt.Load() == 0
	}}
	watchCtx, stopWatch := context.WithCancel(context.Background())
	var watchWG sync.WaitGroup
	watchWG.Go(func() { watch.run(watchCtx) })
	t.Cleanup(func() { stopWatch(); watchWG.Wait() })
	time.Sleep(time.Second) // some steady state, history flushed

	// 3. kill -9 C: every device gets a live owner again.
	killed := time.Now()
	if err := cn.p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-cn.p.done
	detected := pollUntil(t, clusterTimeout, "C declared dead", func() error { return formed(a, b) })
	failover := pollUntil(t, clusterTimeout-detected, "devices owned by A and B", func() error {
		_, err := ownedExactly(ids, a, b)
		return err
	}) + detected
	counts, _ = ownedExactly(ids, a, b)
	t.Logf("failover after SIGKILL of %s: table without it after %v, every device owned by A or B after %v: %v",
		cn.name, detected.Round(time.Millisecond), failover.Round(time.Millisecond), counts)
	for _, n := range []*clusterNode{a, b} {
		for _, line := range strings.Split(n.p.output(), "\n") {
			if strings.Contains(line, "partitions rebuilt from Redis") {
				t.Logf("[%s] %s", n.name, line)
			}
		}
	}
	if failover > 10*time.Second {
		t.Logf("note: failover %v exceeds the issue's 10 s target", failover)
	}
	// Devices keep publishing: none flips offline. Give the engines a
	// moment past any deadline that a lost touch could have made them miss.
	time.Sleep(2 * time.Second)
	if v, _ := watch.violations(); len(v) > 0 {
		t.Errorf("after the failover, %d publishing devices were seen not online in Redis: %v", len(v), firstN(v, 10))
	}
	hist := historyEventually(t, s, nil)
	for _, id := range ids {
		if n := countStatus(hist[id], "offline"); n > 0 {
			t.Errorf("device %s kept publishing but has %d offline rows after the failover: %+v", id, n, hist[id])
		}
	}

	// 4. The silent devices stop: each turns offline once.
	silencedAt.Store(time.Now().UnixNano())
	silenced := time.Now()
	stopSilent()
	offlineAfter := pollUntil(t, clusterTimeout+5*time.Second, "silent devices offline in Redis", func() error {
		return redisAll(s, silent, "offline")
	})
	t.Logf("%d silent devices offline in Redis %v after they stopped (timeout %v)", len(silent), offlineAfter.Round(time.Millisecond), clusterTimeout)
	if offlineAfter < clusterTimeout-clusterPeriod {
		t.Errorf("silent devices offline after %v, before their timeout %v", offlineAfter, clusterTimeout)
	}
	hist = historyEventually(t, s, func(h map[string][]historyRow) error {
		for _, id := range silent {
			if countStatus(h[id], "offline") == 0 {
				return fmt.Errorf("no offline row for %s yet", id)
			}
		}
		return nil
	})
	dups := 0
	for _, id := range silent {
		n := countStatus(hist[id], "offline")
		if n > 1 {
			dups++
		}
		if n > 2 {
			t.Errorf("silent device %s: %d offline rows: %+v", id, n, hist[id])
		}
		for _, r := range hist[id] {
			if r.status == "offline" && r.at.Before(silenced) {
				t.Errorf("silent device %s offline at %v, before it went silent at %v", id, r.at, silenced)
			}
		}
	}
	t.Logf("silent devices with a duplicate offline row: %d of %d", dups, len(silent))

	// 5. D joins A: D takes its share.
	joinStart := time.Now()
	d := startClusterNode(t, s, c, "node-d", a.gossip)
	all = append(all, d)
	joinServing := time.Since(joinStart)
	joined := pollUntil(t, 20*time.Second, "cluster A, B, D", func() error { return formed(a, b, d) })
	handedJoin := pollUntil(t, 20*time.Second, "devices rebalanced to D", func() error {
		_, err := ownedExactly(ids, a, b, d)
		return err
	}) + joined
	counts, _ = ownedExactly(ids, a, b, d)
	if counts[d.name] == 0 {
		t.Errorf("D owns no device: %v", counts)
	}
	t.Logf("join of %s: serving after %v, table with it %v later, every device with its owner %v after serving: %v",
		d.name, joinServing.Round(time.Millisecond), joined.Round(time.Millisecond), handedJoin.Round(time.Millisecond), counts)

	// 6. B leaves gracefully: its devices are handed off, none goes offline.
	leaveStart := time.Now()
	if err := b.p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-b.p.done:
		if err != nil {
			t.Fatalf("B after SIGTERM: %v\n%s", err, b.p.output())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("B did not exit after SIGTERM\n%s", b.p.output())
	}
	exited := time.Since(leaveStart)
	handedLeave := pollUntil(t, 20*time.Second, "B's devices handed to A and D", func() error {
		if err := formed(a, d); err != nil {
			return err
		}
		_, err := ownedExactly(ids, a, d)
		return err
	})
	counts, _ = ownedExactly(ids, a, d)
	t.Logf("graceful leave of %s: exited 0 after %v, every device with A or D %v after SIGTERM: %v",
		b.name, exited.Round(time.Millisecond), (exited + handedLeave).Round(time.Millisecond), counts)
	if out := b.p.output(); !strings.Contains(out, "msg=stopped") {
		t.Errorf("no clean stop in B's log:\n%s", out)
	}
	// A and D saw a graceful leave (B gossiped its leaving flag): no
	// rebuild from Redis, the handoff brought the devices.
	for _, n := range []*clusterNode{a, d} {
		out := n.p.output()
		if !strings.Contains(out, "left=["+b.name+"]") || strings.Contains(out, "failed=["+b.name+"]") {
			t.Errorf("%s did not see %s leave gracefully:\n%s", n.name, b.name, grepLines(out, "membership changed"))
		}
	}

	// 7. Every device's Redis status is what it published; no publishing
	// device was ever offline.
	time.Sleep(2 * time.Second)
	st, err := redisStatuses(s, ids)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		want := "online"
		if isSilent[id] {
			want = "offline"
		}
		if st[id] != want {
			t.Errorf("device %s: %q in Redis, want %q", id, st[id], want)
		}
	}
	stopWatch()
	watchWG.Wait()
	v, polls := watch.violations()
	if len(v) > 0 {
		t.Errorf("%d publishing devices were seen not online in Redis (of %d polls): %v", len(v), polls, firstN(v, 10))
	}
	hist = historyEventually(t, s, nil)
	// A new owner may report a device online once more when a message
	// reaches it before the device's state arrives by handoff: at most one
	// duplicate per device per membership change. After a crash none: the
	// new owners hold the partitions' messages until they are rebuilt from
	// Redis.
	phases := []struct {
		name string
		from time.Time
	}{{"before the kill", start}, {"failover", killed.Add(-time.Second)}, {"join", joinStart}, {"leave", leaveStart}}
	onlineDups := make([]map[string]int, len(phases))
	for i := range onlineDups {
		onlineDups[i] = map[string]int{}
	}
	for _, id := range ids {
		rows := hist[id]
		if len(rows) == 0 || rows[0].status != "online" {
			t.Errorf("device %s: history does not start online: %+v", id, rows)
			continue
		}
		for i := 1; i < len(rows); i++ {
			if rows[i].status != "online" || rows[i-1].status != "online" {
				continue
			}
			ph := 0
			for j := range phases {
				if !rows[i].at.Before(phases[j].from) {
					ph = j
				}
			}
			onlineDups[ph][id]++
		}
		off := countStatus(rows, "offline")
		if !isSilent[id] && off > 0 {
			t.Errorf("device %s never stopped publishing but has %d offline rows: %+v", id, off, rows)
		}
		if isSilent[id] && (off == 0 || off > 2) {
			t.Errorf("silent device %s: %d offline rows: %+v", id, off, rows)
		}
	}
	var report []string
	for i, ph := range phases {
		report = append(report, fmt.Sprintf("%s %d", ph.name, len(onlineDups[i])))
		for id, n := range onlineDups[i] {
			if ph.name == "before the kill" || ph.name == "failover" || n > 1 {
				t.Errorf("device %s: %d duplicate online rows during %s: %+v", id, n, ph.name, hist[id])
			}
		}
	}
	sumSteady, sumSilent := stopSteady(), stopSilent()
	t.Logf("devices with a duplicate online row, by phase: %s", strings.Join(report, ", "))
	t.Logf("load: steady %v; silent %v; Redis polled %d times; total %v",
		sumSteady, sumSilent, polls, time.Since(start).Round(time.Millisecond))
}

// historyEventually waits for the history writers (a flush interval) and
// until ok accepts the rows, then returns them.
func historyEventually(t *testing.T, s *stack, ok func(map[string][]historyRow) error) map[string][]historyRow {
	t.Helper()
	var h map[string][]historyRow
	time.Sleep(1500 * time.Millisecond)
	testenv.Eventually(t, 10*time.Second, func() error {
		var err error
		if h, err = allHistory(s); err != nil {
			return err
		}
		if ok != nil {
			return ok(h)
		}
		return nil
	})
	return h
}

func firstN(m map[string]string, n int) []string {
	var out []string
	for k, v := range m {
		out = append(out, k+": "+v)
	}
	slices.Sort(out)
	return out[:min(n, len(out))]
}

// grepLines returns the lines of out that contain s.
func grepLines(out, s string) string {
	var lines []string
	for line := range strings.Lines(out) {
		if strings.Contains(line, s) {
			lines = append(lines, line)
		}
	}
	return strings.Join(lines, "")
}
