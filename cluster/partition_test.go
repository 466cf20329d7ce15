package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// netSplit simulates a network partition between groups of in-process
// nodes, all on 127.0.0.1: each node's gossip goes through a splitTransport
// and its data connections through splitNet.dialer. While the split is on,
// anything between two addresses of different groups is cut: gossip packets
// are dropped (both when sent and when received), gossip streams and data
// connections are refused when dialed, and the data connections open across
// the cut are closed when the split starts. An address not registered is
// never cut.
type netSplit struct {
	mu    sync.Mutex
	group map[string]int // gossip or data address -> group
	on    bool
	conns map[*splitConn]struct{}
	// packetsOnly cuts only gossip packets (UDP datagrams lost on the
	// way); streams and data connections pass.
	packetsOnly bool
}

var errCut = errors.New("netsplit: network partitioned")

func newNetSplit() *netSplit {
	return &netSplit{group: map[string]int{}, conns: map[*splitConn]struct{}{}}
}

// add puts the addresses in group g.
func (s *netSplit) add(g int, addrs ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range addrs {
		s.group[a] = g
	}
}

func (s *netSplit) cutLocked(from, to string) bool {
	if !s.on {
		return false
	}
	gf, ok1 := s.group[from]
	gt, ok2 := s.group[to]
	return ok1 && ok2 && gf != gt
}

func (s *netSplit) cut(from, to string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cutLocked(from, to)
}

// set switches the split on or off; on closes the data connections that
// cross it.
func (s *netSplit) set(on bool) {
	s.mu.Lock()
	s.on = on
	var doomed []*splitConn
	for c := range s.conns {
		if s.cutLocked(c.from, c.to) {
			doomed = append(doomed, c)
		}
	}
	s.mu.Unlock()
	for _, c := range doomed {
		_ = c.Close()
	}
}

// dialer is a Config.Dial for the node whose addresses include self.
func (s *netSplit) dialer(self string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if s.cut(self, addr) {
			return nil, fmt.Errorf("dial %s: %w", addr, errCut)
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		sc := &splitConn{Conn: c, s: s, from: self, to: addr}
		s.mu.Lock()
		s.conns[sc] = struct{}{}
		s.mu.Unlock()
		return sc, nil
	}
}

// splitConn is a data connection the split can close.
type splitConn struct {
	net.Conn
	s        *netSplit
	from, to string
}

func (c *splitConn) Close() error {
	c.s.mu.Lock()
	delete(c.s.conns, c)
	c.s.mu.Unlock()
	return c.Conn.Close()
}

// splitTransport is memberlist's NetTransport behind a netSplit. It is a
// NodeAwareTransport, as the NetTransport is.
type splitTransport struct {
	inner   *memberlist.NetTransport
	s       *netSplit
	self    string // gossip address
	packets chan *memberlist.Packet
	done    chan struct{}
	wg      sync.WaitGroup
	once    sync.Once
}

var _ memberlist.NodeAwareTransport = (*splitTransport)(nil)

// newSplitTransport listens for gossip on 127.0.0.1 with an ephemeral port.
func newSplitTransport(t testing.TB, s *netSplit) *splitTransport {
	t.Helper()
	inner, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{"127.0.0.1"},
		BindPort:  0,
	})
	if err != nil {
		t.Fatal(err)
	}
	st := &splitTransport{
		inner:   inner,
		s:       s,
		self:    net.JoinHostPort("127.0.0.1", fmt.Sprint(inner.GetAutoBindPort())),
		packets: make(chan *memberlist.Packet),
		done:    make(chan struct{}),
	}
	st.wg.Go(st.filter)
	t.Cleanup(func() { _ = st.Shutdown() }) // idempotent; memberlist calls it too
	return st
}

// filter passes on the packets received from the same side of the split.
// A NetTransport sends from its listening UDP socket, so the source of a
// packet is the sender's gossip address.
func (st *splitTransport) filter() {
	in := st.inner.PacketCh()
	for {
		select {
		case p := <-in:
			if st.s.cut(p.From.String(), st.self) {
				continue
			}
			select {
			case st.packets <- p:
			case <-st.done:
				return
			}
		case <-st.done:
			return
		}
	}
}

func (st *splitTransport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	return st.inner.FinalAdvertiseAddr(ip, port)
}

func (st *splitTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return st.WriteToAddress(b, memberlist.Address{Addr: addr})
}

func (st *splitTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if st.s.cut(st.self, a.Addr) {
		return time.Now(), nil // lost on the way, as UDP may
	}
	return st.inner.WriteToAddress(b, a)
}

func (st *splitTransport) PacketCh() <-chan *memberlist.Packet { return st.packets }

func (st *splitTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return st.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

func (st *splitTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if !st.s.packetsOnly && st.s.cut(st.self, a.Addr) {
		return nil, fmt.Errorf("dial %s: %w", a.Addr, errCut)
	}
	return st.inner.DialAddressTimeout(a, timeout)
}

// StreamCh passes every inbound stream: none crosses the split, since both
// sides refuse to dial across it (a stream already open when the split
// starts is short-lived: push/pull or a fallback ping).
func (st *splitTransport) StreamCh() <-chan net.Conn { return st.inner.StreamCh() }

func (st *splitTransport) Shutdown() error {
	var err error
	st.once.Do(func() {
		err = st.inner.Shutdown()
		close(st.done)
		st.wg.Wait()
	})
	return err
}

// TestNetworkPartition cuts a three-node cluster into {a, b} | {c} inside
// one process, then heals it.
//
// Split brain, as this test shows it: each side declares the other dead
// (memberlist failure detection; the survivors' Change lists the others as
// Failed and asks to rebuild their partitions from Redis), then owns all
// the partitions by itself: {a, b} share the 1024 between them, c owns all
// 1024 alone. Both sides accept every message that reaches them, so a
// device whose messages the broker spreads over both sides is held and
// timed on both (only the store's last-seen fencing orders their writes).
// On heal, the periodic rejoin of the seeds merges the sides, all tables
// converge to {a, b, c}, and the handoff passes move every device held by a
// non-owner to its owner (Adopt merges it with the owner's copy, keeping
// the newest last-seen), so each device ends held by exactly its owner.
func TestNetworkPartition(t *testing.T) {
	s := newNetSplit()
	type member struct {
		n     *Node
		local *fakeLocal
	}
	var (
		chMu    sync.Mutex
		changes = map[string][]Change{}
	)
	start := func(name string, group int, seeds []string) member {
		st := newSplitTransport(t, s)
		n, local := startNode(t, name, seeds, func(c *Config) {
			c.Transport = st
			c.Dial = s.dialer(st.self)
			c.RejoinInterval = 300 * time.Millisecond
			c.OnChange = func(ch Change) {
				chMu.Lock()
				changes[name] = append(changes[name], ch)
				chMu.Unlock()
			}
		})
		if got := gossipAddr(n); got != st.self {
			t.Fatalf("%s gossips on %s, transport on %s", name, got, st.self)
		}
		s.add(group, st.self, n.DataAddr())
		return member{n, local}
	}
	a := start("a", 0, nil)
	b := start("b", 0, []string{gossipAddr(a.n)})
	c := start("c", 1, []string{gossipAddr(a.n)})
	all := []*Node{a.n, b.n, c.n}
	locals := map[string]*fakeLocal{"a": a.local, "b": b.local, "c": c.local}
	t.Logf("three-node table agreed in %v", waitTables(t, 10*time.Second, all, "a", "b", "c"))

	// Devices before the split, each at its owner.
	before := deviceIDs("pre", 600)
	a.n.Router().TouchBatch(touchBatch(before, time.Now()))
	full := a.n.Table()
	waitHeld(t, locals, full, before)

	// Cut c from a and b.
	chMu.Lock()
	nChanges := map[string]int{"a": len(changes["a"]), "b": len(changes["b"]), "c": len(changes["c"])}
	chMu.Unlock()
	t0 := time.Now()
	s.set(true)
	waitTables(t, 15*time.Second, all[:2], "a", "b")
	tAB := time.Since(t0)
	waitTables(t, 15*time.Second, all[2:], "c")
	tC := time.Since(t0)
	t.Logf("split: a and b dropped c after %v, c dropped a and b after %v", tAB, tC)

	// Each side owns every partition by itself.
	if got := c.n.Table().Counts()["c"]; got != full.Partitions() {
		t.Fatalf("c owns %d partitions alone, want %d", got, full.Partitions())
	}
	ab := a.n.Table()
	if !b.n.Table().Equal(ab) {
		t.Fatal("a and b disagree")
	}
	if cs := ab.Counts(); cs["a"]+cs["b"] != full.Partitions() || cs["c"] != 0 {
		t.Fatalf("a and b own %v", cs)
	}
	// The changes since the split (one or several per node, as memberlist
	// reports the failures): a and b each rebuild (from Redis, in the
	// daemon) the share of c's partitions they gained; c rebuilds all of
	// a's and b's.
	since := func(name string) (failed []string, rebuild []int) {
		chMu.Lock()
		defer chMu.Unlock()
		for _, ch := range changes[name][nChanges[name]:] {
			failed = append(failed, ch.Failed...)
			rebuild = append(rebuild, ch.Rebuild()...)
		}
		slices.Sort(failed)
		slices.Sort(rebuild)
		return failed, rebuild
	}
	// OnChange runs just after a table is installed: wait for the calls.
	var (
		fa, fb, fc []string
		ra, rb, rc []int
	)
	testenv.Eventually(t, 5*time.Second, func() error {
		fa, ra = since("a")
		fb, rb = since("b")
		fc, rc = since("c")
		if !slices.Equal(fa, []string{"c"}) || !slices.Equal(fb, []string{"c"}) || !slices.Equal(fc, []string{"a", "b"}) {
			return fmt.Errorf("failed members: a %v, b %v, c %v", fa, fb, fc)
		}
		return nil
	})
	t.Logf("changes: a failed %v rebuilds %d partitions, b failed %v rebuilds %d, c failed %v rebuilds %d",
		fa, len(ra), fb, len(rb), fc, len(rc))
	if got := slices.Sorted(slices.Values(slices.Concat(ra, rb))); !slices.Equal(got, full.Owned("c")) {
		t.Fatalf("a and b rebuild %d partitions, c owned %d", len(got), len(full.Owned("c")))
	}
	if len(rc) != full.Partitions()-len(full.Owned("c")) {
		t.Fatalf("c rebuilds %d partitions, a and b owned %d", len(rc), full.Partitions()-len(full.Owned("c")))
	}

	// The broker keeps spreading messages over both sides: each side
	// applies them itself. The same devices reach both sides (split brain).
	during := deviceIDs("split", 600)
	a.n.Router().TouchBatch(touchBatch(during[:400], time.Now()))
	b.n.Router().TouchBatch(touchBatch(during[200:], time.Now()))
	c.n.Router().TouchBatch(touchBatch(during, time.Now()))
	// Side {a, b}: every device at its owner in {a, b}. (c's devices from
	// before the split are not there: the daemon rebuilds them from Redis,
	// the fake Locals do not.)
	preAB := slices.DeleteFunc(slices.Clone(before), func(id string) bool { return full.OwnerOf(id) == "c" })
	testenv.Eventually(t, 5*time.Second, func() error {
		for _, name := range []string{"a", "b"} {
			want := ab.devicesOf(name, slices.Concat(preAB, during))
			if got := locals[name].ids(); !slices.Equal(got, want) {
				return fmt.Errorf("%s holds %d devices, owns %d", name, len(got), len(want))
			}
		}
		return nil
	})
	// Side {c}: everything sent to c, plus what it held before.
	for _, id := range during {
		if !c.local.has(id) {
			t.Fatalf("c does not hold %s", id)
		}
	}
	both := 0
	for _, id := range during {
		if c.local.has(id) && (a.local.has(id) || b.local.has(id)) {
			both++
		}
	}
	t.Logf("split brain: %d of %d devices held on both sides", both, len(during))
	if both != len(during) {
		t.Fatalf("%d devices held on both sides, want %d", both, len(during))
	}

	// c's rejoin of its seed (a) fails while cut off.
	if n := c.n.m.rejoinErrors.Get(); n == 0 {
		t.Fatal("c's rejoin never failed during the split")
	}

	// Heal: c's rejoin (every 300 ms) merges the sides.
	t1 := time.Now()
	s.set(false)
	testenv.Eventually(t, 15*time.Second, func() error {
		if n := c.n.ml.NumMembers(); n != 3 {
			return fmt.Errorf("c sees %d members", n)
		}
		return nil
	})
	tMerge := time.Since(t1)
	waitTables(t, 15*time.Second, all, "a", "b", "c")
	tTables := time.Since(t1)
	if !a.n.Table().Equal(full) || !b.n.Table().Equal(full) || !c.n.Table().Equal(full) {
		t.Fatal("healed tables differ from the table before the split")
	}
	waitHeld(t, locals, full, slices.Concat(before, during))
	tHeld := time.Since(t1)
	t.Logf("heal: memberlist merged after %v, tables agreed after %v, every device at its owner after %v",
		tMerge, tTables, tHeld)
}

// waitHeld waits until each device of ids is held by exactly its owner in
// tb, and nothing else is held.
func waitHeld(t *testing.T, locals map[string]*fakeLocal, tb *Table, ids []string) {
	t.Helper()
	testenv.Eventually(t, 15*time.Second, func() error {
		for name, l := range locals {
			if got, want := l.ids(), tb.devicesOf(name, ids); !slices.Equal(got, want) {
				return fmt.Errorf("%s holds %d devices, owns %d", name, len(got), len(want))
			}
		}
		return nil
	})
}

// TestLeaveWithoutGossipPackets: every gossip datagram to and from a is
// lost (a loaded host drops UDP), its TCP streams are not. c's leaving flag
// gossiped over UDP cannot reach a; a learns that c is gone from its own
// failure detection (memberlist falls back to pings over TCP). The push of
// the flag over TCP (Node.pushLeaving) still gets it to a first, so a
// records c's leave as graceful, not as a crash.
func TestLeaveWithoutGossipPackets(t *testing.T) {
	s := newNetSplit()
	s.packetsOnly = true
	var (
		chMu    sync.Mutex
		changes = map[string][]Change{}
	)
	start := func(name string, group int, seeds []string) *Node {
		st := newSplitTransport(t, s)
		n, _ := startNode(t, name, seeds, func(c *Config) {
			c.Transport = st
			c.OnChange = func(ch Change) {
				chMu.Lock()
				changes[name] = append(changes[name], ch)
				chMu.Unlock()
			}
		})
		if group >= 0 {
			s.add(group, st.self)
		}
		return n
	}
	a := start("a", 0, nil)
	b := start("b", 1, []string{gossipAddr(a)})
	c := start("c", 1, []string{gossipAddr(a)})
	waitTables(t, 10*time.Second, []*Node{a, b, c}, "a", "b", "c")
	s.set(true)
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitTables(t, 20*time.Second, []*Node{a, b}, "a", "b")
	chMu.Lock()
	defer chMu.Unlock()
	for _, name := range []string{"a", "b"} {
		left := false
		for _, ch := range changes[name] {
			if slices.Contains(ch.Failed, "c") {
				t.Fatalf("%s took c's graceful leave for a failure", name)
			}
			left = left || slices.Contains(ch.Left, "c")
		}
		if !left {
			t.Fatalf("no change of %s reports c left", name)
		}
	}
}
