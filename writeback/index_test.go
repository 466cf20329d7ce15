package writeback

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testenv"
)

// The index records each device once, in its partition's set, when it is
// first seen; a rebuild reads the partition's devices back with their
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
		// later transitions of the same device are not new
		batch = append(batch, engine.Transition{ID: d.ID, From: engine.StatusOnline, To: engine.StatusOffline, At: d.LastSeen})
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
