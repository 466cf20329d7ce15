package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/presence-dev/presence/api"
	"github.com/presence-dev/presence/cluster"
	"github.com/presence-dev/presence/events"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// fleetBudget is PRESENCE_CLUSTER_QUERY_TIMEOUT in TestClusterAnswersForTheFleet.
const fleetBudget = 500 * time.Millisecond

// batchGet posts ids to n (cluster scope) and returns the answer, how long
// it took and the HTTP status.
func (n *clusterNode) batchGet(ids []string) (api.BatchGetResponse, time.Duration, error) {
	var out api.BatchGetResponse
	body, _ := json.Marshal(map[string][]string{"ids": ids})
	cl := http.Client{Timeout: 10 * time.Second}
	start := time.Now()
	resp, err := cl.Post("http://"+n.api+"/v1/devices:batchGet", "application/json", bytes.NewReader(body))
	if err != nil {
		return out, 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	took := time.Since(start)
	if resp.StatusCode != http.StatusOK {
		return out, took, fmt.Errorf("%s batchGet: %d %s", n.name, resp.StatusCode, b)
	}
	return out, took, json.Unmarshal(b, &out)
}

// allAnswer checks that every node answers a batchGet of ids completely.
func allAnswer(nodes []*clusterNode, ids []string) error {
	for _, n := range nodes {
		r, _, err := n.batchGet(ids)
		if err != nil {
			return err
		}
		if err := complete(r, ids); err != nil {
			return fmt.Errorf("%s: %v", n.name, err)
		}
	}
	return nil
}

// complete checks that a batchGet of ids answered every one online, from
// every node's share.
func complete(r api.BatchGetResponse, ids []string) error {
	if r.Partial.Partial || len(r.Missing) > 0 || len(r.Unavailable) > 0 || len(r.Devices) != len(ids) {
		return fmt.Errorf("%d devices, missing %v, unavailable %d, partial %v %v",
			len(r.Devices), r.Missing, len(r.Unavailable), r.Partial.Partial, r.MissingNodes)
	}
	for i, d := range r.Devices {
		if d.ID != ids[i] || d.Status != "online" {
			return fmt.Errorf("device %d: %+v, want %s online", i, d, ids[i])
		}
	}
	return nil
}

// Every node answers for the whole cluster: lookups, batchGet in the
// caller's order, stats and lists equal to the fleet, /v1/cluster with
// every member's answer. After kill -9 of one node the answers are partial
// within the budget, naming it, and complete again after the rebuild.
func TestClusterAnswersForTheFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	s := newStack(t)
	c := s.config()
	c.Engine.DefaultTimeout = time.Minute // no device goes offline during the test
	presenced(t)
	budget := "PRESENCE_CLUSTER_QUERY_TIMEOUT=" + fleetBudget.String()
	a := startClusterNode(t, s, c, "node-a", "", budget)
	b := startClusterNode(t, s, c, "node-b", a.gossip, budget)
	cn := startClusterNode(t, s, c, "node-c", a.gossip, budget)
	nodes := []*clusterNode{a, b, cn}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("cluster logs:\n%s", logsOf(nodes...))
		}
	})
	pollUntil(t, 20*time.Second, "three-node cluster", func() error { return formed(a, b, cn) })
	for _, n := range nodes {
		testenv.Eventually(t, 10*time.Second, func() error { return n.getJSON("/readyz", &json.RawMessage{}) })
	}
	const first, count = 5000, 60
	ids := make([]string, count)
	for i := range ids {
		ids[i] = strconv.Itoa(first + i)
		s.publish(first+i, "telemetry", "{}")
	}
	// Reversed, to check the caller's order is kept.
	asked := slices.Clone(ids)
	slices.Reverse(asked)
	pollUntil(t, 10*time.Second, "every device answered by every node", func() error { return allAnswer(nodes, asked) })
	counts, err := ownedExactly(ids, a, b, cn) // each device on one node (scope=local)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d devices, owned %v; every node answers all of them", count, counts)
	for _, n := range nodes {
		// One device of each owner, through GET /v1/devices/{id}.
		for _, id := range []string{ids[0], ids[count/2], ids[count-1]} {
			var d api.Device
			if err := n.getJSON("/v1/devices/"+id, &d); err != nil || d.ID != id || d.Status != "online" {
				t.Fatalf("%s GET %s: %+v %v", n.name, id, d, err)
			}
		}
		var st api.Stats
		if err := n.getJSON("/v1/stats", &st); err != nil {
			t.Fatal(err)
		}
		sum := 0
		for _, nc := range st.Nodes {
			sum += nc.Total
			if nc.Total != counts[nc.Node] {
				t.Errorf("%s: stats say %s has %d, it holds %d", n.name, nc.Node, nc.Total, counts[nc.Node])
			}
		}
		if st.Total != count || st.Online != count || len(st.Nodes) != 3 || sum != count || st.Partial.Partial {
			t.Fatalf("%s /v1/stats: %+v", n.name, st)
		}
		var list struct {
			Devices []api.Device `json:"devices"`
			Matched int          `json:"matched"`
			api.Partial
		}
		if err := n.getJSON("/v1/devices?status=online&limit=1000", &list); err != nil {
			t.Fatal(err)
		}
		if list.Matched != count || len(list.Devices) != count || list.Partial.Partial {
			t.Fatalf("%s /v1/devices: matched %d, %d devices, partial %v", n.name, list.Matched, len(list.Devices), list.Partial.Partial)
		}
		v, err := n.cluster()
		if err != nil {
			t.Fatal(err)
		}
		if v.Devices != count || v.Partial.Partial {
			t.Fatalf("%s /v1/cluster: devices %d, partial %v", n.name, v.Devices, v.Partial.Partial)
		}
		for _, m := range v.Members {
			if !m.Answered || m.Devices == nil || *m.Devices != counts[m.Name] || m.Version == "" ||
				(m.Name != n.name && m.LastHeard == "") {
				t.Fatalf("%s /v1/cluster member %+v", n.name, m)
			}
		}
	}

	// SSE on A streams the transitions of devices B and C own (and,
	// filtered, nothing else); scope=local shows only A's own.
	tb := cluster.NewTable(cluster.DefaultPartitions, []string{"node-a", "node-b", "node-c"})
	byOwner := map[string]string{}
	for _, id := range ids {
		if o := tb.OwnerOf(id); byOwner[o] == "" {
			byOwner[o] = id
		}
	}
	filter := byOwner["node-a"] + "," + byOwner["node-b"] + "," + byOwner["node-c"]
	fleetSSE := sseStream(t, a, "/v1/events?type=status&id="+filter)
	localSSE := sseStream(t, a, "/v1/events?type=status&scope=local&id="+filter)
	time.Sleep(1500 * time.Millisecond) // the remote streams open (remoteRetry)
	for _, o := range []string{"node-a", "node-b", "node-c"} {
		id, _ := strconv.Atoi(byOwner[o])
		s.publish(id, "status", "offline")
	}
	got := map[string]bool{}
	deadline := time.After(10 * time.Second)
	for len(got) < 3 {
		select {
		case e := <-fleetSSE:
			if e.Status != "offline" {
				continue
			}
			got[e.ID] = true
		case <-deadline:
			t.Fatalf("SSE on node-a saw %v of the offline transitions of %s", got, filter)
		}
	}
	t.Logf("SSE on node-a: offline transitions of devices owned by A, B and C: %v", got)
	time.Sleep(300 * time.Millisecond)
	for len(localSSE) > 0 {
		if e := <-localSSE; e.ID != byOwner["node-a"] {
			t.Fatalf("scope=local on node-a streamed %s (owned elsewhere)", e.ID)
		}
	}
	// Back online, so that the rest sees the whole fleet online.
	for _, o := range []string{"node-a", "node-b", "node-c"} {
		id, _ := strconv.Atoi(byOwner[o])
		s.publish(id, "telemetry", "{}")
	}
	pollUntil(t, 10*time.Second, "the three back online, in the engines and in Redis", func() error {
		r, _, err := a.batchGet(asked)
		if err != nil {
			return err
		}
		if err := complete(r, asked); err != nil {
			return err
		}
		return redisAll(s, ids, "online") // the rebuild after the kill reads Redis
	})

	// kill -9 C: until the others rebuild its partitions, answers lack it,
	// within the budget, and say so.
	if err := cn.p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-cn.p.done
	r, took, err := a.batchGet(asked)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("batchGet on A right after the kill: %v, %d devices, %d unavailable, missing nodes %v",
		took.Round(time.Millisecond), len(r.Devices), len(r.Unavailable), r.MissingNodes)
	if !r.Partial.Partial || !slices.Equal(r.MissingNodes, []string{"node-c"}) || len(r.Unavailable) != counts["node-c"] ||
		len(r.Devices) != count-counts["node-c"] || len(r.Missing) != 0 {
		t.Fatalf("partial answer: %+v", r)
	}
	if took > fleetBudget+time.Second {
		t.Fatalf("batchGet took %v with a budget of %v", took, fleetBudget)
	}
	var st api.Stats
	if err := b.getJSON("/v1/stats", &st); err != nil || !st.Partial.Partial || st.Total != count-counts["node-c"] {
		t.Fatalf("stats on B after the kill: %+v %v", st, err)
	}
	took = pollUntil(t, 30*time.Second, "complete answers after the rebuild", func() error {
		return allAnswer([]*clusterNode{a, b}, asked)
	})
	t.Logf("complete again %v after the kill", took.Round(time.Millisecond))
}

// sseStream opens GET path on n and returns its events.
func sseStream(t *testing.T, n *clusterNode, path string) <-chan events.Event {
	t.Helper()
	resp := openSSE(t, n, path)
	out := make(chan events.Event, 100)
	go func() {
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var e events.Event
				if json.Unmarshal([]byte(data), &e) == nil {
					out <- e
				}
			}
		}
	}()
	return out
}

// A wall of dashboards: 64 cluster-wide SSE streams on each of 5 nodes.
// They share one stream of each peer's events per node, so every node
// still takes its peers' connections (none refused), answers a batchGet
// of the fleet completely, hands off on a graceful leave, and a stream on
// one node still gets the events of a device another node owns.
func TestClusterSSEWall(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	s := newStack(t)
	c := s.config()
	c.Engine.DefaultTimeout = clusterTimeout
	presenced(t)
	var nodes []*clusterNode
	for _, name := range []string{"node-a", "node-b", "node-c", "node-d", "node-e"} {
		join := ""
		if len(nodes) > 0 {
			join = nodes[0].gossip
		}
		nodes = append(nodes, startClusterNode(t, s, c, name, join))
	}
	pollUntil(t, 30*time.Second, "five-node cluster", func() error { return formed(nodes...) })
	for _, n := range nodes {
		testenv.Eventually(t, 10*time.Second, func() error { return n.getJSON("/readyz", &json.RawMessage{}) })
	}
	ids := make([]string, 50)
	for i := range ids {
		ids[i] = strconv.Itoa(9601 + i)
		s.publish(9601+i, "telemetry", "{}")
	}
	pollUntil(t, 15*time.Second, "every node answers for the fleet", func() error { return allAnswer(nodes, ids) })

	const perNode = 64
	for _, n := range nodes {
		for range perNode {
			sseDiscard(t, n, "/v1/events")
		}
	}
	time.Sleep(3 * time.Second) // the streams' feeds open their peer streams
	if err := allAnswer(nodes, ids); err != nil {
		t.Fatalf("with %d streams on every node: %v", perNode, err)
	}
	refused := func(nodes []*clusterNode) float64 {
		total := 0.0
		for _, n := range nodes {
			m, err := testenv.ScrapeMetrics("http://" + n.api + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range m {
				if strings.HasPrefix(k, "presence_cluster_refused_connections_total") {
					total += v
				}
			}
		}
		return total
	}
	if r := refused(nodes); r != 0 {
		t.Fatalf("%v peer connections refused with %d streams on every node", r, perNode)
	}

	// A device another node owns: its events reach a stream on node A.
	var other string
	for i := 9700; other == ""; i++ {
		if held, _ := nodes[0].held([]string{strconv.Itoa(i)}); len(held) == 0 {
			other = strconv.Itoa(i)
		}
	}
	got := sseStream(t, nodes[0], "/v1/events?type=status&id="+other)
	time.Sleep(time.Second)
	n, _ := strconv.Atoi(other)
	s.publish(n, "telemetry", "{}")
	select {
	case e := <-got:
		if e.ID != other || e.Status != "online" {
			t.Fatalf("event %+v, want %s online", e, other)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no event of %s on node A's stream", other)
	}

	// A graceful leave still hands off.
	e := nodes[4]
	if err := e.p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-e.p.done
	rest := nodes[:4]
	pollUntil(t, 30*time.Second, "E's devices owned by the others, answered", func() error {
		if err := formed(rest...); err != nil {
			return err
		}
		if _, err := ownedExactly(append(ids, other), rest...); err != nil {
			return err
		}
		return allAnswer(rest, ids)
	})
	if r := refused(rest); r != 0 {
		t.Fatalf("%v peer connections refused", r)
	}
}

// sseDiscard opens an SSE stream on n and reads it to nothing until the
// test ends.
func sseDiscard(t *testing.T, n *clusterNode, path string) {
	t.Helper()
	resp := openSSE(t, n, path)
	go func() {
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
	}()
}

// openSSE opens an SSE stream on n, closed when the test ends.
func openSSE(t *testing.T, n *clusterNode, path string) *http.Response {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+n.api+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("SSE %s on %s: %v %v", path, n.name, err, resp)
	}
	return resp
}
