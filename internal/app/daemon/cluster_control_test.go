package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/presence-dev/presence/cluster"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// do sends a request to the node's API and returns the status and the
// answer.
func (n *clusterNode) do(method, path, body string) (int, string, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+n.api+path, rd)
	if err != nil {
		return 0, "", err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	cl := http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// Three processes: a device's own timeout and its decommission, sent to
// any node, reach its owner (200 there, 202 elsewhere); the overrides
// survive a graceful leave (the handoff carries them) and a kill -9 (the
// survivor rebuilds them from Redis), and the decommissioned devices stay
// gone.
func TestClusterDeviceControls(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	s := newStack(t)
	c := s.config() // default timeout 2 s
	presenced(t)
	a := startClusterNode(t, s, c, "node-a", "")
	b := startClusterNode(t, s, c, "node-b", a.gossip)
	cn := startClusterNode(t, s, c, "node-c", a.gossip)
	all := []*clusterNode{a, b, cn}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("cluster logs:\n%s", logsOf(all...))
		}
	})
	pollUntil(t, 20*time.Second, "three-node cluster", func() error { return formed(a, b, cn) })
	for _, n := range all {
		pollUntil(t, 10*time.Second, n.name+" ready", func() error { return n.getJSON("/readyz", &struct{}{}) })
	}
	ids := make([]string, 30)
	for i := range ids {
		ids[i] = strconv.Itoa(8001 + i)
	}
	pollUntil(t, 10*time.Second, "every device owned once", func() error {
		for i := range ids { // again until heard: a node's subscription may be a moment behind its readiness
			s.publish(8001+i, "telemetry", "x")
		}
		time.Sleep(200 * time.Millisecond)
		_, err := ownedExactly(ids, a, b, cn)
		return err
	})
	table := cluster.NewTable(cluster.DefaultPartitions, []string{a.name, b.name, cn.name})
	byName := map[string]*clusterNode{a.name: a, b.name: b, cn.name: cn}

	// Overrides for the first 20 through node A, decommission of the last
	// 10 through node B.
	overridden, removed := ids[:20], ids[20:]
	accepted := map[int]int{}
	for _, id := range overridden {
		code, body, err := a.do("PUT", "/v1/devices/"+id+"/timeout", `{"timeout_seconds":3600}`)
		if err != nil {
			t.Fatal(err)
		}
		if want := map[bool]int{true: 200, false: 202}[table.OwnerOf(id) == a.name]; code != want {
			t.Fatalf("PUT %s on A (owner %s): %d %s, want %d", id, table.OwnerOf(id), code, body, want)
		}
		accepted[code]++
	}
	for _, id := range removed {
		code, body, err := b.do("DELETE", "/v1/devices/"+id, "")
		if err != nil {
			t.Fatal(err)
		}
		if want := map[bool]int{true: 200, false: 202}[table.OwnerOf(id) == b.name]; code != want {
			t.Fatalf("DELETE %s on B (owner %s): %d %s, want %d", id, table.OwnerOf(id), code, body, want)
		}
	}
	t.Logf("PUT on A: %d applied there, %d forwarded", accepted[200], accepted[202])
	// A device no node knows: 404 from any node, nothing stored.
	for _, n := range all {
		for _, req := range [][3]string{{"PUT", "/v1/devices/nobody-x/timeout", `{"timeout_seconds":60}`}, {"DELETE", "/v1/devices/nobody-x", ""}} {
			if code, body, err := n.do(req[0], req[1], req[2]); err != nil || code != 404 {
				t.Fatalf("%s %s on %s: %d %s %v, want 404", req[0], req[1], n.name, code, body, err)
			}
		}
	}
	if ok, _ := s.rdb.HExists(context.Background(), s.name+":device:timeouts:"+strconv.Itoa(cluster.PartitionOf("nobody-x", cluster.DefaultPartitions)), "nobody-x").Result(); ok {
		t.Fatal("an override stored for a device no node knows")
	}

	checkControls := func(nodes map[string]*clusterNode, owners *cluster.Table) error {
		for _, id := range overridden {
			owner := nodes[owners.OwnerOf(id)]
			var d struct {
				Status  string  `json:"status"`
				Timeout float64 `json:"timeout_seconds"`
				Source  string  `json:"timeout_source"`
			}
			if err := owner.getJSON("/v1/devices/"+id+"?scope=local", &d); err != nil {
				return err
			}
			if d.Source != "device" || d.Timeout != 3600 || d.Status != "online" {
				return fmt.Errorf("%s at its owner %s: %+v, want online on its own hour", id, owner.name, d)
			}
		}
		for _, id := range removed {
			for _, n := range nodes {
				if code, body, err := n.do("GET", "/v1/devices/"+id, ""); err != nil || code != 404 {
					return fmt.Errorf("%s on %s: %d %s %v, want 404", id, n.name, code, body, err)
				}
			}
			if n, err := s.rdb.Exists(context.Background(), s.name+":device:status:"+id, s.name+":device:lastseen:"+id).Result(); err != nil || n != 0 {
				return fmt.Errorf("%s: %d keys left in Redis (%v)", id, n, err)
			}
		}
		return nil
	}
	// Past the 2 s default: the overridden devices stay online.
	time.Sleep(3 * time.Second)
	pollUntil(t, 10*time.Second, "overrides at their owners, decommissioned devices gone", func() error {
		return checkControls(byName, table)
	})

	// C leaves gracefully: its devices, overrides included, are handed to
	// A and B.
	if err := cn.p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-cn.p.done:
		if err != nil {
			t.Fatalf("C after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("C did not exit after SIGTERM")
	}
	pollUntil(t, 20*time.Second, "C's devices handed to A and B", func() error {
		if err := formed(a, b); err != nil {
			return err
		}
		_, err := ownedExactly(overridden, a, b)
		return err
	})
	two := cluster.NewTable(cluster.DefaultPartitions, []string{a.name, b.name})
	moved := 0
	for _, id := range overridden {
		if table.OwnerOf(id) == cn.name {
			moved++
		}
	}
	if moved == 0 {
		t.Fatal("C owned no overridden device: the handoff is not exercised")
	}
	pollUntil(t, 10*time.Second, "overrides kept across the handoff", func() error {
		return checkControls(map[string]*clusterNode{a.name: a, b.name: b}, two)
	})
	t.Logf("%d overridden devices moved from C with their override", moved)

	// kill -9 B: A rebuilds B's partitions from Redis, overrides included
	// ({prefix}timeouts).
	onB := 0
	for _, id := range overridden {
		if two.OwnerOf(id) == b.name {
			onB++
		}
	}
	if err := b.p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-b.p.done
	one := cluster.NewTable(cluster.DefaultPartitions, []string{a.name})
	took := pollUntil(t, 30*time.Second, "B's devices rebuilt on A with their overrides", func() error {
		if err := formed(a); err != nil {
			return err
		}
		return checkControls(map[string]*clusterNode{a.name: a}, one)
	})
	t.Logf("%d overridden devices rebuilt from Redis on A, override kept, %v after B's SIGKILL", onB, took.Round(time.Millisecond))
}

// A node its cluster does not let in (here: another cluster key, as in a
// rolling restart with the wrong secret) is not ready, says why, and
// neither restores nor subscribes: it would time, alone, the devices the
// others time. A node that reaches no seed serves alone, and its seed
// joins it when it comes up.
func TestNodeOutsideItsClusterNotReady(t *testing.T) {
	s := newStack(t)
	c := s.config()
	a := startClusterNode(t, s, c, "node-a", "")
	testenv.Eventually(t, 10*time.Second, func() error { return a.getJSON("/readyz", &json.RawMessage{}) })
	const otherKey = "YzXRfOErGd29ZyNK0oNwmA8TDLLANWiQpwbhlY2WzdM="
	b := startClusterNode(t, s, c, "node-b", a.gossip, "PRESENCE_CLUSTER_KEY="+otherKey)
	time.Sleep(3 * time.Second) // a join, its retries, a settle: what a node that got in would have done
	if code, body, err := b.do("GET", "/readyz", ""); err != nil || code != http.StatusServiceUnavailable || !strings.Contains(body, "cluster") {
		t.Fatalf("/readyz of the node left out: %d %s %v", code, body, err)
	}
	if out := b.p.output(); strings.Contains(out, "ingest: subscribed") || strings.Contains(out, "state rebuilt from Redis") {
		t.Fatalf("the node left out subscribed or restored:\n%s", out)
	}
	if v, err := a.cluster(); err != nil || len(v.Members) != 1 {
		t.Fatalf("A's view: %+v %v", v, err)
	}
	if out := b.p.output(); !strings.Contains(out, "no seed answered") {
		t.Fatalf("the node left out did not say why:\n%s", out)
	}

	// A node whose seed is not up (the first node of a cluster, or the
	// last one left): nobody to split from, it serves alone; the seed
	// joins it when it comes up.
	dGossip := testenv.FreeAddr(t)
	cn := startClusterNode(t, s, c, "node-c", dGossip)
	testenv.Eventually(t, 15*time.Second, func() error { return cn.getJSON("/readyz", &json.RawMessage{}) })
	d := startNodeEnv(t, s.env(c), "node-d", cn.gossip, "PRESENCE_CLUSTER_BIND="+dGossip)
	pollUntil(t, 30*time.Second, "C and D joined and ready", func() error {
		if err := formed(cn, d); err != nil {
			return err
		}
		for _, n := range []*clusterNode{cn, d} {
			if code, body, err := n.do("GET", "/readyz", ""); err != nil || code != http.StatusOK {
				return fmt.Errorf("%s /readyz: %d %s %v", n.name, code, body, err)
			}
		}
		return nil
	})
}
