package redis

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
	"github.com/presence-dev/presence/writeback"
	"github.com/presence-dev/presence/writeback/writebacktest"
)

// clusterClient is a client of rc as presenced builds it (ClientConfig
// with REDIS_ADDRS), closed when the test ends.
func clusterClient(t testing.TB, rc *testenv.RedisCluster) goredis.UniversalClient {
	t.Helper()
	client, err := ClientConfig{Addrs: rc.Addrs()}.NewClient()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := client.(*goredis.ClusterClient); !ok {
		t.Fatalf("REDIS_ADDRS built a %T", client)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

// guardedSink is a guarded sink on client under the test's own prefix, over
// a fake source; mod, if not nil, adjusts its config.
func guardedSink(t *testing.T, client goredis.UniversalClient, mod func(*Config)) (*Sink, *writebacktest.FakeSource) {
	t.Helper()
	src := writebacktest.NewFakeSource()
	cfg := DefaultConfig()
	cfg.KeyPrefix = testenv.Name(t) + ":"
	cfg.Guarded = true
	if mod != nil {
		mod(&cfg)
	}
	sink, err := New(client, src, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return sink, src
}

// The state sinks' shared tests, guarded and not, on a Redis Cluster of 3
// masters (the tests that cut a proxy between sink and store skip: a
// Cluster client follows the nodes' own addresses).
func TestConformanceOnRedisCluster(t *testing.T) {
	rc := testenv.StartRedisCluster(t, 3, 1)
	client := clusterClient(t, rc)
	harness := func(guarded bool) writebacktest.NewHarness {
		return func(t *testing.T, src writeback.Source, o writebacktest.Opts) writebacktest.Harness {
			t.Helper()
			if o.ViaProxy {
				t.Skip("a Redis Cluster client dials the nodes' own addresses: no proxy to cut")
			}
			prefix := testenv.Name(t) + ":"
			cfg := DefaultConfig()
			cfg.KeyPrefix = prefix
			cfg.Flush = writebacktest.FlushConfig(t, cfg.Flush, o)
			cfg.Guarded = guarded
			cfg.TTL = longTTL
			cfg.TimeoutsKeyOf = func(id string) string { return prefix + "timeouts:" + strconv.Itoa(len(id)%7) }
			sink, err := New(client, src, cfg)
			if err != nil {
				t.Fatal(err)
			}
			return writebacktest.Harness{Sink: sink, Label: "redis", HasStatus: true, Monotonic: guarded}
		}
	}
	writebacktest.RunConformance(t, map[string]writebacktest.NewHarness{
		"redis-cluster":         harness(false),
		"redis-cluster/guarded": harness(true),
	})
}

// Guarded writes on a Redis Cluster, where a device's two keys are in
// different slots (on different masters for most devices): a stale owner
// moves neither key back, for devices on every master.
func TestGuardedAcrossSlots(t *testing.T) {
	rc := testenv.StartRedisCluster(t, 3, 1)
	client := clusterClient(t, rc)
	sink, src := guardedSink(t, client, nil)
	cfg := sink.cfg
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Millisecond)
	ids := make([]string, 30)
	apart := 0
	for i := range ids {
		ids[i] = fmt.Sprint("dev-", i)
		a, _ := client.ClusterKeySlot(ctx, sink.StatusKey(ids[i])).Result()
		b, _ := client.ClusterKeySlot(ctx, sink.LastSeenKey(ids[i])).Result()
		if a != b {
			apart++
		}
	}
	if apart == 0 {
		t.Fatal("no device has its keys in two slots: the test proves nothing")
	}
	write := func(st engine.Status, at time.Time) {
		t.Helper()
		for _, id := range ids {
			src.Set(engine.DeviceState{ID: id, Status: st, LastSeen: at})
		}
		if err := sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	check := func(st engine.Status, at time.Time) {
		t.Helper()
		got, err := sink.ReadStates(ctx, ids)
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range got {
			if g.Status != st || !g.LastSeen.Equal(at) {
				t.Fatalf("%s stored %v at %v, want %v at %v", g.ID, g.Status, g.LastSeen, st, at)
			}
			ttl, _ := client.PTTL(ctx, sink.LastSeenKey(g.ID)).Result()
			if want := time.Until(at.Add(cfg.TTL)); ttl < want-time.Second || ttl > want+time.Second {
				t.Fatalf("%s: last-seen key expires in %v, want LastSeen + TTL (%v)", g.ID, ttl, want)
			}
		}
	}
	t1, t2 := now.Add(-time.Minute), now
	write(engine.StatusOnline, t2)
	write(engine.StatusOffline, t1) // the stale owner: an older message time
	check(engine.StatusOnline, t2)
	for _, id := range ids { // a timeout at t2: status alone
		src.Set(engine.DeviceState{ID: id, Status: engine.StatusOffline, LastSeen: t2, StatusOnly: true})
	}
	if err := sink.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	check(engine.StatusOffline, t2)
	write(engine.StatusOnline, t2) // a stale owner that missed the timeout
	check(engine.StatusOffline, t2)
	write(engine.StatusOnline, t2.Add(time.Millisecond)) // the device is back
	check(engine.StatusOnline, t2.Add(time.Millisecond))
	// After every master lost its scripts (a restart), they are loaded
	// again on every master.
	if err := client.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	write(engine.StatusOffline, t2.Add(2*time.Millisecond))
	check(engine.StatusOffline, t2.Add(2*time.Millisecond))
}

// A master killed under load: its replica is promoted, the client finds
// it (reloadOnDialError) and the sink's writes to its slots succeed again
// within seconds, and MasterWatch asks for everything to be written again
// (the writes the dead master acknowledged last may not have reached its
// replica).
func TestFailoverOnRedisCluster(t *testing.T) {
	rc := testenv.StartRedisCluster(t, 3, 1)
	client := clusterClient(t, rc)
	sink, src := guardedSink(t, client, func(cfg *Config) {
		cfg.Flush = writebacktest.FlushConfig(t, cfg.Flush, writebacktest.Opts{})
		cfg.Flush.MaxBackoff = time.Second
	})
	ctx := context.Background()
	if err := sink.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sink.Close(ctx) })
	ids := make([]string, 300)
	for i := range ids {
		ids[i] = fmt.Sprint("dev-", i)
	}
	rewrites := make(chan int, 1)
	wc := DefaultMasterWatchConfig()
	wc.Interval, wc.Logger = 200*time.Millisecond, testenv.Logger(t)
	watch, err := NewMasterWatch(client, wc, func() int {
		select {
		case rewrites <- len(ids):
		default:
		}
		return len(ids)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := watch.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = watch.Close(ctx) })

	// The devices talk every 100 ms.
	loadCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for loadCtx.Err() == nil {
			now := time.Now()
			for _, id := range ids {
				src.Set(engine.DeviceState{ID: id, Status: engine.StatusOnline, LastSeen: now})
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	t.Cleanup(func() { stop(); <-done })
	fresh := func() error {
		got, err := sink.ReadStates(ctx, ids)
		if err != nil {
			return err
		}
		for _, g := range got {
			if age := time.Since(g.LastSeen); g.Status != engine.StatusOnline || age > time.Second {
				return fmt.Errorf("%s: %v, seen %v ago", g.ID, g.Status, age.Round(time.Millisecond))
			}
		}
		return nil
	}
	testenv.Eventually(t, 10*time.Second, fresh)
	testenv.Eventually(t, 10*time.Second, func() error { // the watch's baseline
		if watch.Known() == "" {
			return fmt.Errorf("the watch knows no masters yet")
		}
		return nil
	})

	victim, err := rc.MasterOf(sink.LastSeenKey(ids[0]))
	if err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	rc.Node(victim).Kill()
	if err := rc.WaitHealthy(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	promoted := time.Since(killed)
	testenv.Eventually(t, 15*time.Second, fresh)
	converged := time.Since(killed)
	select {
	case <-rewrites:
	case <-time.After(5 * time.Second):
		t.Fatal("the masters changed, and nothing was written again")
	}
	t.Logf("master %s killed: replica promoted after %v, every key fresh after %v", victim, promoted.Round(time.Millisecond), converged.Round(time.Millisecond))
	if converged > promoted+10*time.Second { // 0.1-0.2 s measured; the margin is for a loaded machine
		t.Errorf("keys fresh %v after the promotion: want within a few flushes", converged-promoted)
	}
}
