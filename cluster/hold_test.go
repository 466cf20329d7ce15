package cluster

import (
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/presence-dev/presence/engine"
)

// orderLocal records what reaches the engine, in order.
type orderLocal struct {
	nopLocal
	mu  sync.Mutex
	got []string // "touch id at" or "offline id at"
}

func (o *orderLocal) TouchBatch(batch []engine.Touch) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, t := range batch {
		o.got = append(o.got, fmt.Sprintf("touch %s %d", t.ID, t.At.Unix()))
	}
	return 0
}

func (o *orderLocal) MarkOffline(id string, at time.Time) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.got = append(o.got, fmt.Sprintf("offline %s %d", id, at.Unix()))
	return nil
}

func (o *orderLocal) SetStatus(id string, s engine.Status, at time.Time, c engine.Cause) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.got = append(o.got, fmt.Sprintf("%s %s %s %d", c, s, id, at.Unix()))
	return nil
}

func (o *orderLocal) take() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	g := o.got
	o.got = nil
	return g
}

// holdRouter is a router that owns every partition, with size messages of
// hold room, and two ids of one partition p and one of another.
func holdRouter(t *testing.T, size int) (r *Router, local *orderLocal, p int, inP []string, other string) {
	t.Helper()
	cfg := testConfig(t, "self")
	cfg.RebuildHoldSize = size
	local = &orderLocal{}
	r = newRouter(&cfg, local, slog.New(slog.DiscardHandler), newClusterMetrics(metrics.NewSet()))
	t.Cleanup(r.close)
	r.setTable(NewTable(cfg.Partitions, []string{"self"}), map[string]string{"self": "127.0.0.1:1"})
	p = PartitionOf("dev-0", cfg.Partitions)
	inP = []string{"dev-0"}
	for i := 1; len(inP) < 2 || other == ""; i++ {
		id := fmt.Sprintf("dev-%d", i)
		if PartitionOf(id, cfg.Partitions) == p {
			inP = append(inP, id)
		} else if other == "" {
			other = id
		}
	}
	return r, local, p, inP[:2], other
}

func at(s int64) time.Time { return time.Unix(s, 0) }

// TestHoldUntilRebuildDone: messages of a held partition, from ingest and
// from peers, wait; the others pass; RebuildDone applies the held ones in
// arrival order, and later ones go straight through.
func TestHoldUntilRebuildDone(t *testing.T) {
	r, local, p, inP, other := holdRouter(t, 100)
	gen := r.startHold([]int{p}, time.Now().Add(time.Hour))

	r.TouchBatch([]engine.Touch{{ID: inP[0], At: at(1)}, {ID: other, At: at(1)}})
	if err := r.MarkOffline(inP[0], at(2)); err != nil {
		t.Fatal(err)
	}
	r.dispatch([]msg{touchMsg(&engine.Touch{ID: inP[1], At: at(3)})}, time.Time{}, "peer")
	r.dispatch([]msg{statusMsg(inP[1], engine.StatusOffline, at(3))}, time.Time{}, "peer") // an explicit status, forwarded
	r.TouchBatch([]engine.Touch{{ID: "bad id", At: at(4)}})                                // invalid: the engine rejects it now
	if got, want := local.take(), []string{"touch " + other + " 1", "touch bad id 4"}; !slices.Equal(got, want) {
		t.Fatalf("applied while held: %q, want %q", got, want)
	}
	if n := r.heldMessages(); n != 4 {
		t.Fatalf("%d messages held, want 4", n)
	}

	if n := r.releaseHold(gen + 1); n != 0 { // a hold that holds nothing
		t.Fatalf("released %d partitions of a hold that holds none", n)
	}
	if n := r.releaseHold(gen); n != 1 {
		t.Fatalf("released %d partitions, want 1", n)
	}
	want := []string{"touch " + inP[0] + " 1", "offline " + inP[0] + " 2", "touch " + inP[1] + " 3", "api offline " + inP[1] + " 3"}
	if got := local.take(); !slices.Equal(got, want) {
		t.Fatalf("released %q, want %q", got, want)
	}
	if r.hold.active.Load() || r.heldMessages() != 0 {
		t.Fatal("still holding after release")
	}
	r.TouchBatch([]engine.Touch{{ID: inP[0], At: at(5)}})
	if got := local.take(); !slices.Equal(got, []string{"touch " + inP[0] + " 5"}) {
		t.Fatalf("after release: %q", got)
	}
}

// TestHoldGenerations: a partition lost (and applied here, for the
// handoff) and gained again, to be rebuilt again, is not released by the
// end of the first rebuild, only by the end of the second.
func TestHoldGenerations(t *testing.T) {
	r, local, p, inP, other := holdRouter(t, 100)
	q := PartitionOf(other, r.cfg.Partitions)
	first := r.startHold([]int{p, q}, time.Now().Add(time.Hour))
	r.TouchBatch([]engine.Touch{{ID: inP[0], At: at(1)}, {ID: other, At: at(2)}})
	var lose *Table // self keeps q, loses p
	for i := 0; ; i++ {
		lose = NewTable(r.cfg.Partitions, []string{"self", fmt.Sprintf("peer-%d", i)})
		if lose.Owner(p) != "self" && lose.Owner(q) == "self" {
			break
		}
	}
	if n := r.releaseLost(lose); n != 1 {
		t.Fatalf("losing p released %d partitions, want 1", n)
	}
	if got := local.take(); !slices.Equal(got, []string{"touch " + inP[0] + " 1"}) {
		t.Fatalf("losing p applied %q", got)
	}
	second := r.startHold([]int{p}, time.Now().Add(time.Hour)) // p gained again
	r.TouchBatch([]engine.Touch{{ID: inP[0], At: at(3)}})
	if n := r.releaseHold(first); n != 1 {
		t.Fatalf("the first rebuild's end released %d partitions, want 1 (q)", n)
	}
	if got := local.take(); !slices.Equal(got, []string{"touch " + other + " 2"}) {
		t.Fatalf("applied %q, want q's touch only", got)
	}
	if n := r.releaseHold(second); n != 1 {
		t.Fatalf("the second rebuild's end released %d partitions, want 1 (p)", n)
	}
	if got := local.take(); !slices.Equal(got, []string{"touch " + inP[0] + " 3"}) {
		t.Fatalf("applied %q, want p's second touch", got)
	}
}

// TestHoldOverflowReleasesAll: a full hold applies everything held, in
// order, before the message that did not fit, and stops holding.
func TestHoldOverflowReleasesAll(t *testing.T) {
	r, local, p, inP, _ := holdRouter(t, 2)
	r.startHold([]int{p}, time.Now().Add(time.Minute))
	r.TouchBatch([]engine.Touch{{ID: inP[0], At: at(1)}, {ID: inP[1], At: at(2)}, {ID: inP[0], At: at(3)}})
	want := []string{"touch " + inP[0] + " 1", "touch " + inP[1] + " 2", "touch " + inP[0] + " 3"}
	if got := local.take(); !slices.Equal(got, want) {
		t.Fatalf("applied %q, want %q", got, want)
	}
	if n := r.m.holdOverflow.Get(); n != 1 {
		t.Fatalf("overflow counted %d, want 1", n)
	}
	if r.hold.active.Load() || r.heldMessages() != 0 {
		t.Fatal("still holding after an overflow")
	}
}

// TestHoldExpires: a hold not released by RebuildDone ends at its
// deadline.
func TestHoldExpires(t *testing.T) {
	r, local, p, inP, _ := holdRouter(t, 10)
	now := time.Now()
	r.startHold([]int{p}, now.Add(time.Minute))
	r.TouchBatch([]engine.Touch{{ID: inP[0], At: at(1)}})
	if n := r.expireHolds(now); n != 0 {
		t.Fatalf("expired %d partitions before their deadline", n)
	}
	if got := local.take(); len(got) != 0 {
		t.Fatalf("applied before the deadline: %q", got)
	}
	if n := r.expireHolds(now.Add(time.Minute)); n != 1 {
		t.Fatalf("expired %d partitions at the deadline, want 1", n)
	}
	if got := local.take(); !slices.Equal(got, []string{"touch " + inP[0] + " 1"}) {
		t.Fatalf("expiry applied %q", got)
	}
	if n := r.m.holdExpired.Get(); n != 1 {
		t.Fatalf("expiries counted %d, want 1", n)
	}
}

// gateLocal blocks its first TouchBatch until the gate opens.
type gateLocal struct {
	orderLocal
	once    sync.Once
	entered chan struct{}
	gate    chan struct{}
}

func (g *gateLocal) TouchBatch(batch []engine.Touch) int {
	g.once.Do(func() {
		close(g.entered)
		<-g.gate
	})
	return g.orderLocal.TouchBatch(batch)
}

// TestHoldReleaseKeepsOrder: a message that arrives while the held ones
// are being applied lands after them.
func TestHoldReleaseKeepsOrder(t *testing.T) {
	cfg := testConfig(t, "self")
	local := &gateLocal{entered: make(chan struct{}), gate: make(chan struct{})}
	r := newRouter(&cfg, local, slog.New(slog.DiscardHandler), newClusterMetrics(metrics.NewSet()))
	t.Cleanup(r.close)
	r.setTable(NewTable(cfg.Partitions, []string{"self"}), map[string]string{"self": "127.0.0.1:1"})
	p := PartitionOf("dev-0", cfg.Partitions)
	gen := r.startHold([]int{p}, time.Now().Add(time.Hour))
	r.TouchBatch([]engine.Touch{{ID: "dev-0", At: at(1)}})
	released := make(chan struct{})
	go func() { r.releaseHold(gen); close(released) }()
	<-local.entered // the release is applying the held touch
	marked := make(chan struct{})
	go func() { r.MarkOffline("dev-0", at(2)); close(marked) }()
	select {
	case <-marked:
		t.Fatal("a new message of a partition being released went through before the held ones")
	case <-time.After(100 * time.Millisecond):
	}
	close(local.gate)
	<-released
	<-marked
	if got := local.take(); !slices.Equal(got, []string{"touch dev-0 1", "offline dev-0 2"}) {
		t.Fatalf("order %q", got)
	}
}

// TestHoldReleasedWhenLost: a held partition that a new table gives to
// another node is applied here first, where the handoff takes it from.
func TestHoldReleasedWhenLost(t *testing.T) {
	r, local, p, inP, other := holdRouter(t, 10)
	q := PartitionOf(other, r.cfg.Partitions)
	r.startHold([]int{p, q}, time.Now().Add(time.Hour))
	r.TouchBatch([]engine.Touch{{ID: inP[0], At: at(1)}, {ID: other, At: at(2)}})
	// A table where self keeps q but not p.
	var tb *Table
	for i := 0; ; i++ {
		tb = NewTable(r.cfg.Partitions, []string{"self", fmt.Sprintf("peer-%d", i)})
		if tb.Owner(p) != "self" && tb.Owner(q) == "self" {
			break
		}
	}
	if n := r.releaseLost(tb); n != 1 {
		t.Fatalf("released %d partitions, want 1 (p)", n)
	}
	if got := local.take(); !slices.Equal(got, []string{"touch " + inP[0] + " 1"}) {
		t.Fatalf("applied %q, want p's held touch", got)
	}
	if r.heldMessages() != 1 || !r.hold.active.Load() {
		t.Fatal("q is no longer held")
	}
}

// TestHoldFollowsTheTable: held messages of a partition that moved to a
// peer meanwhile are forwarded there on release, not applied here.
func TestHoldFollowsTheTable(t *testing.T) {
	nodes := staticCluster(t, 2, nil)
	a, b := nodes[0], nodes[1]
	var id string
	for i := 0; ; i++ {
		id = fmt.Sprintf("dev-%d", i)
		if a.r.Owns(id) {
			break
		}
	}
	p := PartitionOf(id, a.cfg.Partitions)
	gen := a.r.startHold([]int{p}, time.Now().Add(time.Hour))
	a.r.TouchBatch([]engine.Touch{{ID: id, At: at(1)}})
	// b takes every partition; a's table says so too.
	tb := NewTable(a.cfg.Partitions, []string{b.name})
	addrs := map[string]string{b.name: b.addr}
	a.r.setTable(tb, addrs)
	b.r.setTable(tb, addrs)
	a.r.releaseHold(gen)
	deadline := time.Now().Add(5 * time.Second)
	for b.local.touchCount(id) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the held touch never reached the new owner (a got %d)", a.local.touchCount(id))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := a.local.touchCount(id); n != 0 {
		t.Fatalf("applied at the old owner %d times", n)
	}
}
