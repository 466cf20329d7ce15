package recovery

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"testing"
	"time"

	wbredis "github.com/presence-dev/presence/writeback/redis"

	goredis "github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
	"github.com/presence-dev/presence/writeback"
	"github.com/presence-dev/presence/writeback/writebacktest"
)

// The Redis sink adds each new device to its partition's set with its
// keys, once; a rebuild reads the partition's devices back with their
// stored state and forgets the ids whose keys have expired.
func TestIndex(t *testing.T) {
	client := testenv.RedisClient(t, "")
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, client, prefix)
	part := func(id string) int { n, _ := strconv.Atoi(id); return n % 4 }
	x := newTestIndex(t, client, prefix, part)
	src := writebacktest.NewFakeSource()
	sink := newIndexedSink(t, client, src, prefix, x)
	ctx := context.Background()
	for i := range 40 {
		d := writebacktest.Dev(i, engine.StatusOnline, writebacktest.T0.Add(time.Duration(i)*time.Second))
		d.New = true
		src.Set(d)
	}
	// A device that is not new is written without an index entry.
	src.Set(writebacktest.Dev(1000, engine.StatusOnline, writebacktest.T0))
	if err := sink.Flush(ctx); err != nil {
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
	err := x.Devices(ctx, sink, []int{1}, func(states []engine.DeviceState) error {
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
	if v, _ := client.HGet(ctx, x.TimeoutsKeyOf(dev5), dev5).Result(); v != "3600" {
		t.Fatalf("override of device 5 %q, want 3600", v)
	}
	if ok, _ := client.HExists(ctx, x.TimeoutsKeyOf(dev1), dev1).Result(); ok {
		t.Fatal("the override of the expired device 1 was kept")
	}

	// A decommissioned device leaves the index with its keys.
	src.Set(engine.DeviceState{ID: dev5, Removed: true})
	if err := sink.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, _ := client.SIsMember(ctx, x.Key(part(dev5)), dev5).Result(); ok {
		t.Fatal("a removed device stayed in the index")
	}
}

// An index filled from a full scan is complete until it loses an id.
func TestIndexComplete(t *testing.T) {
	client := testenv.RedisClient(t, "")
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, client, prefix)
	ctx := context.Background()
	x := newTestIndex(t, client, prefix, func(id string) int { n, _ := strconv.Atoi(id); return n % 3 })
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
}

// A device's index entry goes in the pipeline of its keys: when that
// pipeline cannot be written neither is, and the retry writes both.
func TestIndexWithKeys(t *testing.T) {
	direct := testenv.RedisClient(t, "")
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, direct, prefix)
	px := testenv.NewProxy(t, direct.Options().Addr)
	viaProxy := testenv.RedisClient(t, px.Addr())
	x := newTestIndex(t, direct, prefix, func(string) int { return 0 })
	src := writebacktest.NewFakeSource()
	sink := newIndexedSink(t, viaProxy, src, prefix, x)
	d := writebacktest.Dev(5, engine.StatusOnline, writebacktest.T0)
	d.New = true
	src.Set(d)
	ctx := context.Background()
	px.Cut()
	if err := sink.Flush(ctx); err == nil {
		t.Fatal("flush succeeded through a cut connection")
	}
	if n, _ := direct.Exists(ctx, sink.StatusKey(d.ID), x.Key(0)).Result(); n != 0 {
		t.Fatalf("%d of the keys and the index set written by a failed flush", n)
	}
	px.Restore()
	testenv.Eventually(t, 5*time.Second, func() error { return sink.Flush(ctx) })
	if ok, _ := direct.SIsMember(ctx, x.Key(0), d.ID).Result(); !ok {
		t.Fatal("not indexed after the retry")
	}
	got, err := sink.ReadStates(ctx, []string{d.ID})
	if err != nil || got[0].Status != engine.StatusOnline {
		t.Fatalf("stored %+v %v", got, err)
	}
}

// newIndexedSink is a Redis sink under prefix that writes index x.
func newIndexedSink(t *testing.T, client goredis.UniversalClient, src writeback.Source, prefix string, x *Index) *wbredis.Sink {
	t.Helper()
	cfg := wbredis.DefaultConfig()
	cfg.KeyPrefix, cfg.IndexKeyOf, cfg.TimeoutsKeyOf = prefix, x.KeyOf, x.TimeoutsKeyOf
	cfg.Flush.Logger = testenv.Logger(t)
	sink, err := wbredis.New(client, src, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return sink
}

// newTestIndex is an index under prefix with partition function part.
func newTestIndex(t *testing.T, client goredis.UniversalClient, prefix string, part func(string) int) *Index {
	t.Helper()
	cfg := DefaultIndexConfig()
	cfg.KeyPrefix, cfg.PartitionOf = prefix, part
	cfg.TimeoutsKey = wbredis.Config{KeyPrefix: prefix}.TimeoutsKey()
	x, err := NewIndex(client, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// The one timeouts hash of earlier versions moves into the hashes of the
// partitions, keeping a field written there since; a second run finds
// nothing to move.
func TestMoveTimeouts(t *testing.T) {
	client := testenv.RedisClient(t, "")
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, client, prefix)
	part := func(id string) int { n, _ := strconv.Atoi(id); return n % 4 }
	x := newTestIndex(t, client, prefix, part)
	ctx := context.Background()
	old := wbredis.Config{KeyPrefix: prefix}.TimeoutsKey()
	const n = 2500 // more than one HSCAN page and one move pipeline
	fields := make([]any, 0, 2*n)
	for i := range n {
		fields = append(fields, strconv.Itoa(i), "60")
	}
	if err := client.HSet(ctx, old, fields...).Err(); err != nil {
		t.Fatal(err)
	}
	client.HSet(ctx, x.TimeoutsKeyOf("7"), "7", "90") // set since: wins
	moved, err := x.MoveTimeouts(ctx)
	if err != nil || moved != n {
		t.Fatalf("moved %d (%v), want %d", moved, err, n)
	}
	if ok, _ := client.Exists(ctx, old).Result(); ok != 0 {
		t.Fatal("the old hash is still there")
	}
	total := int64(0)
	for p := range 4 {
		m, _ := client.HGetAll(ctx, prefix+"timeouts:"+strconv.Itoa(p)).Result()
		for id := range m {
			if part(id) != p {
				t.Fatalf("%s in the hash of partition %d", id, p)
			}
		}
		total += int64(len(m))
	}
	if total != n {
		t.Fatalf("%d fields in the partitions' hashes, want %d", total, n)
	}
	if v, _ := client.HGet(ctx, x.TimeoutsKeyOf("7"), "7").Result(); v != "90" {
		t.Fatalf("7's newer timeout overwritten: %q", v)
	}
	if moved, err := x.MoveTimeouts(ctx); err != nil || moved != 0 {
		t.Fatalf("second run moved %d (%v)", moved, err)
	}
}
