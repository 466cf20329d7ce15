package events

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// TestPubSubOnceInOrder: a subscriber of the channel receives every
// transition once, in order per device, as the documented JSON.
func TestPubSubOnceInOrder(t *testing.T) { pubsubOnceInOrder(t, newRedis(t), 1) }

// pubsubOnceInOrder publishes a trace through rdb and checks that a
// subscriber received every event once, in order per device, and nothing
// more.
func pubsubOnceInOrder(t *testing.T, rdb redis.UniversalClient, seed uint64) {
	t.Helper()
	cfg := bareConfig()
	cfg.PubSub.Enabled, cfg.PubSub.Channel = true, testenv.Name(t)
	cfg.PubSub.Delivery.BatchSize = 100
	h, err := New(cfg, Deps{Redis: rdb, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sub := rdb.Subscribe(ctx, cfg.PubSub.Channel)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil { // the subscription confirmation
		t.Fatal(err)
	}
	runHub(t, h)

	want := trace(50, 40, seed)
	feed(h, want, seed)
	ch := sub.Channel(redis.WithChannelSize(len(want) + 10))
	checkOnceInOrder(t, want, receive(t, ch, len(want)))
	select {
	case m := <-ch:
		t.Fatalf("extra message %s", m.Payload)
	case <-time.After(100 * time.Millisecond):
	}
}

func streamHub(t *testing.T, rdb *redis.Client) (*Hub, string) {
	t.Helper()
	cfg := bareConfig()
	cfg.Stream.Enabled, cfg.Stream.Key = true, testenv.Name(t)
	cfg.Stream.Delivery.BatchSize = 128
	t.Cleanup(func() { rdb.Del(context.Background(), cfg.Stream.Key) })
	h, err := New(cfg, Deps{Redis: rdb, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	return h, cfg.Stream.Key
}

// entryEvent turns a stream entry's fields back into an Event, through
// the same JSON decoder as the other destinations.
func entryEvent(t testing.TB, m redis.XMessage) Event {
	t.Helper()
	b := []byte{'{'}
	first := true
	for _, k := range []string{"type", "id", "status", "previous", "at", "cause", "since", "incident"} {
		v, ok := m.Values[k]
		if !ok {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, fmt.Sprintf("%q:%q", k, v)...)
	}
	return decode(t, append(b, '}'))
}

// TestStreamConsumerGroupRestart: a consumer group reads the stream; the
// consumer "crashes" with entries read but not acknowledged, restarts
// (reads its pending list from id 0 with the same name), and a second
// consumer takes over another crashed consumer's entries with XAUTOCLAIM.
// After acknowledgements every event has been processed exactly once, in
// order per device, and nothing is pending.
func TestStreamConsumerGroupRestart(t *testing.T) {
	rdb := newRedis(t)
	h, key := streamHub(t, rdb)
	ctx := context.Background()
	const group = "workers"
	// The documented setup: create the group at the end ($) before events
	// flow, creating the stream if needed.
	if err := rdb.XGroupCreateMkStream(ctx, key, group, "$").Err(); err != nil {
		t.Fatal(err)
	}
	runHub(t, h)
	want := trace(40, 30, 2)
	feed(h, want, 2)
	testenv.Eventually(t, 20*time.Second, func() error {
		if n := rdb.XLen(ctx, key).Val(); n != int64(len(want)) {
			return fmt.Errorf("stream holds %d of %d", n, len(want))
		}
		return nil
	})

	var processed []Event
	read := func(consumer, start string, count int64, ack bool) int {
		t.Helper()
		res, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: group, Consumer: consumer, Streams: []string{key, start}, Count: count, Block: -1,
		}).Result()
		if errors.Is(err, redis.Nil) {
			return 0
		}
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, m := range res[0].Messages {
			n++
			if ack {
				processed = append(processed, entryEvent(t, m))
				if err := rdb.XAck(ctx, key, group, m.ID).Err(); err != nil {
					t.Fatal(err)
				}
			}
		}
		return n
	}

	// c1 processes 300, then reads 200 more and crashes before acking.
	read("c1", ">", 300, true)
	if n := read("c1", ">", 200, false); n != 200 {
		t.Fatalf("c1 read %d", n)
	}
	// c1 restarts: first its pending list (id 0), then new entries.
	if n := read("c1", "0", 1000, true); n != 200 {
		t.Fatalf("c1 recovered %d pending entries, want 200", n)
	}
	if n := read("c1", "0", 1000, true); n != 0 {
		t.Fatalf("pending list not empty after acks: %d", n)
	}
	// c2 reads 100 and dies for good; c3 claims them with XAUTOCLAIM.
	read("c2", ">", 100, false)
	time.Sleep(20 * time.Millisecond)
	msgs, _, err := rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
		Stream: key, Group: group, Consumer: "c3", MinIdle: 10 * time.Millisecond, Start: "0-0", Count: 1000,
	}).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 100 {
		t.Fatalf("XAUTOCLAIM took %d entries, want 100", len(msgs))
	}
	for _, m := range msgs {
		processed = append(processed, entryEvent(t, m))
		rdb.XAck(ctx, key, group, m.ID)
	}
	for read("c3", ">", 500, true) > 0 {
	}
	pend, err := rdb.XPending(ctx, key, group).Result()
	if err != nil {
		t.Fatal(err)
	}
	if pend.Count != 0 {
		t.Fatalf("%d entries still pending", pend.Count)
	}
	checkOnceInOrder(t, want, processed)
}

// TestStreamMaxLen: XADD trims the stream approximately to MaxLen.
func TestStreamMaxLen(t *testing.T) {
	rdb := newRedis(t)
	cfg := bareConfig()
	cfg.Stream.Enabled, cfg.Stream.Key, cfg.Stream.MaxLen = true, testenv.Name(t), 500
	t.Cleanup(func() { rdb.Del(context.Background(), cfg.Stream.Key) })
	h, err := New(cfg, Deps{Redis: rdb, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	runHub(t, h)
	feed(h, trace(100, 50, 3), 3)
	testenv.Eventually(t, 20*time.Second, func() error {
		if s := h.dests[0].m.Sent.Get(); s != 5000 {
			return fmt.Errorf("sent %d", s)
		}
		return nil
	})
	n := rdb.XLen(context.Background(), cfg.Stream.Key).Val()
	if n < 500 || n > 1500 {
		t.Fatalf("stream length %d, want about 500 (approximate trim)", n)
	}
}

// TestRedisOutageRetries: Redis unreachable (proxy cut) for a while; the
// hub keeps accepting, retries with backoff, and delivers everything once
// Redis is back.
func TestRedisOutageRetries(t *testing.T) {
	rdb := newRedis(t)
	proxy := testenv.NewProxy(t, rdb.Options().Addr)
	opts := *rdb.Options()
	opts.Addr = proxy.Addr()
	opts.MaxRetries = -1
	viaProxy := redis.NewClient(&opts)
	t.Cleanup(func() { _ = viaProxy.Close() })

	cfg := bareConfig()
	cfg.Stream.Enabled, cfg.Stream.Key = true, testenv.Name(t)
	t.Cleanup(func() { rdb.Del(context.Background(), cfg.Stream.Key) })
	h, err := New(cfg, Deps{Redis: viaProxy, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	runHub(t, h)
	proxy.Cut()
	want := trace(20, 20, 4)
	feed(h, want, 4)
	d := h.dests[0]
	testenv.Eventually(t, 10*time.Second, func() error {
		if d.m.Retries.Get() < 2 {
			return fmt.Errorf("retries %d", d.m.Retries.Get())
		}
		return nil
	})
	proxy.Restore()
	testenv.Eventually(t, 20*time.Second, func() error {
		if q := d.q.Len(); q != 0 {
			return fmt.Errorf("%d queued", q)
		}
		return nil
	})
	res, err := rdb.XRange(context.Background(), cfg.Stream.Key, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	got := make([]Event, len(res))
	for i, m := range res {
		got[i] = entryEvent(t, m)
	}
	checkOnceInOrder(t, want, got)
}

// failTrims makes every XTRIM of a pipeline fail, as an XTRIM MINID does on
// Redis before 6.2.
type failTrims struct{}

func (failTrims) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (failTrims) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (failTrims) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, c := range cmds {
			if c.Name() == "xtrim" {
				c.SetErr(errors.New("ERR syntax error"))
				err = c.Err()
			}
		}
		return err
	}
}

// TestStreamTrimFailureKeepsEntries: a trim that fails is counted and the
// batch is not sent again (which would append its entries once more).
func TestStreamTrimFailureKeepsEntries(t *testing.T) {
	rdb := newRedis(t)
	rdb.AddHook(failTrims{})
	cfg := bareConfig()
	cfg.Stream.Enabled, cfg.Stream.Key = true, testenv.Name(t)
	t.Cleanup(func() { rdb.Del(context.Background(), cfg.Stream.Key) })
	h, err := New(cfg, Deps{Redis: rdb, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	runHub(t, h)
	feed(h, trace(10, 10, 1), 1)
	testenv.Eventually(t, 10*time.Second, func() error {
		if s := h.dests[0].m.Sent.Get(); s != 100 {
			return fmt.Errorf("sent %d", s)
		}
		return nil
	})
	if n := rdb.XLen(context.Background(), cfg.Stream.Key).Val(); n != 100 {
		t.Fatalf("stream length %d, want the 100 events once", n)
	}
	if e := h.dests[0].m.Errors.Get(); e != 0 {
		t.Fatalf("%d send errors: a failed trim failed the batch", e)
	}
	if n := h.set.GetOrCreateCounter("presence_events_stream_trim_errors_total").Get(); n == 0 {
		t.Fatal("trim errors not counted")
	}
}

// A sharded stream: every event is in the shard of its device, once, in
// order per device, and every shard is used.
func TestStreamShards(t *testing.T) {
	rdb := newRedis(t)
	cfg := bareConfig()
	cfg.Stream.Enabled, cfg.Stream.Key, cfg.Stream.Shards = true, testenv.Name(t), 3
	cfg.Stream.Delivery.BatchSize = 128
	keys := cfg.Stream.ShardKeys()
	if len(keys) != 3 || keys[2] != cfg.Stream.Key+":2" {
		t.Fatalf("shard keys %v", keys)
	}
	t.Cleanup(func() { rdb.Del(context.Background(), keys...) })
	h, err := New(cfg, Deps{Redis: rdb, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	runHub(t, h)
	want := trace(60, 20, 3)
	feed(h, want, 3)
	ctx := context.Background()
	testenv.Eventually(t, 20*time.Second, func() error {
		n := int64(0)
		for _, k := range keys {
			n += rdb.XLen(ctx, k).Val()
		}
		if n != int64(len(want)) {
			return fmt.Errorf("the shards hold %d of %d", n, len(want))
		}
		return nil
	})
	var got []Event
	for i, k := range keys {
		msgs, err := rdb.XRange(ctx, k, "-", "+").Result()
		if err != nil || len(msgs) == 0 {
			t.Fatalf("shard %s: %d entries, %v", k, len(msgs), err)
		}
		for _, m := range msgs {
			e := entryEvent(t, m)
			if shardOf(e.ID, 3) != i {
				t.Fatalf("%s's event in shard %d", e.ID, i)
			}
			got = append(got, e)
		}
	}
	checkOnceInOrder(t, want, got)
}

// Sharded Pub/Sub: SPUBLISH reaches an SSUBSCRIBE subscriber.
func TestPubSubSharded(t *testing.T) {
	rdb := newRedis(t)
	cfg := bareConfig()
	cfg.PubSub.Enabled, cfg.PubSub.Channel, cfg.PubSub.Sharded = true, testenv.Name(t), true
	h, err := New(cfg, Deps{Redis: rdb, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sub := rdb.SSubscribe(ctx, cfg.PubSub.Channel)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	runHub(t, h)
	want := trace(10, 5, 4)
	feed(h, want, 4)
	checkOnceInOrder(t, want, receive(t, sub.Channel(), len(want)))
}

// receive decodes the first n messages of ch, failing after 20 s.
func receive(t *testing.T, ch <-chan *redis.Message, n int) []Event {
	t.Helper()
	var got []Event
	timeout := time.After(20 * time.Second)
	for len(got) < n {
		select {
		case m := <-ch:
			got = append(got, decode(t, []byte(m.Payload)))
		case <-timeout:
			t.Fatalf("received %d of %d events", len(got), n)
		}
	}
	return got
}

// On a Redis Cluster too a subscriber receives every event once, in
// order per device: the PUBLISHes of the channel all go to the master of
// its slot (go-redis would send a keyless PUBLISH to the masters in turn).
func TestPubSubOnceInOrderOnCluster(t *testing.T) {
	rc := testenv.StartRedisCluster(t, 3, 0)
	pubsubOnceInOrder(t, rc.Client(t), 5)
}
