package bench

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/events"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// massDevices is the fleet of BenchmarkMassExpiry.
const massDevices = 1_000_000

// BenchmarkMassExpiry is issue 11's mass expiry: 1,000,000 devices online,
// then all silent with the same deadline, through the real daemon (its
// defaults, Redis on, the Redis Stream destination on a stream key of its
// own), once with the Stream's policy when its queue is full set to today's
// DropOldest and once to Backpressure (the default now), in the same run.
//
// To make 1M devices online quickly it touches the engine directly
// (d.Engine().TouchBatch) instead of publishing 1M MQTT messages: ingest is
// not what is measured. First every device is touched with a 1 h timeout,
// in chunks of 50,000, each chunk's online events left to reach the stream
// (so that no online event is dropped in either mode); then every device
// is touched again at one instant t with a timeout of engine.MinTimeout
// (1 s): no transition, but every deadline becomes t + 1 s, and the 1M
// offline transitions come due together. The run ends when the Stream has
// sent or dropped every event the hub received; the entries after the
// mark are then read back.
//
// Metrics: offline-events-in-stream (status offline, cause timeout),
// dropped (presence_events_dropped_total{dest="stream"}), deadline-to-last-ms
// and deadline-to-p50-ms (the Redis entry id's time of the last and of the
// median offline event, minus the deadline), deadline-to-engine-ms (when
// the engine had made the last offline transition), deadline-to-keys-ms
// (when the Redis key writer had no dirty device left: the status keys
// written, within one batch in flight), blocked-s
// (presence_events_blocked_seconds_total{dest="stream"}: how long the
// engine's delivery waited for room), coalesced (engine transitions folded
// per device meanwhile), stream-B/entry (MEMORY USAGE of the stream over
// its length). ns/op is from the deadline-setting touches to the last
// event sent or dropped.
//
//	go test ./bench -run '^$' -bench MassExpiry -benchtime 1x -count 3 -timeout 30m
func BenchmarkMassExpiry(b *testing.B) {
	for _, p := range []events.OnFull{events.DropOldest, events.Backpressure} {
		b.Run("policy="+p.String(), func(b *testing.B) { benchMassExpiry(b, p) })
	}
}

// massTotals are BenchmarkMassExpiry's figures summed over b.N.
type massTotals struct {
	offline, dropped, coalesced, blocked float64
	toEngine, toKeys, toLast, toP50      time.Duration
	bytesPerEntry                        float64
}

func benchMassExpiry(b *testing.B, policy events.OnFull) {
	f := newFixture(b, 0)
	cfg := f.daemonConfig()
	cfg.Events.Stream.Key = f.name + ":stream" // under the fixture's prefix: cleaned up
	cfg.Events.PubSub.Channel = f.name + ":events"
	cfg.Events.Stream.Delivery.OnFull = policy
	d := startBenchDaemon(b, cfg)
	testenv.Eventually(b, 30*time.Second, func() error { return getOK("http://" + d.HTTPAddr() + "/readyz") })
	url := "http://" + d.HTTPAddr()
	eng := d.Engine()
	ctx := context.Background()
	key := cfg.Events.Stream.Key
	const dest = `{dest="stream"}`

	var tot massTotals
	b.ResetTimer()
	for n := range b.N {
		b.StopTimer()
		ids := make([]string, massDevices)
		for i := range ids {
			ids[i] = "r" + strconv.Itoa(n) + "-" + strconv.Itoa(i)
		}
		// Online, a chunk at a time, each chunk's events in the stream.
		base := f.rdb.XLen(ctx, key).Val()
		touches := make([]engine.Touch, 0, 50_000)
		for lo := 0; lo < len(ids); lo += cap(touches) {
			touches = touches[:0]
			now := time.Now()
			for _, id := range ids[lo:min(lo+cap(touches), len(ids))] {
				touches = append(touches, engine.Touch{ID: id, At: now, Timeout: time.Hour})
			}
			if r := eng.TouchBatch(touches); r != 0 {
				b.Fatalf("engine rejected %d touches", r)
			}
			want := base + int64(lo+len(touches))
			testenv.Eventually(b, time.Minute, func() error {
				if l := f.rdb.XLen(ctx, key).Val(); l < want {
					return fmt.Errorf("stream holds %d of %d online events", l-base, want-base)
				}
				return nil
			})
		}
		last, err := f.rdb.XRevRangeN(ctx, key, "+", "-", 1).Result()
		if err != nil || len(last) != 1 {
			b.Fatalf("stream end: %v %v", last, err)
		}
		mark := last[0].ID
		before := scrapeOrFail(b, url)
		st0 := eng.Stats()

		// One deadline for the whole fleet.
		b.StartTimer()
		at := time.Now()
		deadline := at.Add(engine.MinTimeout)
		for lo := 0; lo < len(ids); lo += cap(touches) {
			touches = touches[:0]
			for _, id := range ids[lo:min(lo+cap(touches), len(ids))] {
				touches = append(touches, engine.Touch{ID: id, At: at, Timeout: engine.MinTimeout})
			}
			eng.TouchBatch(touches)
		}
		if late := time.Since(deadline); late >= 0 {
			b.Fatalf("touching the fleet took %v, past the deadline", time.Since(at))
		}
		// When the engine made the last offline transition, and when the
		// Redis key writer had taken the last dirty device after it.
		made, keys := make(chan time.Time, 1), make(chan time.Time, 1)
		go func() {
			for eng.Stats().OfflineTransitions-st0.OfflineTransitions < massDevices {
				time.Sleep(time.Millisecond)
			}
			made <- time.Now()
			for {
				m, err := testenv.ScrapeMetrics(url + "/metrics")
				if err == nil && m["presence_writeback_dirty_devices"] == 0 {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			keys <- time.Now()
		}()
		// Done when the Stream sent or dropped every event the hub was
		// handed: the 1M offline transitions and the alerts (mass_offline).
		var after map[string]float64
		testenv.Eventually(b, 10*time.Minute, func() error {
			if off := eng.Stats().OfflineTransitions - st0.OfflineTransitions; off < massDevices {
				return fmt.Errorf("%d offline transitions", off)
			}
			after = scrapeOrFail(b, url)
			delta := func(k string) float64 { return after[k] - before[k] }
			handed := float64(massDevices) + delta("presence_events_alerts_total")
			if done := delta("presence_events_sent_total"+dest) + delta("presence_events_dropped_total"+dest); done < handed {
				return fmt.Errorf("stream sent or dropped %.0f of %.0f events", done, handed)
			}
			return nil
		})
		b.StopTimer()
		st1 := eng.Stats()
		tot.toEngine += (<-made).Sub(deadline)
		tot.toKeys += (<-keys).Sub(deadline)

		offline, toLast, toP50 := readOffline(b, f.rdb, key, mark, deadline)
		tot.offline += float64(offline)
		tot.dropped += after["presence_events_dropped_total"+dest] - before["presence_events_dropped_total"+dest]
		tot.blocked += after["presence_events_blocked_seconds_total"+dest] - before["presence_events_blocked_seconds_total"+dest]
		tot.coalesced += float64(st1.Coalesced - st0.Coalesced)
		tot.toLast += toLast
		tot.toP50 += toP50
		mem, err := f.rdb.MemoryUsage(ctx, key, 0).Result()
		if err != nil {
			b.Fatal(err)
		}
		tot.bytesPerEntry += float64(mem) / float64(f.rdb.XLen(ctx, key).Val())
		b.StartTimer()
	}
	b.StopTimer()
	per := func(v float64) float64 { return v / float64(b.N) }
	b.ReportMetric(per(tot.offline), "offline-events-in-stream")
	b.ReportMetric(per(tot.dropped), "dropped")
	b.ReportMetric(per(float64(tot.toLast.Milliseconds())), "deadline-to-last-ms")
	b.ReportMetric(per(float64(tot.toP50.Milliseconds())), "deadline-to-p50-ms")
	b.ReportMetric(per(float64(tot.toEngine.Milliseconds())), "deadline-to-engine-ms")
	b.ReportMetric(per(float64(tot.toKeys.Milliseconds())), "deadline-to-keys-ms")
	b.ReportMetric(per(tot.blocked), "blocked-s")
	b.ReportMetric(per(tot.coalesced), "coalesced")
	b.ReportMetric(per(tot.bytesPerEntry), "stream-B/entry")
	if policy == events.Backpressure && (tot.dropped != 0 || tot.offline != float64(b.N*massDevices)) {
		b.Errorf("backpressure: %.0f offline events in the stream, %.0f dropped; want all %d, none dropped",
			per(tot.offline), per(tot.dropped), massDevices)
	}
}

func scrapeOrFail(b *testing.B, url string) map[string]float64 {
	b.Helper()
	m, err := testenv.ScrapeMetrics(url + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	return m
}

// readOffline reads the stream after mark and returns the number of
// timeout offline status events, and how long after deadline Redis added
// the last and the median of them (by entry id, Redis's milliseconds).
func readOffline(b *testing.B, rdb *redis.Client, key, mark string, deadline time.Time) (n int, toLast, toP50 time.Duration) {
	b.Helper()
	ctx := context.Background()
	var ms []int64
	start := "(" + mark
	for {
		page, err := rdb.XRangeN(ctx, key, start, "+", 10_000).Result()
		if err != nil {
			b.Fatal(err)
		}
		for _, e := range page {
			if e.Values["type"] == "status" && e.Values["status"] == "offline" && e.Values["cause"] == "timeout" {
				t, _, _ := strings.Cut(e.ID, "-")
				v, err := strconv.ParseInt(t, 10, 64)
				if err != nil {
					b.Fatalf("entry id %q: %v", e.ID, err)
				}
				ms = append(ms, v)
			}
		}
		if len(page) < 10_000 {
			break
		}
		start = "(" + page[len(page)-1].ID
	}
	if len(ms) == 0 {
		return 0, 0, 0
	}
	slices.Sort(ms)
	since := func(v int64) time.Duration { return time.UnixMilli(v).Sub(deadline) }
	return len(ms), since(ms[len(ms)-1]), since(ms[len(ms)/2])
}
