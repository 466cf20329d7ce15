package writeback

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// The index records each device once, in its partition's set, when it
// comes online; a rebuild reads the partition's devices back with their
// stored state and forgets the ids whose keys have expired.
func TestRedisIndex(t *testing.T) {
	client := newRedisClient(t, "")
	prefix := testenv.Name(t) + ":"
	cleanupRedisPrefix(t, client, prefix)
	part := func(id string) int { n, _ := strconv.Atoi(id); return n % 4 }
	x := NewRedisIndex(client, prefix, part, 0, testLogger(t), nil)

	src := newFakeSource()
	cfg := DefaultRedisConfig()
	cfg.KeyPrefix = prefix
	sink, err := NewRedis(client, src, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var batch []engine.Transition
	for i := range 40 {
		d := dev(i, engine.StatusOnline, t0.Add(time.Duration(i)*time.Second))
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
	// and drops it from the index.
	client.Del(ctx, sink.StatusKey(dev(1, 0, time.Time{}).ID), sink.LastSeenKey(dev(1, 0, time.Time{}).ID))
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
	if len(got) != 9 || got[0] == dev(1, 0, time.Time{}).ID {
		t.Fatalf("rebuilt %v", got)
	}
	if n, _ := client.SCard(ctx, x.Key(1)).Result(); n != 9 {
		t.Fatalf("index of partition 1 holds %d ids, want 9", n)
	}
}

// A full pending set drops and counts; an outage keeps ids pending.
func TestRedisIndexBounded(t *testing.T) {
	client := newRedisClient(t, "")
	prefix := testenv.Name(t) + ":"
	cleanupRedisPrefix(t, client, prefix)
	x := NewRedisIndex(client, prefix, func(string) int { return 0 }, 3, testLogger(t), nil)
	var batch []engine.Transition
	for i := range 5 {
		batch = append(batch, engine.Transition{ID: strconv.Itoa(i), From: engine.StatusUnknown, To: engine.StatusOnline})
	}
	x.HandleTransitions(batch)
	if got := x.dropped.Get(); got != 2 {
		t.Fatalf("dropped %d, want 2", got)
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
func TestRedisIndexComplete(t *testing.T) {
	client := newRedisClient(t, "")
	prefix := testenv.Name(t) + ":"
	cleanupRedisPrefix(t, client, prefix)
	ctx := context.Background()
	x := NewRedisIndex(client, prefix, func(id string) int { n, _ := strconv.Atoi(id); return n % 3 }, 2, testLogger(t), nil)
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
func TestRedisIndexBeforeKeys(t *testing.T) {
	direct := newRedisClient(t, "")
	prefix := testenv.Name(t) + ":"
	cleanupRedisPrefix(t, direct, prefix)
	px := testenv.NewProxy(t, direct.Options().Addr)
	viaProxy := newRedisClient(t, px.Addr())
	x := NewRedisIndex(viaProxy, prefix, func(string) int { return 0 }, 0, testLogger(t), nil)
	src := newFakeSource()
	cfg := DefaultRedisConfig()
	cfg.KeyPrefix, cfg.Index = prefix, x
	sink, err := NewRedis(direct, src, cfg)
	if err != nil {
		t.Fatal(err)
	}
	d := dev(5, engine.StatusOnline, t0)
	src.Set(d)
	x.HandleTransitions([]engine.Transition{{ID: d.ID, From: engine.StatusUnknown, To: engine.StatusOnline, At: t0}})
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

func (g gatePipeline) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (g gatePipeline) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (g gatePipeline) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		g.once.Do(func() {
			close(g.entered)
			<-g.gate
		})
		return next(ctx, cmds)
	}
}

// TestRedisIndexFlushWaitsForOneInFlight: a Flush that finds the pending
// ids taken by another Flush still writing them does not report them
// written: the Redis sink would write keys before their index entries.
func TestRedisIndexFlushWaitsForOneInFlight(t *testing.T) {
	client := newRedisClient(t, "")
	prefix := testenv.Name(t) + ":"
	cleanupRedisPrefix(t, client, prefix)
	g := gatePipeline{once: new(sync.Once), entered: make(chan struct{}), gate: make(chan struct{})}
	client.AddHook(g)
	x := NewRedisIndex(client, prefix, func(string) int { return 0 }, 0, testLogger(t), nil)
	x.HandleTransitions([]engine.Transition{{ID: "7", From: engine.StatusUnknown, To: engine.StatusOnline, At: t0}})

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
