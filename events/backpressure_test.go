package events

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"testing/synctest"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// destNamed returns the hub's destination called name.
func destNamed(t testing.TB, h *Hub, name string) *dest {
	t.Helper()
	for _, d := range h.dests {
		if d.name == name {
			return d
		}
	}
	t.Fatalf("no destination %q", name)
	return nil
}

// streamEvents reads the whole stream back as events.
func streamEvents(t *testing.T, rdb *redis.Client, key string) []Event {
	t.Helper()
	res, err := rdb.XRange(context.Background(), key, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	got := make([]Event, len(res))
	for i, m := range res {
		got[i] = entryEvent(t, m)
	}
	return got
}

// TestDefaultPolicies: the destinations that hold state for consumers push
// back; the lossy-by-nature ones drop.
func TestDefaultPolicies(t *testing.T) {
	c := DefaultConfig()
	w := DefaultWebhookConfig("http://127.0.0.1:1/hook", "")
	for name, got := range map[string]OnFull{
		"pubsub": c.PubSub.Delivery.OnFull, "stream": c.Stream.Delivery.OnFull,
		"mqtt": c.MQTT.Delivery.OnFull, "sse": c.SSE.Delivery.OnFull, "webhook": w.Delivery.OnFull,
	} {
		want := DropOldest
		if name == "stream" || name == "mqtt" {
			want = Backpressure
		}
		if got != want {
			t.Errorf("%s: OnFull %v, want %v", name, got, want)
		}
	}
}

// TestStreamBackpressure: queues far too small for the burst. The Stream
// (Backpressure) makes HandleTransitions wait and gets every event, once,
// in order, with nothing dropped and the wait counted; Pub/Sub in the same
// hub (DropOldest) drops, counted.
func TestStreamBackpressure(t *testing.T) {
	rdb := newRedis(t)
	cfg := bareConfig()
	cfg.Stream.Enabled, cfg.Stream.Key = true, testenv.Name(t)
	cfg.PubSub.Enabled, cfg.PubSub.Channel = true, testenv.Name(t)
	for _, d := range []*DeliveryConfig{&cfg.Stream.Delivery, &cfg.PubSub.Delivery} {
		d.QueueCapacity, d.BatchSize = 100, 50
	}
	t.Cleanup(func() { rdb.Del(context.Background(), cfg.Stream.Key) })
	h, err := New(cfg, Deps{Redis: rdb, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	runHub(t, h)
	want := trace(200, 50, 7)
	feed(h, want, 7)
	stream, pubsub := destNamed(t, h, "stream"), destNamed(t, h, "pubsub")
	testenv.Eventually(t, 20*time.Second, func() error {
		if q := stream.q.Len(); q != 0 {
			return fmt.Errorf("%d queued", q)
		}
		return nil
	})
	checkOnceInOrder(t, want, streamEvents(t, rdb, cfg.Stream.Key))
	if n := stream.m.Dropped.Get(); n != 0 {
		t.Fatalf("stream dropped %d", n)
	}
	if s := stream.m.Waited.Get(); s <= 0 {
		t.Fatalf("stream blocked %v s, want > 0", s)
	}
	if n := pubsub.m.Dropped.Get(); n == 0 {
		t.Fatal("pubsub dropped nothing: its queue of 100 took batches of up to 300")
	}
	if s := pubsub.m.Waited.Get(); s != 0 {
		t.Fatalf("pubsub blocked %v s", s)
	}
}

// TestStreamDownDrops: with Redis unreachable the Stream's sends fail, so
// HandleTransitions stops waiting and drops the oldest, counted, instead of
// holding the engine back during an outage; once Redis is back it waits
// again and delivers what is queued.
func TestStreamDownDrops(t *testing.T) {
	rdb := newRedis(t)
	proxy := testenv.NewProxy(t, rdb.Options().Addr)
	opts := *rdb.Options()
	opts.Addr, opts.MaxRetries = proxy.Addr(), -1
	viaProxy := redis.NewClient(&opts)
	t.Cleanup(func() { _ = viaProxy.Close() })

	cfg := bareConfig()
	cfg.Stream.Enabled, cfg.Stream.Key = true, testenv.Name(t)
	cfg.Stream.Delivery.QueueCapacity, cfg.Stream.Delivery.BatchSize = 100, 50
	cfg.Stream.Delivery.Timeout = 500 * time.Millisecond
	t.Cleanup(func() { rdb.Del(context.Background(), cfg.Stream.Key) })
	h, err := New(cfg, Deps{Redis: viaProxy, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	runHub(t, h)
	d := destNamed(t, h, "stream")
	proxy.Cut()
	done := make(chan struct{})
	go func() {
		defer close(done)
		feed(h, trace(100, 20, 8), 8)
	}()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("HandleTransitions waited while Redis was down")
	}
	if n := d.m.Dropped.Get(); n == 0 || d.m.Errors.Get() == 0 {
		t.Fatalf("dropped %d, errors %d: want drops after failed sends", n, d.m.Errors.Get())
	}
	proxy.Restore()
	testenv.Eventually(t, 20*time.Second, func() error {
		if q := d.q.Len(); q != 0 {
			return fmt.Errorf("%d queued", q)
		}
		return nil
	})
	dropped := d.m.Dropped.Get()
	want := trace(50, 20, 9)
	for i := range want {
		want[i].ID = "back-" + want[i].ID
	}
	feed(h, want, 9)
	testenv.Eventually(t, 20*time.Second, func() error {
		if q := d.q.Len(); q != 0 {
			return fmt.Errorf("%d queued", q)
		}
		return nil
	})
	if n := d.m.Dropped.Get(); n != dropped {
		t.Fatalf("dropped %d more with Redis back", n-dropped)
	}
	var back []Event
	for _, e := range streamEvents(t, rdb, cfg.Stream.Key) {
		if len(e.ID) > 5 && e.ID[:5] == "back-" {
			back = append(back, e)
		}
	}
	checkOnceInOrder(t, want, back)
}

// hangSender's sends hang until their ctx ends (a store that accepts the
// connection and never answers).
type hangSender struct{}

func (hangSender) accepts(Type) bool { return true }

func (hangSender) send(ctx context.Context, _ []rec) error {
	<-ctx.Done()
	return ctx.Err()
}

// hungHub is a hub with one Backpressure destination of capacity 10 whose
// store hangs (held: its writes never start), started, and a goroutine
// pushing 30 events into it; pushed closes when that push returns.
func hungHub(t *testing.T, held bool) (h *Hub, pushed chan struct{}) {
	h, err := New(bareConfig(), Deps{Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	dc := bareConfig().Stream.Delivery
	dc.QueueCapacity, dc.BatchSize, dc.Timeout, dc.OnFull = 10, 5, time.Hour, Backpressure
	h.add("hang", hangSender{}, dc)
	if held {
		h.Hold(make(chan struct{})) // restart recovery that never ends
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	batch := make([]engine.Transition, 30)
	for i := range batch {
		batch[i] = tr("dev-"+strconv.Itoa(i), engine.StatusUnknown, engine.StatusOnline, t0, engine.CauseTelemetry)
	}
	pushed = make(chan struct{})
	go func() {
		defer close(pushed)
		h.HandleTransitions(batch)
	}()
	synctest.Wait()
	select {
	case <-pushed:
		t.Fatal("HandleTransitions returned while the queue was full and no send had failed")
	default:
	}
	return h, pushed
}

// TestCloseStopsWaiting: a push waiting for room in a destination whose
// store hangs returns as soon as Close begins, and Close returns within
// its ctx.
func TestCloseStopsWaiting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, pushed := hungHub(t, false)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		start := time.Now()
		closed := make(chan error, 1)
		go func() { closed <- h.Close(ctx) }()
		<-pushed
		if d := time.Since(start); d != 0 {
			t.Fatalf("the waiting push returned %v after Close began, want at once", d)
		}
		if _, ok := (<-closed).(*UnsentError); !ok {
			t.Fatal("Close with a hung store: want an *UnsentError")
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("Close took %v with a 1 s ctx", d)
		}
	})
}

// TestStopWaitingAfter: a shutdown that begins while the destinations are
// still held (restart recovery) bounds the push waiting for room: it
// returns ShutdownTimeout after StopWaitingAfter, dropping what does not
// fit, before Close is called.
func TestStopWaitingAfter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, pushed := hungHub(t, true)
		start := time.Now()
		h.StopWaitingAfter(3 * time.Second)
		<-pushed
		if d := time.Since(start); d != 3*time.Second {
			t.Fatalf("the push returned %v after StopWaitingAfter(3s)", d)
		}
		if n := h.dests[0].m.Dropped.Get(); n != 20 {
			t.Fatalf("dropped %d, want the 20 that did not fit", n)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if _, ok := h.Close(ctx).(*UnsentError); !ok {
			t.Fatal("Close with a held store: want an *UnsentError")
		}
	})
}

// TestStreamTrimming: each batch trims the entries older than Retention
// (XTRIM MINID ~) and caps the length at MaxLen (XTRIM MAXLEN ~); with
// both 0 nothing is trimmed.
func TestStreamTrimming(t *testing.T) {
	rdb := newRedis(t)
	ctx := context.Background()
	const old = 1000 // entries from 1970, ten whole stream nodes of 100
	for _, tc := range []struct {
		name      string
		retention time.Duration
		maxLen    int64
		check     func(n int64) bool
		want      string
	}{
		{"retention", time.Hour, 0, func(n int64) bool { return n >= 10 && n <= 10+100 }, "the 1970 entries trimmed"},
		{"none", 0, 0, func(n int64) bool { return n == old+10 }, "nothing trimmed"},
		{"maxlen", 0, 300, func(n int64) bool { return n >= 300 && n <= 300+200 }, "about 300"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := testenv.Name(t)
			t.Cleanup(func() { rdb.Del(ctx, key) })
			pipe := rdb.Pipeline()
			for i := range old {
				pipe.XAdd(ctx, &redis.XAddArgs{Stream: key, ID: strconv.Itoa(1000+i) + "-1", Values: []string{"type", "status"}})
			}
			if _, err := pipe.Exec(ctx); err != nil {
				t.Fatal(err)
			}
			cfg := bareConfig()
			cfg.Stream.Enabled, cfg.Stream.Key = true, key
			cfg.Stream.Retention, cfg.Stream.MaxLen = tc.retention, tc.maxLen
			h, err := New(cfg, Deps{Redis: rdb, Logger: quietLog()})
			if err != nil {
				t.Fatal(err)
			}
			runHub(t, h)
			feed(h, trace(10, 1, 10), 10)
			testenv.Eventually(t, 10*time.Second, func() error {
				if s := h.dests[0].m.Sent.Get(); s != 10 {
					return fmt.Errorf("sent %d", s)
				}
				return nil
			})
			if n := rdb.XLen(ctx, key).Val(); !tc.check(n) {
				t.Fatalf("stream length %d, want %s", n, tc.want)
			}
			last, err := rdb.XRevRangeN(ctx, key, "+", "-", 10).Result()
			if err != nil || len(last) != 10 || last[0].Values["cause"] == nil {
				t.Fatalf("the 10 new events are not the last entries: %v %v", last, err)
			}
		})
	}
}

func TestMinID(t *testing.T) {
	check := func(at time.Time, want string) {
		t.Helper()
		if got := minID(at); got != want {
			t.Errorf("minID(%v) = %q, want %q", at, got, want)
		}
	}
	check(time.UnixMilli(1765708245123).Add(999*time.Microsecond), "1765708245123-0")
	check(time.UnixMilli(0), "0-0")
	check(time.Unix(-5, 0), "0-0")
}
