package recovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/cluster"
	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
	wbredis "github.com/presence-dev/presence/writeback/redis"
	"github.com/presence-dev/presence/writeback/writebacktest"
)

// fixture is a private key prefix in the test Redis with a sink that
// writes and reads it.
type fixture struct {
	client *goredis.Client
	prefix string
	src    *writebacktest.FakeSource
	sink   *wbredis.Sink
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{client: testenv.RedisClient(t, ""), prefix: testenv.Name(t) + ":", src: writebacktest.NewFakeSource()}
	testenv.CleanupRedisPrefix(t, f.client, f.prefix)
	cfg := wbredis.DefaultConfig()
	cfg.KeyPrefix = f.prefix
	cfg.Flush.Logger = testenv.Logger(t)
	var err error
	if f.sink, err = wbredis.New(f.client, f.src, cfg); err != nil {
		t.Fatal(err)
	}
	return f
}

// store writes devices to Redis as the sink does.
func (f *fixture) store(t *testing.T, states ...engine.DeviceState) {
	t.Helper()
	f.src.Set(states...)
	if err := f.sink.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// recorder is an engine.Sink keeping every transition.
type recorder struct {
	mu  sync.Mutex
	got []engine.Transition
}

func (r *recorder) HandleTransitions(b []engine.Transition) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, b...)
}

func (r *recorder) byCause(c engine.Cause) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, tr := range r.got {
		if tr.Cause == c {
			n++
		}
	}
	return n
}

func newEngine(t *testing.T, sinks ...engine.Sink) *engine.Engine {
	t.Helper()
	cfg := engine.DefaultConfig()
	cfg.Logger = slog.New(slog.DiscardHandler)
	cfg.Sink = engine.SinkFunc(func(b []engine.Transition) {
		for _, s := range sinks {
			s.HandleTransitions(b)
		}
	})
	eng, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return eng
}

func (f *fixture) recovery(t *testing.T, eng Engine, cl Cluster, now time.Time) *Recovery {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Index.KeyPrefix = f.prefix
	cfg.RetryBackoff = 10 * time.Millisecond
	cfg.Clock = func() time.Time { return now }
	cfg.Logger = testenv.Logger(t)
	index, err := NewIndex(f.client, cfg.Index, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(cfg, index, f.sink, eng)
	if err != nil {
		t.Fatal(err)
	}
	if cl != nil {
		r.SetCluster(cl)
	}
	t.Cleanup(func() { r.Close(context.Background()) })
	return r
}

// fleet is 30 stored devices: 1..10 online and within the 60 s timeout,
// 11..20 online but silent for 10 minutes (presenced was down), 21..30
// offline.
func fleet(now time.Time) []engine.DeviceState {
	var out []engine.DeviceState
	for i := 1; i <= 30; i++ {
		st := engine.DeviceState{ID: strconv.Itoa(i), Status: engine.StatusOnline, LastSeen: now.Add(-time.Second)}
		switch {
		case i > 20:
			st.Status, st.LastSeen = engine.StatusOffline, now.Add(-time.Hour)
		case i > 10:
			st.LastSeen = now.Add(-10 * time.Minute)
		}
		out = append(out, st)
	}
	return out
}

// The first start walks the keyspace and fills the index; the next one
// reads the index; both restore the same state: the live devices online,
// the ones whose deadline passed offline with cause restart.
func TestHydrate(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	f.store(t, fleet(now)...)
	for _, round := range []string{"scan", "index"} {
		rec := &recorder{}
		eng := newEngine(t, rec)
		r := f.recovery(t, eng, nil, now)
		if r.Ready() == nil {
			t.Fatal("ready before the rebuild")
		}
		complete, _ := r.Index().Complete(context.Background())
		if complete != (round == "index") {
			t.Fatalf("%s: index complete = %v", round, complete)
		}
		if err := r.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		eng.Deliver()
		if c := eng.Counts(); c.Total != 30 || c.Online != 10 {
			t.Fatalf("%s: restored %+v, want 30 devices, 10 online", round, c)
		}
		if n := rec.byCause(engine.CauseRestart); n != 10 {
			t.Fatalf("%s: %d restart transitions, want 10 (devices 11..20)", round, n)
		}
		if r.Ready() != nil {
			t.Fatalf("%s: not ready: %v", round, r.Ready())
		}
	}
}

// evenNode is a cluster member that owns the even device ids.
type evenNode struct {
	mu   sync.Mutex
	done []cluster.Change
}

func (*evenNode) Owns(id string) bool { n, _ := strconv.Atoi(id); return n%2 == 0 }
func (*evenNode) Owned() []int {
	all := make([]int, cluster.DefaultPartitions)
	for i := range all {
		all[i] = i
	}
	return all
}
func (n *evenNode) RebuildDone(c cluster.Change) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.done = append(n.done, c)
}

// A cluster node restores only the devices it owns.
func TestHydrateOwnedOnly(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	f.store(t, fleet(now)...)
	eng := newEngine(t)
	r := f.recovery(t, eng, &evenNode{}, now)
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if c := eng.Counts(); c.Total != 15 {
		t.Fatalf("restored %d devices, want the 15 even ones", c.Total)
	}
}

// With Redis unreachable, start-up retries Attempts times, then serves
// without the stored state, ready, having said why.
func TestHydrateGivesUp(t *testing.T) {
	f := newFixture(t)
	px := testenv.NewProxy(t, f.client.Options().Addr)
	px.Cut()
	cfg := wbredis.DefaultConfig()
	cfg.KeyPrefix = f.prefix
	via := testenv.RedisClient(t, px.Addr())
	sink, err := wbredis.New(via, f.src, cfg)
	if err != nil {
		t.Fatal(err)
	}
	rc := DefaultConfig()
	rc.Index.KeyPrefix, rc.Attempts, rc.RetryBackoff, rc.Logger = f.prefix, 2, 10*time.Millisecond, testenv.Logger(t)
	index, err := NewIndex(via, rc.Index, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(rc, index, sink, newEngine(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if r.Ready() != nil {
		t.Fatalf("not ready after giving up: %v", r.Ready())
	}
}

// The partitions gained from a crashed member are rebuilt from Redis in
// the background; the devices whose deadline passed in the gap go offline
// with cause handoff; the held messages are released after it.
func TestRebuildOnChange(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	f.store(t, fleet(now)...)
	rec := &recorder{}
	eng := newEngine(t, rec)
	node := &evenNode{}
	r := f.recovery(t, eng, node, now)
	old := cluster.NewTable(cluster.DefaultPartitions, []string{"a", "b"})
	cur := cluster.NewTable(cluster.DefaultPartitions, []string{"b"})
	c := cluster.Change{Self: "b", Old: old, New: cur, Moved: cluster.Moved(old, cur), Failed: []string{"a"}}
	if len(c.Rebuild()) == 0 {
		t.Fatal("the change has nothing to rebuild: the test proves nothing")
	}
	r.OnChange(c)
	testenv.Eventually(t, 10*time.Second, func() error {
		node.mu.Lock()
		defer node.mu.Unlock()
		if len(node.done) != 1 {
			return fmt.Errorf("RebuildDone called %d times", len(node.done))
		}
		return nil
	})
	eng.Deliver()
	// Only the devices of the gained partitions, and of those only the
	// even ones (the node's), were adopted.
	gained := map[int]bool{}
	for _, p := range c.Rebuild() {
		gained[p] = true
	}
	want, wantHandoff := 0, 0
	for _, st := range fleet(now) {
		if n, _ := strconv.Atoi(st.ID); n%2 == 0 && gained[cluster.PartitionOf(st.ID, cluster.DefaultPartitions)] {
			want++
			if n > 10 && n <= 20 {
				wantHandoff++
			}
		}
	}
	if got := eng.Counts().Total; got != want {
		t.Fatalf("adopted %d devices, want %d", got, want)
	}
	if got := rec.byCause(engine.CauseHandoff); got != wantHandoff {
		t.Fatalf("%d handoff transitions, want %d", got, wantHandoff)
	}
}

// The key writer waits for no transition sink: a device drained from the
// Redis sink's Tracker just after it came online is written with its index
// entry while the engine's delivery is stuck in a sink that pushes back (a
// full event Stream), and a restart that reads the index finds it.
func TestKeysIndexedWithoutDelivery(t *testing.T) {
	f := newFixture(t)
	stuck, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	eng := newEngine(t, engine.SinkFunc(func([]engine.Transition) {
		once.Do(func() { close(stuck) })
		<-release
	}))
	defer close(release)
	r := f.recovery(t, eng, nil, time.Now())
	tr, err := eng.NewTracker()
	if err != nil {
		t.Fatal(err)
	}
	cfg := wbredis.DefaultConfig()
	cfg.KeyPrefix, cfg.IndexKeyOf = f.prefix, r.Index().KeyOf
	sink, err := wbredis.New(f.client, tr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.Touch("41", time.Now()); err != nil {
		t.Fatal(err)
	}
	go eng.Deliver()
	<-stuck // the delivery waits, with 41's online transition
	if err := eng.Touch("42", time.Now()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := sink.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"41", "42"} {
		p := cluster.PartitionOf(id, cluster.DefaultPartitions)
		if ok, err := f.client.SIsMember(ctx, r.Index().Key(p), id).Result(); err != nil || !ok {
			t.Fatalf("%s not in the index with its keys: %v %v", id, ok, err)
		}
		if st, err := sink.ReadStates(ctx, []string{id}); err != nil || st[0].Status != engine.StatusOnline {
			t.Fatalf("%s stored as %+v, %v", id, st, err)
		}
	}
	// Written again (a message), it is not added again: one SADD a device.
	if err := eng.Touch("42", time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if got := tr.Drain(nil, 10); len(got) != 1 || got[0].New || got[0].StatusOnly {
		t.Fatalf("a known device's message drained as %+v", got)
	}
}

// The keyspace walk finds every stored device, in several SCAN batches
// read concurrently, with its state; fn's error ends it.
func TestScan(t *testing.T) {
	f := newFixture(t)
	want := map[string]engine.DeviceState{}
	var all []engine.DeviceState
	for i := range 12_000 {
		d := writebacktest.Dev(i, engine.Status(1+i%2), writebacktest.T0.Add(time.Duration(i)*time.Second))
		want[d.ID] = d
		all = append(all, d)
	}
	f.store(t, all...)
	r := f.recovery(t, newEngine(t), nil, time.Now())
	ctx := context.Background()
	got := map[string]engine.DeviceState{}
	even := func(id string) bool { n, _ := strconv.Atoi(id); return n%2 == 0 }
	err := r.scan(ctx, func(states []engine.DeviceState) error {
		if len(states) > readBatch {
			return fmt.Errorf("a batch of %d", len(states))
		}
		for _, s := range states {
			got[s.ID] = s
		}
		return nil
	}, even)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want)/2 {
		t.Fatalf("scanned %d devices, want the %d even ones", len(got), len(want)/2)
	}
	for id, g := range got {
		w := want[id]
		if !even(id) || g.Status != w.Status || !g.LastSeen.Equal(w.LastSeen.Truncate(time.Microsecond)) {
			t.Fatalf("device %s: got %+v, want %+v", id, g, w)
		}
	}
	stop := errors.New("stop")
	if err := r.scan(ctx, func([]engine.DeviceState) error { return stop }, nil); !errors.Is(err, stop) {
		t.Fatalf("scan error = %v, want the callback's", err)
	}
}
