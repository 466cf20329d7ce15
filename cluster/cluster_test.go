package cluster

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// startNode starts a Node on 127.0.0.1 with ephemeral ports and fast gossip.
func startNode(t *testing.T, name string, seeds []string, tweak func(*Config)) (*Node, *fakeLocal) {
	t.Helper()
	return startNodeWith(t, name, seeds, tweak, nil)
}

// startNodeWith is startNode with before called between New and Start.
func startNodeWith(t *testing.T, name string, seeds []string, tweak func(*Config), before func(*Node)) (*Node, *fakeLocal) {
	t.Helper()
	cfg := testConfig(t, name)
	cfg.Join = seeds
	if tweak != nil {
		tweak(&cfg)
	}
	local := newFakeLocal()
	n, err := New(cfg, local)
	if err != nil {
		t.Fatal(err)
	}
	if before != nil {
		before(n)
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.halt() })
	return n, local
}

func gossipAddr(n *Node) string { return n.gossip }

// waitTables waits until every node's table has exactly members.
func waitTables(t *testing.T, timeout time.Duration, nodes []*Node, members ...string) time.Duration {
	t.Helper()
	slices.Sort(members)
	start := time.Now()
	testenv.Eventually(t, timeout, func() error {
		for _, n := range nodes {
			tb := n.Table()
			if tb == nil || !slices.Equal(tb.Members(), members) {
				return fmt.Errorf("%s sees %v, want %v", n.Name(), tb, members)
			}
		}
		return nil
	})
	return time.Since(start)
}

func TestSingleNodeAlone(t *testing.T) {
	n, local := startNode(t, "solo", nil, nil)
	if got := n.Table().Members(); !slices.Equal(got, []string{"solo"}) {
		t.Fatalf("members %v", got)
	}
	ids := deviceIDs("s", 100)
	n.Router().TouchBatch(touchBatch(ids, time.Now()))
	if got, _ := local.totals(); got != 100 {
		t.Fatalf("local got %d touches", got)
	}
	if ms := n.Members(); len(ms) != 1 || !ms[0].Usable || ms[0].Data != n.DataAddr() {
		t.Fatalf("members %+v, data %s", ms, n.DataAddr())
	}
	if err := n.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(context.Background()); err != nil { // idempotent
		t.Fatal(err)
	}
}

func TestClusterThreeNodes(t *testing.T) {
	var mu sync.Mutex
	changes := map[string][]Change{}
	onChange := func(name string) func(*Config) {
		return func(c *Config) {
			c.OnChange = func(ch Change) {
				mu.Lock()
				changes[name] = append(changes[name], ch)
				mu.Unlock()
			}
		}
	}
	a, la := startNode(t, "a", nil, func(c *Config) {
		onChange("a")(c)
		c.RebuildHold = time.Hour // released by RebuildDone below
	})
	b, lb := startNode(t, "b", []string{gossipAddr(a)}, onChange("b"))
	c, lc := startNode(t, "c", []string{gossipAddr(a)}, onChange("c"))
	nodes := []*Node{a, b, c}
	locals := map[string]*fakeLocal{"a": la, "b": lb, "c": lc}
	took := waitTables(t, 10*time.Second, nodes, "a", "b", "c")
	t.Logf("three-node table agreed in %v", took)
	for _, n := range nodes[1:] {
		if !n.Table().Equal(a.Table()) {
			t.Fatalf("%s's table differs", n.Name())
		}
	}

	// Messages sent into any node arrive exactly at the owner.
	ids := deviceIDs("dev", 1500)
	for i, n := range nodes {
		part := ids[i*500 : (i+1)*500]
		n.Router().TouchBatch(touchBatch(part, time.Now()))
	}
	tb := a.Table()
	testenv.Eventually(t, 5*time.Second, func() error {
		for name, l := range locals {
			want := tb.devicesOf(name, ids)
			if got := l.ids(); !slices.Equal(got, want) {
				return fmt.Errorf("%s holds %d devices, owns %d", name, len(got), len(want))
			}
		}
		return nil
	})
	for _, id := range ids {
		if got := locals[tb.OwnerOf(id)].touchCount(id); got != 1 {
			t.Fatalf("%s: %d touches at its owner", id, got)
		}
	}

	// c leaves gracefully: a and b drop it quickly.
	start := time.Now()
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	closeTook := time.Since(start)
	took = waitTables(t, 5*time.Second, nodes[:2], "a", "b")
	t.Logf("graceful leave: Close took %v, survivors agreed %v later", closeTook, took)
	// The handoff moved c's devices to their new owners.
	tb2 := a.Table()
	testenv.Eventually(t, 5*time.Second, func() error {
		for _, name := range []string{"a", "b"} {
			if got, want := locals[name].ids(), tb2.devicesOf(name, ids); !slices.Equal(got, want) {
				return fmt.Errorf("%s holds %d devices after c left, owns %d", name, len(got), len(want))
			}
		}
		if n := len(lc.ids()); n != 0 {
			return fmt.Errorf("c still holds %d devices", n)
		}
		return nil
	})

	// b dies: a notices within memberlist's failure detection.
	start = time.Now()
	if err := b.halt(); err != nil {
		t.Fatal(err)
	}
	took = waitTables(t, 10*time.Second, nodes[:1], "a")
	t.Logf("crash: a dropped b after %v", time.Since(start))

	// OnChange runs just after the table is installed: wait for it.
	testenv.Eventually(t, 2*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if l := changes["a"]; len(l) == 0 || !slices.Contains(l[len(l)-1].Failed, "b") {
			return fmt.Errorf("a's last change does not report b failed yet")
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	last := changes["a"][len(changes["a"])-1]
	if !slices.Contains(last.Failed, "b") {
		t.Fatalf("last change of a: failed %v, want b", last.Failed)
	}
	if got, want := last.Rebuild(), last.Old.Owned("b"); !slices.Equal(got, want) {
		t.Fatalf("Rebuild %d partitions, b owned %d", len(got), len(want))
	}
	// c's graceful leave: left, not failed. The handoff brought its
	// devices; the partitions gained from it are rebuilt all the same, in
	// case the handoff did not get through.
	for _, name := range []string{"a", "b"} {
		sawLeft := false
		for _, ch := range changes[name] {
			if slices.Contains(ch.Failed, "c") {
				t.Fatalf("%s took c's graceful leave for a failure", name)
			}
			if slices.Contains(ch.Left, "c") {
				sawLeft = true
				var fromC []int
				for _, p := range ch.Gained() {
					if ch.Old.Owner(p) == "c" {
						fromC = append(fromC, p)
					}
				}
				if got := ch.Rebuild(); len(fromC) == 0 || !slices.Equal(got, fromC) {
					t.Fatalf("graceful leave of c: %s rebuilds %d partitions, gained %d from c", name, len(got), len(fromC))
				}
			}
		}
		if !sawLeft {
			t.Fatalf("no change of %s reports c left", name)
		}
	}

	// a holds the messages of b's partitions until their rebuild is done.
	var id string
	for _, d := range ids {
		if tb2.OwnerOf(d) == "b" {
			id = d
			break
		}
	}
	before := la.touchCount(id)
	a.Router().TouchBatch(touchBatch([]string{id}, time.Now()))
	if got := la.touchCount(id); got != before {
		t.Fatalf("a touch of a partition gained from a crash was applied before its rebuild")
	}
	for _, ch := range changes["a"][:len(changes["a"])-1] {
		a.RebuildDone(ch) // earlier changes (c's leave) release only their own holds
	}
	if got := la.touchCount(id); got != before {
		t.Fatalf("an earlier change's RebuildDone released the hold")
	}
	a.RebuildDone(last)
	if got := la.touchCount(id); got != before+1 {
		t.Fatalf("after RebuildDone the touch was applied %d times, want once", got-before)
	}
}

// A node joining takes its share with the devices' state; leaving gives it
// back. Every device is always held by exactly its owner once things settle.
func TestClusterHandoffOnJoinAndLeave(t *testing.T) {
	a, la := startNode(t, "a", nil, nil)
	ids := deviceIDs("h", 2000)
	a.Router().TouchBatch(touchBatch(ids, time.Now()))
	for _, id := range ids[:10] {
		_ = a.Router().MarkOffline(id, time.Now())
	}
	b, lb := startNode(t, "b", []string{gossipAddr(a)}, nil)
	waitTables(t, 10*time.Second, []*Node{a, b}, "a", "b")
	tb := a.Table()
	testenv.Eventually(t, 10*time.Second, func() error {
		if got, want := lb.ids(), tb.devicesOf("b", ids); !slices.Equal(got, want) {
			return fmt.Errorf("b holds %d devices, owns %d", len(got), len(want))
		}
		if got, want := la.ids(), tb.devicesOf("a", ids); !slices.Equal(got, want) {
			return fmt.Errorf("a holds %d devices, owns %d", len(got), len(want))
		}
		return nil
	})
	// Offline devices arrive offline.
	for _, id := range ids[:10] {
		l := la
		if tb.OwnerOf(id) == "b" {
			l = lb
		}
		l.mu.Lock()
		st := l.state[id]
		l.mu.Unlock()
		if st.Status.String() != "offline" {
			t.Fatalf("%s arrived %v", id, st.Status)
		}
	}
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitTables(t, 5*time.Second, []*Node{a}, "a")
	if got := la.ids(); len(got) != len(ids) {
		t.Fatalf("a holds %d of %d devices after b left", len(got), len(ids))
	}
	if got := lb.ids(); len(got) != 0 {
		t.Fatalf("b still holds %d devices", len(got))
	}
}

func TestClusterEncrypted(t *testing.T) {
	key, err := ParseKey("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
	if err != nil {
		t.Fatal(err)
	}
	withKey := func(k []byte) func(*Config) { return func(c *Config) { c.SecretKey = k } }
	a, _ := startNode(t, "a", nil, withKey(key))
	b, _ := startNode(t, "b", []string{gossipAddr(a)}, withKey(key))
	waitTables(t, 10*time.Second, []*Node{a, b}, "a", "b")
	other := append([]byte(nil), key...)
	other[0] ^= 1
	x, _ := startNode(t, "x", []string{gossipAddr(a)}, withKey(other))
	time.Sleep(500 * time.Millisecond)
	if a.Table().Has("x") || x.Table().Has("a") {
		t.Fatal("a node with another key joined")
	}
}

// A seed that is down at start-up: the node works alone, and the rejoin
// loop merges it into the cluster once the seed is up.
func TestClusterRejoin(t *testing.T) {
	// The seed's gossip sockets exist from here on, so that no other
	// process can take the port meanwhile (a port merely found free can be
	// some connection's source port by the time a binds it); nothing
	// answers on them until a starts.
	tr, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	seed := net.JoinHostPort("127.0.0.1", strconv.Itoa(tr.GetAutoBindPort()))
	c, _ := startNode(t, "c", []string{seed}, func(cfg *Config) { cfg.RejoinInterval = 200 * time.Millisecond })
	if got := c.Table().Members(); !slices.Equal(got, []string{"c"}) {
		t.Fatalf("c sees %v", got)
	}
	a, _ := startNode(t, "a", nil, func(cfg *Config) { cfg.Transport = tr })
	// b's seed list names a dead address and a.
	b, _ := startNode(t, "b", []string{"127.0.0.1:1", seed}, nil)
	waitTables(t, 10*time.Second, []*Node{a, b, c}, "a", "b", "c")
}

// A member with another partition count would route differently: it is
// left out of the table (and, seeing us as misconfigured, so are we of its).
func TestClusterPartitionMismatch(t *testing.T) {
	a, _ := startNode(t, "a", nil, nil)
	b, _ := startNode(t, "b", []string{gossipAddr(a)}, func(c *Config) { c.Partitions = 512 })
	testenv.Eventually(t, 5*time.Second, func() error {
		if len(a.Members()) != 2 {
			return fmt.Errorf("a sees %d members", len(a.Members()))
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond) // a few debounce periods
	if a.Table().Has("b") || b.Table().Has("a") {
		t.Fatal("members with different partition counts share a table")
	}
	for _, m := range a.Members() {
		if m.Name == "b" && (m.Usable || m.Partitions != 512) {
			t.Fatalf("b: %+v", m)
		}
	}
}

func TestMetaRoundTrip(t *testing.T) {
	ip := net.ParseIP("10.0.0.7")
	for _, c := range []struct {
		host, want string
	}{
		{"", "10.0.0.7:7947"},
		{"data.example", "data.example:7947"},
		{"::1", "[::1]:7947"},
	} {
		for _, leaving := range []bool{false, true} {
			m, err := decodeMeta(encodeMeta(c.host, 7947, 1024, leaving), ip)
			if err != nil || m.data != c.want || m.partitions != 1024 || m.proto != ProtocolVersion || m.leaving != leaving {
				t.Errorf("%q leaving=%v: %+v %v", c.host, leaving, m, err)
			}
		}
	}
	// Flag bits not known yet, and bytes after the flags, are ignored.
	if m, err := decodeMeta(append(encodeMeta("x", 1, 1, false), 0x80), ip); err != nil || m.leaving {
		t.Errorf("unknown flag: %+v %v", m, err)
	}
	if m, err := decodeMeta(append(encodeMeta("x", 1, 1, true), 7, 7), ip); err != nil || !m.leaving || m.data != "x:1" {
		t.Errorf("a later version's fields: %+v %v", m, err)
	}
	for _, bad := range [][]byte{nil, {2}, encodeMeta("x", 0, 1024, false), encodeMeta("x", 1, 1, false)[:9]} {
		if _, err := decodeMeta(bad, ip); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

// Metadata comes from any member's gossip: decoding never panics, and
// what decodes encodes back to metadata that decodes the same.
func FuzzDecodeMeta(f *testing.F) {
	f.Add(encodeMeta("", 7947, 1024, false))
	f.Add(encodeMeta("data.example", 7947, 1024, true))
	f.Add([]byte{1, 1, 0, 1, 0, 0, 4, 0, 255})
	ip := net.IPv4(10, 0, 0, 1)
	f.Fuzz(func(t *testing.T, meta []byte) {
		m, err := decodeMeta(meta, ip)
		if err != nil {
			return
		}
		host := string(meta[metaFixedLen : metaFixedLen+int(meta[8])])
		again := encodeMeta(host, int(binary.BigEndian.Uint16(meta[2:])), m.partitions, m.leaving)
		again[1] = meta[1] // the protocol byte is whatever the member sent
		if m2, err := decodeMeta(again, ip); err != nil || m2 != m {
			t.Fatalf("%x decodes to %+v; encoded back, %x decodes to %+v, %v", meta, m, again, m2, err)
		}
	})
}

// The node's member list is a copy taken in memberlist's event callbacks:
// memberlist rewrites a member's Addr, Port and Meta in place (under its
// node lock, which the callbacks run under), and a reader of the list must
// neither race with that nor see it half done (hashicorp/memberlist#306).
// A member that goes away after gossiping the leaving flag has left; one
// that goes away without it has failed.
func TestMemberViewCopies(t *testing.T) {
	n, err := New(testConfig(t, "self"), newFakeLocal())
	if err != nil {
		t.Fatal(err)
	}
	d := &delegate{n: n}
	var nodeLock sync.Mutex // stands for memberlist's
	peer := &memberlist.Node{Name: "peer", Addr: net.IPv4(10, 0, 0, 1).To4(), Port: 7946,
		Meta: encodeMeta("", 7947, n.cfg.Partitions, false)}
	crashing := &memberlist.Node{Name: "crashing", Addr: net.IPv4(10, 0, 0, 9).To4(), Port: 7946,
		Meta: encodeMeta("", 7947, n.cfg.Partitions, false)}
	nodeLock.Lock()
	d.NotifyJoin(peer)
	nodeLock.Unlock()
	if _, joined, _, _ := n.view.take(); !slices.Equal(joined, []string{"peer"}) {
		t.Fatalf("joined %v", joined)
	}

	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { // memberlist's alive handler: a new address, then new metadata
		defer close(done)
		for i := range 200 {
			nodeLock.Lock()
			peer.Addr[3] = byte(2 + i%2)
			peer.Port = uint16(7946 + i%2)
			peer.Meta = encodeMeta("", 8000+i, n.cfg.Partitions, false)
			d.NotifyUpdate(peer)
			nodeLock.Unlock()
		}
	})
	wg.Go(func() { // the table loop and the API read at the same time
		for {
			select {
			case <-done:
				return
			default:
			}
			for _, m := range n.Members() {
				if m.Name != "peer" || !m.Usable || m.State != "alive" {
					t.Errorf("member %+v", m)
					return
				}
			}
			if names, addrs := n.usableMembers(n.view.list()); len(names) != 1 || addrs["peer"] == "" {
				t.Errorf("usable %v %v", names, addrs)
				return
			}
		}
	})
	wg.Wait()
	ms := n.Members()
	if len(ms) != 1 || ms[0].Gossip != "10.0.0.3:7947" || ms[0].Data != "10.0.0.3:8199" {
		t.Fatalf("after the updates: %+v", ms)
	}
	peer.Addr[3], peer.Meta = 99, nil // memberlist reusing its memory
	if ms := n.Members(); ms[0].Gossip != "10.0.0.3:7947" || !ms[0].Usable {
		t.Fatalf("the view shares memory with memberlist's node: %+v", ms[0])
	}

	// peer leaves gracefully (its leaving flag, then the leave), crashing
	// crashes. memberlist passes both with State alive (memberlist#293).
	d.NotifyJoin(crashing)
	peer.Meta = encodeMeta("", 8199, n.cfg.Partitions, true)
	d.NotifyUpdate(peer)
	if ms := n.Members(); len(ms) != 2 || !ms[1].Usable {
		t.Fatalf("a leaving member stays usable until it has left: %+v", ms)
	}
	d.NotifyLeave(peer)
	d.NotifyLeave(crashing)
	members, _, left, failed := n.view.take()
	if len(members) != 0 || !slices.Equal(left, []string{"peer"}) || !slices.Equal(failed, []string{"crashing"}) {
		t.Fatalf("after the leaves: members %v, left %v, failed %v", members, left, failed)
	}
}

// Close waits for every goroutine the node started (memberlist's included).
func TestCloseStopsGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	cfgA, cfgB := testConfig(t, "a"), testConfig(t, "b")
	a, err := New(cfgA, newFakeLocal())
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	cfgB.Join = []string{gossipAddr(a)}
	b, err := New(cfgB, newFakeLocal())
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitTables(t, 10*time.Second, []*Node{a, b}, "a", "b")
	ids := deviceIDs("g", 500)
	a.Router().TouchBatch(touchBatch(ids, time.Now()))
	b.Router().TouchBatch(touchBatch(ids, time.Now()))
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	// a's table without b first: closing while it still names b, a would
	// hand b's share back to b, gone, and Close would (rightly) fail.
	waitTables(t, 10*time.Second, []*Node{a}, "a")
	if err := a.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if n := runtime.NumGoroutine(); n > before {
			return fmt.Errorf("%d goroutines, %d before", n, before)
		}
		return nil
	})
	if err := a.Start(context.Background()); err != ErrClosed {
		t.Fatalf("Start after Close: %v", err)
	}
}

// A failed join reached no seed when memberlist says so of every seed.
func TestUnreachable(t *testing.T) {
	for _, c := range []struct {
		err  string
		want bool
	}{
		{"1 error occurred:\n\t* failed to join 10.0.0.2:7946: dial tcp 10.0.0.2:7946: connect: connection refused\n\n", true},
		{"2 errors occurred:\n\t* failed to resolve presence-1.presence-gossip:7946: lookup presence-1.presence-gossip: no such host\n\t* failed to join 10.0.0.3:7946: dial tcp 10.0.0.3:7946: i/o timeout\n\n", true},
		{"1 error occurred:\n\t* failed to join 10.0.0.2:7946: No installed keys could decrypt the message\n\n", false},
		{"2 errors occurred:\n\t* failed to join 10.0.0.2:7946: EOF\n\t* failed to join 10.0.0.3:7946: dial tcp 10.0.0.3:7946: connect: connection refused\n\n", false},
		{"something else", false},
	} {
		if got := unreachable(errors.New(c.err)); got != c.want {
			t.Errorf("unreachable(%q) = %v, want %v", c.err, got, c.want)
		}
	}
}
