package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// Every message sent into any router reaches exactly its owner's engine,
// exactly once.
func TestRouterDeliversToOwner(t *testing.T) {
	nodes := staticCluster(t, 3, nil)
	ids := deviceIDs("dev", 3000)
	at := time.Now()
	for i, nd := range nodes { // every node receives every id once
		for chunk := range 10 {
			part := ids[chunk*300 : (chunk+1)*300]
			if rej := nd.r.TouchBatch(touchBatch(part, at.Add(time.Duration(i)))); rej != 0 {
				t.Fatalf("%d rejected", rej)
			}
		}
		if err := nd.r.MarkOffline(ids[i], at); err != nil && nodes[0].r.Table().OwnerOf(ids[i]) == nd.name {
			t.Fatal(err)
		}
	}
	tb := nodes[0].r.Table()
	byName := map[string]*staticNode{}
	for _, nd := range nodes {
		byName[nd.name] = nd
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		for _, nd := range nodes {
			if got, _ := nd.local.totals(); got != 3*len(tb.devicesOf(nd.name, ids)) {
				return fmt.Errorf("%s received %d touches", nd.name, got)
			}
		}
		return nil
	})
	for _, id := range ids {
		owner := byName[tb.OwnerOf(id)]
		if got := owner.local.touchCount(id); got != 3 {
			t.Fatalf("%s: owner %s got %d touches, want 3", id, owner.name, got)
		}
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		for i := range nodes {
			owner := byName[tb.OwnerOf(ids[i])]
			owner.local.mu.Lock()
			n := owner.local.offline[ids[i]]
			owner.local.mu.Unlock()
			if n != 1 {
				return fmt.Errorf("offline of %s at %s: %d", ids[i], owner.name, n)
			}
		}
		return nil
	})
	var fwd int
	for _, nd := range nodes {
		fwd += int(nd.m.fwdMessages.Get())
		for r := range numDropReasons {
			if n := nd.m.dropped[r].Get(); n != 0 {
				t.Errorf("%s dropped %d (%s)", nd.name, n, r)
			}
		}
	}
	t.Logf("forwarded %d of %d messages", fwd, 3*len(ids)+3)
}

// An explicit status given through the API on any node reaches the
// owner's SetStatus with cause api, online and offline alike; other
// causes are refused, never forwarded as something else.
func TestRouterForwardsExplicitStatus(t *testing.T) {
	nodes := staticCluster(t, 3, nil)
	ids := deviceIDs("st", 30)
	at := time.Now()
	for i, id := range ids {
		nd := nodes[i%3]
		s := engine.StatusOffline
		if i%2 == 0 {
			s = engine.StatusOnline
		}
		if err := nd.r.SetStatus(id, s, at, engine.CauseAPI); err != nil && !errors.Is(err, engine.ErrNotFound) {
			t.Fatalf("%s on its owner: %v", id, err)
		}
	}
	if err := nodes[0].r.SetStatus(ids[0], engine.StatusOffline, at, engine.CauseLastWill); err == nil {
		t.Fatal("SetStatus with cause last_will accepted")
	}
	if err := nodes[0].r.SetStatus(ids[0], engine.StatusUnknown, at, engine.CauseAPI); !errors.Is(err, engine.ErrInvalidStatus) {
		t.Fatalf("status unknown: %v", err)
	}
	tb := nodes[0].r.Table()
	testenv.Eventually(t, 10*time.Second, func() error {
		for i, id := range ids {
			want := "offline api"
			if i%2 == 0 {
				want = "online api"
			}
			for _, nd := range nodes {
				nd.local.mu.Lock()
				got := nd.local.apiStatus[id]
				nd.local.mu.Unlock()
				if owner := tb.OwnerOf(id) == nd.name; owner && got != want || !owner && got != "" {
					return fmt.Errorf("%s at %s (owner %s): %q, want %q at the owner only", id, nd.name, tb.OwnerOf(id), got, want)
				}
			}
		}
		return nil
	})
}

// Device controls reach the owner only, from whichever node takes them.
func TestRouterForwardsDeviceControls(t *testing.T) {
	nodes := staticCluster(t, 3, nil)
	ids := deviceIDs("ctl", 30)
	want := map[string]string{}
	for i, id := range ids {
		r := nodes[i%3].r
		var err error
		switch i % 3 {
		case 0:
			err, want[id] = r.SetTimeout(id, time.Hour), "timeout 1h0m0s"
		case 1:
			err, want[id] = r.ClearTimeout(id), "clear"
		default:
			err, want[id] = r.Decommission(id, time.Now()), "removed"
		}
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}
	if err := nodes[0].r.SetTimeout(ids[0], time.Millisecond); !errors.Is(err, engine.ErrInvalidTimeout) {
		t.Fatalf("a 1 ms timeout: %v", err)
	}
	if err := nodes[0].r.Decommission("bad/id", time.Now()); !errors.Is(err, engine.ErrInvalidID) {
		t.Fatalf("an invalid id: %v", err)
	}
	tb := nodes[0].r.Table()
	testenv.Eventually(t, 10*time.Second, func() error {
		for _, id := range ids {
			for _, nd := range nodes {
				nd.local.mu.Lock()
				got := nd.local.control[id]
				nd.local.mu.Unlock()
				if owner := tb.OwnerOf(id) == nd.name; owner && got != want[id] || !owner && got != "" {
					return fmt.Errorf("%s at %s (owner %s): %q, want %q at the owner only", id, nd.name, tb.OwnerOf(id), got, want[id])
				}
			}
		}
		return nil
	})
}

func (t *Table) devicesOf(node string, ids []string) []string {
	var out []string
	for _, id := range ids {
		if t.OwnerOf(id) == node {
			out = append(out, id)
		}
	}
	return out
}

func TestRouterRejectsInvalid(t *testing.T) {
	nodes := staticCluster(t, 2, nil)
	r := nodes[0].r
	var remote string
	for _, id := range deviceIDs("x", 100) {
		if !r.Owns(id) {
			remote = id
			break
		}
	}
	batch := []engine.Touch{
		{ID: "bad id", At: time.Now()},
		{ID: remote, At: time.Now(), Timeout: time.Millisecond}, // below engine.MinTimeout
		{ID: remote, At: time.Now(), Timeout: -time.Second},
	}
	if got := r.TouchBatch(batch); got != 3 {
		t.Fatalf("rejected %d, want 3", got)
	}
}

// A peer that cannot be reached: the router drops and counts once its
// queue is full and never makes the caller wait.
func TestRouterDeadPeerNeverBlocks(t *testing.T) {
	// EnqueueWait is the longest allowed: a caller that waited at all
	// would take a second, far from any scheduling delay.
	a := newStaticNode(t, "a", func(c *Config) { c.QueueSize = 1000; c.EnqueueWait = time.Second })
	const dead = "127.0.0.1:1" // nothing listens on port 1 (tcpmux) here
	tb := NewTable(a.cfg.Partitions, []string{"a", "b"})
	a.r.setTable(tb, map[string]string{"a": a.addr, "b": dead})
	remote := tb.devicesOf("b", deviceIDs("d", 4000))
	batch := touchBatch(remote[:500], time.Now())
	var slowest time.Duration
	for range 20 { // 10000 messages for a queue of 1000
		start := time.Now()
		a.r.TouchBatch(batch)
		slowest = max(slowest, time.Since(start))
	}
	if slowest > 500*time.Millisecond { // well under EnqueueWait: no wait at all
		t.Fatalf("TouchBatch took %v with a dead peer (EnqueueWait 1s)", slowest)
	}
	t.Logf("slowest TouchBatch %v", slowest)
	if d := a.r.queueDepth(); d > 1000 {
		t.Fatalf("queue depth %d > QueueSize", d)
	}
	if got := a.m.dropped[dropQueueFull].Get(); got < 10000-1000 {
		t.Fatalf("dropped %d, want >= 9000", got)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if a.m.dialErrors.Get() < 2 {
			return fmt.Errorf("%d dial errors", a.m.dialErrors.Get())
		}
		return nil
	})
}

// A peer that accepts but does not read: once the socket buffers and the
// queue are full, a caller waits at most EnqueueWait, then drops.
func TestRouterSlowPeerBoundedWait(t *testing.T) {
	const wait = 20 * time.Millisecond
	a := newStaticNode(t, "a", func(c *Config) { c.QueueSize = 2000; c.EnqueueWait = wait; c.WriteTimeout = 10 * time.Second })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // accept and never read
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	tb := NewTable(a.cfg.Partitions, []string{"a", "b"})
	a.r.setTable(tb, map[string]string{"a": a.addr, "b": ln.Addr().String()})
	remote := tb.devicesOf("b", deviceIDs("slow-peer-device-with-a-long-id", 4000))
	batch := touchBatch(remote[:1000], time.Now())
	var slowest time.Duration
	deadline := time.Now().Add(10 * time.Second)
	for a.m.dropped[dropQueueFull].Get() == 0 && time.Now().Before(deadline) {
		start := time.Now()
		a.r.TouchBatch(batch)
		slowest = max(slowest, time.Since(start))
	}
	if a.m.dropped[dropQueueFull].Get() == 0 {
		t.Fatal("no drop against a peer that does not read")
	}
	// The bound is EnqueueWait, not the 10 s WriteTimeout (plus a
	// generous allowance for a loaded machine).
	if slowest > wait+2*time.Second {
		t.Fatalf("TouchBatch took %v, bound is EnqueueWait %v (plus scheduling)", slowest, wait)
	}
	t.Logf("slowest TouchBatch %v, dropped %d", slowest, a.m.dropped[dropQueueFull].Get())
}

// Tables disagree for a moment during a change: a node that receives a
// message it does not own forwards it once more (never back to the
// sender), and a node receiving such a re-forwarded message it does not own
// either drops it.
func TestRouterReforwardOnce(t *testing.T) {
	nodes := staticCluster(t, 3, nil)
	a, b, c := nodes[0], nodes[1], nodes[2]
	addrs := map[string]string{a.name: a.addr, b.name: b.addr, c.name: c.addr}
	full := NewTable(a.cfg.Partitions, []string{a.name, b.name, c.name})
	ids := full.devicesOf(b.name, deviceIDs("r", 3000))[:100]
	// b thinks c owns its partitions (b left, as b sees it); c agrees.
	withoutB := NewTable(a.cfg.Partitions, []string{a.name, c.name})
	var toC []string
	for _, id := range ids {
		if withoutB.OwnerOf(id) == c.name {
			toC = append(toC, id)
		}
	}
	b.r.setTable(withoutB, addrs)
	c.r.setTable(withoutB, addrs)
	a.r.TouchBatch(touchBatch(toC, time.Now())) // a -> b -> c
	testenv.Eventually(t, 5*time.Second, func() error {
		if n, _ := c.local.totals(); n != len(toC) {
			return fmt.Errorf("c has %d of %d", n, len(toC))
		}
		return nil
	})
	if got := b.m.reforwarded.Get(); got != uint64(len(toC)) {
		t.Fatalf("b re-forwarded %d, want %d", got, len(toC))
	}
	// c thinks b owns them, b thinks c does: c keeps them rather than
	// sending them back to b.
	c.r.setTable(full, addrs)
	a.r.TouchBatch(touchBatch(toC, time.Now())) // a -> b -> c, applied
	testenv.Eventually(t, 5*time.Second, func() error {
		if n, _ := c.local.totals(); n != 2*len(toC) {
			return fmt.Errorf("c has %d of %d", n, 2*len(toC))
		}
		return nil
	})
	if got := c.m.bounced.Get(); got != uint64(len(toC)) {
		t.Fatalf("c bounced %d, want %d", got, len(toC))
	}
	// c thinks a third node (a) owns them: a message re-forwarded once is
	// not forwarded again.
	c.r.setTable(NewTable(a.cfg.Partitions, []string{a.name}), addrs)
	a.r.TouchBatch(touchBatch(toC, time.Now())) // a -> b -> c, dropped
	testenv.Eventually(t, 5*time.Second, func() error {
		if got := c.m.dropped[dropNotOwner].Get(); got != uint64(len(toC)) {
			return fmt.Errorf("c dropped %d as not owner, want %d", got, len(toC))
		}
		return nil
	})
	if n, _ := b.local.totals(); n != 0 {
		t.Fatalf("b applied %d messages it does not own", n)
	}
	if n, _ := a.local.totals(); n != 0 {
		t.Fatalf("a applied %d messages", n)
	}
}

// Messages queued for a peer that leaves the table are routed again by the
// new table instead of being lost.
func TestRouterReroutesQueueOfRemovedPeer(t *testing.T) {
	a := newStaticNode(t, "a", func(c *Config) { c.QueueSize = 5000 })
	tb := NewTable(a.cfg.Partitions, []string{"a", "b"})
	a.r.setTable(tb, map[string]string{"a": a.addr, "b": "127.0.0.1:1"}) // unreachable
	remote := tb.devicesOf("b", deviceIDs("q", 3000))
	a.r.TouchBatch(touchBatch(remote, time.Now()))
	a.r.setTable(NewTable(a.cfg.Partitions, []string{"a"}), map[string]string{"a": a.addr})
	testenv.Eventually(t, 5*time.Second, func() error {
		if n, _ := a.local.totals(); n != len(remote) {
			return fmt.Errorf("%d of %d rerouted to the local engine", n, len(remote))
		}
		return nil
	})
}

// A peer that restarts: the router reconnects and forwarding resumes.
func TestRouterReconnects(t *testing.T) {
	nodes := staticCluster(t, 2, nil)
	a, b := nodes[0], nodes[1]
	remote := a.r.Table().devicesOf(b.name, deviceIDs("rc", 2000))
	a.r.TouchBatch(touchBatch(remote[:10], time.Now()))
	testenv.Eventually(t, 5*time.Second, func() error {
		if n, _ := b.local.totals(); n != 10 {
			return fmt.Errorf("b has %d", n)
		}
		return nil
	})
	// Restart b's server on the same address.
	addr := b.addr
	b.srv.close()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot rebind %s: %v", addr, err)
	}
	b.srv = newServer(b.r, ln, b.cfg.Logger, time.Now, anyMember)
	b.srv.start()
	testenv.Eventually(t, 10*time.Second, func() error {
		a.r.TouchBatch(touchBatch(remote[10:20], time.Now()))
		if n := b.local.touchCount(remote[10]); n == 0 {
			return fmt.Errorf("nothing arrived after the restart")
		}
		return nil
	})
	if a.m.connects.Get() < 2 {
		t.Fatalf("%d connects, want a reconnect", a.m.connects.Get())
	}
}

func TestConfigValidate(t *testing.T) {
	ok := DefaultConfig()
	ok.NodeName = "n"
	ok.SecretKey = []byte("0123456789abcdef")
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*Config){
		"no name":        func(c *Config) { c.NodeName = "" },
		"bad bind":       func(c *Config) { c.BindAddr = "nope" },
		"port 0 no data": func(c *Config) { c.BindAddr = "127.0.0.1:0" },
		"bad key":        func(c *Config) { c.SecretKey = []byte("short") },
		"bad profile":    func(c *Config) { c.GossipProfile = "wan" },
		"partitions":     func(c *Config) { c.Partitions = 0 },
		"frame small":    func(c *Config) { c.MaxFrameSize = 100 },
		"backoff":        func(c *Config) { c.MaxBackoff = c.MinBackoff / 2 },
		"wait":           func(c *Config) { c.EnqueueWait = 2 * time.Second },
		"join":           func(c *Config) { c.Join = []string{"host-without-port"} },
		"bad secondary":  func(c *Config) { c.SecondaryKeys = [][]byte{[]byte("short")} },
		"only secondary": func(c *Config) { c.SecretKey, c.SecondaryKeys = nil, [][]byte{[]byte("0123456789abcdef")} },
		"conns":          func(c *Config) { c.MaxConns = 0 },
		"idle":           func(c *Config) { c.IdleTimeout = 0 },
	} {
		c := ok
		mut(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := ParseKey("c2hvcnQ="); err == nil {
		t.Error("5-byte key accepted")
	}
	if k, err := ParseKey("MDEyMzQ1Njc4OWFiY2RlZg=="); err != nil || len(k) != 16 {
		t.Errorf("16-byte key: %v", err)
	}
	p, sec, err := ParseKeys("MDEyMzQ1Njc4OWFiY2RlZg==, QUJDREVGR0hJSktMTU5PUA==")
	if err != nil || string(p) != "0123456789abcdef" || len(sec) != 1 || string(sec[0]) != "ABCDEFGHIJKLMNOP" {
		t.Errorf("key list: %q %q %v", p, sec, err)
	}
	// A malformed key is not quoted back (it is a secret).
	if _, _, err := ParseKeys("MDEyMzQ1Njc4OWFiY2RlZg==,c2VjcmV0!c2VjcmV0"); err == nil ||
		strings.Contains(err.Error(), "c2VjcmV0") || !strings.Contains(err.Error(), "key 2") {
		t.Errorf("malformed second key: %v", err)
	}
}

// A cluster without a key binds or advertises only loopback addresses,
// unless Insecure says otherwise.
func TestInsecureClusterRefused(t *testing.T) {
	base := DefaultConfig()
	base.NodeName = "n"
	for _, tc := range []struct {
		name    string
		mut     func(*Config)
		refused bool
	}{
		{"default wildcard bind", func(c *Config) {}, true},
		{"private address", func(c *Config) { c.BindAddr = "10.0.0.7:7946" }, true},
		{"host name", func(c *Config) { c.BindAddr = "presence-0.presence:7946" }, true},
		{"loopback, public advertise", func(c *Config) { c.BindAddr, c.AdvertiseAddr = "127.0.0.1:7946", "192.0.2.1:7946" }, true},
		{"loopback, public data", func(c *Config) { c.BindAddr, c.DataAddr = "127.0.0.1:7946", "0.0.0.0:7947" }, true},
		{"loopback", func(c *Config) { c.BindAddr = "127.0.0.1:7946" }, false},
		{"localhost and ::1", func(c *Config) { c.BindAddr, c.DataAddr = "localhost:7946", "[::1]:7947" }, false},
		{"insecure", func(c *Config) { c.Insecure = true }, false},
		{"keyed", func(c *Config) { c.SecretKey = []byte("0123456789abcdef") }, false},
	} {
		c := base
		tc.mut(&c)
		err := c.Validate()
		if refused := err != nil; refused != tc.refused {
			t.Errorf("%s: refused %v, want %v (%v)", tc.name, refused, tc.refused, err)
		}
		if err != nil && !strings.Contains(err.Error(), "PRESENCE_CLUSTER_INSECURE") {
			t.Errorf("%s: the error does not say how to proceed: %v", tc.name, err)
		}
	}
}

// With ReadsAll every node reads every message (plain subscriptions): each
// keeps exactly its own devices' and forwards nothing.
func TestRouterReadsAllKeepsOwned(t *testing.T) {
	nodes := staticCluster(t, 3, func(c *Config) { c.ReadsAll = true })
	ids := deviceIDs("dev", 3000)
	at := time.Now()
	for _, nd := range nodes {
		if rej := nd.r.TouchBatch(touchBatch(ids, at)); rej != 0 {
			t.Fatalf("%d rejected", rej)
		}
		for _, id := range ids[:30] {
			if err := nd.r.MarkOffline(id, at); err != nil {
				t.Fatal(err)
			}
		}
	}
	tb := nodes[0].r.Table()
	for _, nd := range nodes {
		own := tb.devicesOf(nd.name, ids)
		if got, _ := nd.local.totals(); got != len(own) {
			t.Errorf("%s applied %d touches, owns %d devices", nd.name, got, len(own))
		}
		for _, id := range own {
			if n := nd.local.touchCount(id); n != 1 {
				t.Fatalf("%s: %s touched %d times, want 1", nd.name, id, n)
			}
		}
		if n := nd.m.fwdMessages.Get() + uint64(nd.r.queueDepth()); n != 0 {
			t.Errorf("%s forwarded or queued %d messages", nd.name, n)
		}
		if got, want := nd.m.skipped.Get(), uint64(len(ids)+30-len(own)-len(tb.devicesOf(nd.name, ids[:30]))); got != want {
			t.Errorf("%s skipped %d, want %d", nd.name, got, want)
		}
	}
}

// With ReadsAll, touches only this node received (HTTP touches,
// SubmitBatch) still reach their owners: nobody else reads them.
func TestRouterReadsAllSubmitForwards(t *testing.T) {
	nodes := staticCluster(t, 3, func(c *Config) { c.ReadsAll = true })
	ids := deviceIDs("http", 300)
	if rej := nodes[0].r.SubmitBatch(touchBatch(ids, time.Now())); rej != 0 {
		t.Fatalf("%d rejected", rej)
	}
	tb := nodes[0].r.Table()
	testenv.Eventually(t, 10*time.Second, func() error {
		for _, nd := range nodes {
			if got, _ := nd.local.totals(); got != len(tb.devicesOf(nd.name, ids)) {
				return fmt.Errorf("%s applied %d touches, owns %d of the devices", nd.name, got, len(tb.devicesOf(nd.name, ids)))
			}
		}
		return nil
	})
	if n := nodes[0].m.skipped.Get(); n != 0 {
		t.Errorf("skipped %d submitted touches", n)
	}
}

// A control received for a device this node does not have yet (its
// handoff record on the way) waits for the record, then applies; one
// whose record never comes expires after HandoffTimeout, counted.
func TestControlsWaitForTheirHandoff(t *testing.T) {
	cfg := testConfig(t, "self")
	local := newFakeLocal()
	local.strictControls = true
	r := newRouter(&cfg, local, slog.New(slog.DiscardHandler), newClusterMetrics(metrics.NewSet()))
	t.Cleanup(r.close)
	r.setTable(NewTable(cfg.Partitions, []string{"self"}), map[string]string{"self": "127.0.0.1:1"})
	srv := newServer(r, nil, cfg.Logger, time.Now, anyMember)

	r.dispatch([]msg{overrideMsg("moving", time.Hour), removeMsg("gone", time.Now()), overrideMsg("never", time.Minute)}, time.Time{}, "peer")
	if n := r.m.controlsPending.Get(); n != 3 {
		t.Fatalf("%d controls pending, want 3", n)
	}
	if err := srv.adopt([]engine.DeviceState{{ID: "moving", Status: engine.StatusOnline, LastSeen: time.Now()},
		{ID: "gone", Status: engine.StatusOffline, LastSeen: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	local.mu.Lock()
	got := maps.Clone(local.control)
	local.mu.Unlock()
	if got["moving"] != "timeout 1h0m0s" || got["gone"] != "removed" || got["never"] != "" {
		t.Fatalf("controls after the handoff: %v", got)
	}
	// "never" expires: the next adopt after HandoffTimeout drops it, counted.
	r.pending.mu.Lock()
	for id, c := range r.pending.byID {
		c.deadline = time.Now().Add(-time.Second)
		r.pending.byID[id] = c
	}
	r.pending.mu.Unlock()
	if err := srv.adopt([]engine.DeviceState{{ID: "never", Status: engine.StatusOnline, LastSeen: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	if local.control["never"] != "" || r.m.dropped[dropLocalError].Get() != 1 || len(r.pending.byID) != 0 {
		t.Fatalf("an expired control applied (%q) or not counted (%d), %d pending",
			local.control["never"], r.m.dropped[dropLocalError].Get(), len(r.pending.byID))
	}
	// A local control (from this node's own API) for an unknown device is
	// answered at once.
	if err := r.Decommission("nobody", time.Now()); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("local decommission of an unknown device: %v", err)
	}
}
