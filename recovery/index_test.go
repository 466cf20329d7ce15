package recovery

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	wbredis "github.com/presence-dev/presence/writeback/redis"

	goredis "github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
	"github.com/presence-dev/presence/writeback/writebacktest"
)

// The index records each device once, in its partition's set, when it
// comes online; a rebuild reads the partition's devices back with their
// stored state and forgets the ids whose keys have expired.
func TestIndex(t *testing.T) {
	client := testenv.RedisClient(t, "")
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, client, prefix)
	part := func(id string) int { n, _ := strconv.Atoi(id); return n % 4 }
	x := newTestIndex(t, client, prefix, part, 0)

	src := writebacktest.NewFakeSource()
	cfg := wbredis.DefaultConfig()
	cfg.KeyPrefix = prefix
	sink, err := wbredis.New(client, src, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var batch []engine.Transition
	for i := range 40 {
		d := writebacktest.Dev(i, engine.StatusOnline, writebacktest.T0.Add(time.Duration(i)*time.Second))
		src.Set(d)
		batch = append(batch, engine.Transition{ID: d.ID, From: engine.StatusUnknown, To: engine.StatusOnline, At: d.LastSeen})
		// going offline adds nothing; coming back adds it again (a set: once)
		batch = append(batch, engine.Transition{ID: d.ID, From: engine.StatusOnline, To: engine.StatusOffline, At: d.LastSeen})
		batch = append(batch, engine.Transition{ID: d.ID, From: engine.StatusOffline, To: engine.StatusOnline, At: d.LastSeen})
	}
	x.HandleTransitions(batch)
	ctx := context.Background()
	if err := sink.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := x.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for p := range 4 {
		members, err := client.SMembers(ctx, x.Key(p)).Result()
		if err != nil || len(members) != 10 {
			t.Fatalf("partition %d: %v %v", p, members, err)
		}
		for _, m := range members {
			if part(m) != p {
				t.Fatalf("%s in partition %d", m, p)
			}
		}
	}

	// Device 1's keys expire: a rebuild of partition 1 returns the other 9
	// and drops it from the index, and its own timeout; device 5's stays.
	dev1, dev5 := writebacktest.Dev(1, 0, time.Time{}).ID, writebacktest.Dev(5, 0, time.Time{}).ID
	for _, id := range []string{dev1, dev5} {
		if err := sink.SetTimeoutOverride(ctx, id, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	client.Del(ctx, sink.StatusKey(dev1), sink.LastSeenKey(dev1))
	var got []string
	err = x.Devices(ctx, sink, []int{1}, func(states []engine.DeviceState) error {
		for _, s := range states {
			if s.Status != engine.StatusOnline || s.LastSeen.IsZero() {
				return fmt.Errorf("state %+v", s)
			}
			got = append(got, s.ID)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(got)
	if len(got) != 9 || got[0] == writebacktest.Dev(1, 0, time.Time{}).ID {
		t.Fatalf("rebuilt %v", got)
	}
	if n, _ := client.SCard(ctx, x.Key(1)).Result(); n != 9 {
		t.Fatalf("index of partition 1 holds %d ids, want 9", n)
	}
	if m, _ := client.HGetAll(ctx, sink.TimeoutsKey()).Result(); len(m) != 1 || m[dev5] != "3600" {
		t.Fatalf("overrides %v, want device 5's alone", m)
	}
}

// A full queue of pending ids drops and counts; an outage keeps ids
// pending.
func TestIndexBounded(t *testing.T) {
	client := testenv.RedisClient(t, "")
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, client, prefix)
	x := newTestIndex(t, client, prefix, func(string) int { return 0 }, 3)
	var batch []engine.Transition
	for i := range 5 {
		batch = append(batch, engine.Transition{ID: strconv.Itoa(i), From: engine.StatusUnknown, To: engine.StatusOnline})
	}
	x.HandleTransitions(batch)
	if got := x.dropped.Get(); got != 2 {
		t.Fatalf("dropped %d, want 2", got)
	}
	// A device that comes online again and again while pending takes one
	// entry: nothing more is dropped.
	for range 5 {
		x.HandleTransitions(batch[4:])
	}
	if got := x.dropped.Get(); got != 2 || x.q.Len() != 3 {
		t.Fatalf("a repeated id: dropped %d, pending %d; want 2, 3", got, x.q.Len())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := x.Flush(ctx); err == nil {
		t.Fatal("flush with a cancelled context succeeded")
	}
	if err := x.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n, _ := client.SCard(context.Background(), x.Key(0)).Result(); n != 3 {
		t.Fatalf("index holds %d ids after the retry, want 3", n)
	}
}

// An index filled from a full scan is complete until it loses an id.
func TestIndexComplete(t *testing.T) {
	client := testenv.RedisClient(t, "")
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, client, prefix)
	ctx := context.Background()
	x := newTestIndex(t, client, prefix, func(id string) int { n, _ := strconv.Atoi(id); return n % 3 }, 2)
	if ok, err := x.Complete(ctx); err != nil || ok {
		t.Fatalf("a new index is complete: %v %v", ok, err)
	}
	ids := make([]string, 25_000) // more than one fill chunk
	for i := range ids {
		ids[i] = strconv.Itoa(i)
	}
	if err := x.Fill(ctx, ids); err != nil {
		t.Fatal(err)
	}
	if ok, err := x.Complete(ctx); err != nil || !ok {
		t.Fatalf("filled index not complete: %v %v", ok, err)
	}
	total := int64(0)
	for p := range 3 {
		n, _ := client.SCard(ctx, x.Key(p)).Result()
		total += n
	}
	if total != int64(len(ids)) {
		t.Fatalf("index holds %d ids, want %d", total, len(ids))
	}
	var batch []engine.Transition // 3 new ids with room for 2: one dropped
	for _, id := range []string{"a1", "a2", "a3"} {
		batch = append(batch, engine.Transition{ID: id, From: engine.StatusUnknown, To: engine.StatusOnline})
	}
	x.HandleTransitions(batch)
	if err := x.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, _ := x.Complete(ctx); ok {
		t.Fatal("an index that dropped an id still claims to be complete")
	}
	if n, _ := client.Exists(ctx, x.completeKey()).Result(); n != 0 {
		t.Fatal("the marker survived a dropped id")
	}
}

// With an index, a device's keys are never written before its index entry:
// when the index cannot be written, the keys wait (dirty) too.
func TestIndexBeforeKeys(t *testing.T) {
	direct := testenv.RedisClient(t, "")
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, direct, prefix)
	px := testenv.NewProxy(t, direct.Options().Addr)
	viaProxy := testenv.RedisClient(t, px.Addr())
	x := newTestIndex(t, viaProxy, prefix, func(string) int { return 0 }, 0)
	src := writebacktest.NewFakeSource()
	cfg := wbredis.DefaultConfig()
	cfg.KeyPrefix, cfg.BeforeWrite = prefix, x.Flush
	sink, err := wbredis.New(direct, src, cfg)
	if err != nil {
		t.Fatal(err)
	}
	d := writebacktest.Dev(5, engine.StatusOnline, writebacktest.T0)
	src.Set(d)
	x.HandleTransitions([]engine.Transition{{ID: d.ID, From: engine.StatusUnknown, To: engine.StatusOnline, At: writebacktest.T0}})
	ctx := context.Background()
	px.Cut()
	if err := sink.Flush(ctx); err == nil {
		t.Fatal("flush succeeded without the index")
	}
	if n, _ := direct.Exists(ctx, sink.StatusKey(d.ID)).Result(); n != 0 {
		t.Fatal("keys written before the index entry")
	}
	px.Restore()
	testenv.Eventually(t, 5*time.Second, func() error { return sink.Flush(ctx) })
	if ok, _ := direct.SIsMember(ctx, x.Key(0), d.ID).Result(); !ok {
		t.Fatal("not indexed")
	}
	checkStoredDirect := func() error {
		got, err := sink.ReadStates(ctx, []string{d.ID})
		if err != nil || got[0].Status != engine.StatusOnline {
			return fmt.Errorf("stored %+v %v", got, err)
		}
		return nil
	}
	if err := checkStoredDirect(); err != nil {
		t.Fatal(err)
	}
}

// gatePipeline blocks the first pipeline it sees until gate is closed.
type gatePipeline struct {
	once    *sync.Once
	entered chan struct{}
	gate    chan struct{}
}

func (g gatePipeline) DialHook(next goredis.DialHook) goredis.DialHook          { return next }
func (g gatePipeline) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook { return next }
func (g gatePipeline) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		g.once.Do(func() {
			close(g.entered)
			<-g.gate
		})
		return next(ctx, cmds)
	}
}

// TestIndexFlushWaitsForOneInFlight: a Flush that finds the pending
// ids taken by another Flush still writing them does not report them
// written: the Redis sink would write keys before their index entries.
func TestIndexFlushWaitsForOneInFlight(t *testing.T) {
	client := testenv.RedisClient(t, "")
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, client, prefix)
	g := gatePipeline{once: new(sync.Once), entered: make(chan struct{}), gate: make(chan struct{})}
	client.AddHook(g)
	x := newTestIndex(t, client, prefix, func(string) int { return 0 }, 0)
	x.HandleTransitions([]engine.Transition{{ID: "7", From: engine.StatusUnknown, To: engine.StatusOnline, At: writebacktest.T0}})

	ctx := context.Background()
	first := make(chan error, 1)
	go func() { first <- x.Flush(ctx) }()
	<-g.entered // the first Flush is writing "7"
	second := make(chan error, 1)
	go func() { second <- x.Flush(ctx) }()
	select {
	case err := <-second:
		t.Fatalf("second Flush returned (%v) while the first was still writing", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(g.gate)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := <-second; err != nil {
		t.Fatal(err)
	}
	if ok, err := client.SIsMember(ctx, x.Key(0), "7").Result(); err != nil || !ok {
		t.Fatalf("7 not in the index after both flushes: %v %v", ok, err)
	}
}

// newTestIndex is an index under prefix with partition function part
// (maxPending 0: the default). It is not started: tests flush it.
func newTestIndex(t *testing.T, client goredis.UniversalClient, prefix string, part func(string) int, maxPending int) *Index {
	t.Helper()
	cfg := DefaultIndexConfig()
	cfg.KeyPrefix, cfg.PartitionOf = prefix, part
	cfg.TimeoutsKey = wbredis.Config{KeyPrefix: prefix}.TimeoutsKey()
	if maxPending > 0 {
		cfg.MaxPending = maxPending
	}
	cfg.MinBackoff, cfg.MaxBackoff = 10*time.Millisecond, 100*time.Millisecond
	x, err := NewIndex(client, cfg, testenv.Logger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	return x
}
