package bench

import (
	"context"
	"math"
	"os"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/app/loadgen"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// BenchmarkDaemonScale is issue 14's scale run of the whole daemon, at
// devices=1M and devices=10M in the same run (PRESENCE_BENCH_SCALE, a
// comma-separated list of device counts, replaces the two sizes, e.g. for
// a quick check). Each size goes through four phases:
//
//   - hydrate: N devices' two keys are written to Redis (80% online, seen
//     within 20 s, 20% offline), and the real daemon is started on them
//     twice (a 1 h timeout, so nothing expires meanwhile): the first start
//     walks the keyspace and builds the device index (hydrate-scan-s),
//     the second reads the index (hydrate-s), as every later start does.
//   - ingest: one QoS 0 telemetry message per device, N in all, through
//     Mosquitto from 2 publisher connections (rawDialer: buffered, not
//     paho's syscall a message, which took a fifth of the two cores both
//     receivers share with it), in a closed loop (a publish
//     waits while 20,000 are published and not yet handled, so the broker
//     drops nothing and the rate is the receiver's): first to a bare paho
//     subscriber that only counts (bare-msgs/s, its 2 connections in one
//     shared group, as ingest's), then, on topics of its own, to the
//     daemon with its defaults, Redis (keys, index, Stream, Pub/Sub),
//     PostgreSQL (devices table of N rows, history) and the offline alerts
//     on (msgs/s: touches accepted by the engine; its timeout
//     scaleTimeout: 2 min, 10 min at 10M). Then
//     live heap and RSS per device once everything is written and 22 s
//     have passed (heap-B/device, rss-B/device).
//   - expiry: every device touched through the engine (as
//     BenchmarkMassExpiry does) at one instant t, so that all N deadlines
//     are t + the same timeout (the touches' own writes settle first);
//     from the deadline: the engine's last offline transition
//     (deadline-to-engine-ms), then, polled together, the Redis key writer
//     with no dirty device left (deadline-to-redis-ms), PostgreSQL's
//     (deadline-to-postgres-ms), the Stream's N offline events sent
//     (deadline-to-events-ms).
//     Every status key is then read back: all N must say offline, and the
//     Stream must have dropped no event (dropped); history-dropped is what
//     the history's bounded queue dropped over the ingest and the expiry. Memory again
//     (expired-heap-B/device, expired-rss-B/device).
//   - redis-B/device: Redis's MEMORY USAGE of the seed's two keys of 1,000
//     devices spread over the fleet, per device: what the consumers'
//     contract costs Redis, not presence.
//
// max-gc-pause-ms is the longest stop-the-world pause of the size's run
// (the upper bound of its runtime/metrics histogram bucket).
//
//	go test ./bench -run '^$' -bench DaemonScale -benchtime 1x -count 1 -timeout 120m
func BenchmarkDaemonScale(b *testing.B) {
	for _, n := range scaleSizes(b) {
		b.Run("devices="+countLabel(n), func(b *testing.B) { benchDaemonScale(b, n) })
	}
}

// scaleWindow is how many messages the closed loop lets be in flight:
// well within what Mosquitto queues for the 2 subscriber connections.
const scaleWindow = 20_000

func scaleSizes(b *testing.B) []int {
	v := os.Getenv("PRESENCE_BENCH_SCALE")
	if v == "" {
		return []int{1_000_000, 10_000_000}
	}
	var sizes []int
	for f := range strings.SplitSeq(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			b.Fatalf("PRESENCE_BENCH_SCALE=%q: want device counts like 1000000,10000000", v)
		}
		sizes = append(sizes, n)
	}
	return sizes
}

func countLabel(n int) string {
	if n%1_000_000 == 0 {
		return strconv.Itoa(n/1_000_000) + "M"
	}
	return strconv.Itoa(n)
}

// scaleStored is the stored fleet of the hydrate phase.
func scaleStored(i int, base time.Time) storedDevice {
	if i%5 == 0 {
		return storedDevice{"offline", base.Add(-time.Hour)}
	}
	return storedDevice{"online", base.Add(-time.Duration(i%20) * time.Second)}
}

// scaleLoad is one message for each of n devices, unpaced (the window
// paces it).
func (f *fixture) scaleLoad(n int) loadgen.Config {
	cfg := f.load()
	cfg.Devices = n
	cfg.Count = uint64(n)
	cfg.Rate = loadgen.MaxRate
	cfg.Conns = e2eConns
	cfg.QoS = 0
	return cfg
}

func benchDaemonScale(b *testing.B, n int) {
	ctx := context.Background()
	pauses := gcPauses()
	per := func(v uint64) float64 { return float64(v) / float64(n) }
	within := 10*time.Minute + time.Duration(n/10_000)*time.Second // 10M: ~27 min
	b.ResetTimer()
	b.StopTimer()

	// Hydrate.
	hyd := newFixture(b, 0)
	base := time.Now()
	if err := preload(ctx, hyd, n, func(i int) storedDevice { return scaleStored(i, base) }); err != nil {
		b.Fatal(err)
	}
	b.Logf("preloaded %d devices in %v", n, time.Since(base).Round(time.Millisecond))
	hcfg := hyd.daemonConfig()
	hcfg.Engine.DefaultTimeout = time.Hour
	for _, metric := range []string{"hydrate-scan-s", "hydrate-s"} {
		took, err := daemonHydrate(hcfg, n)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(took.Seconds(), metric)
	}
	if _, err := unlinkPrefix(ctx, hyd.rdb, hyd.name+":"); err != nil {
		b.Fatal(err)
	}

	// Ingest: the bare subscriber, then the daemon.
	bare := newFixture(b, 0)
	var counted atomic.Uint64
	sub, err := Subscribe(subscriberConfig(bare), func(int, mqtt.Message) { counted.Add(1) })
	if err != nil {
		b.Fatal(err)
	}
	lim := loadLimits{window: scaleWindow, within: within, split: true, raw: true}
	br := publishLimited(b, bare.scaleLoad(n), counted.Load, lim)
	sub.Close()
	b.ReportMetric(float64(br.handled)/br.elapsed.Seconds(), "bare-msgs/s")

	f := newFixture(b, n)
	cfg := f.daemonConfig()
	cfg.Postgres.URL = testenv.DatabaseURL()
	cfg.Devices.Table = f.devices
	cfg.History.Table = f.history
	cfg.Engine.DefaultTimeout = scaleTimeout(n)
	d := startBenchDaemon(b, cfg)
	testenv.Eventually(b, 30*time.Second, func() error { return getOK("http://" + d.HTTPAddr() + "/readyz") })
	url := "http://" + d.HTTPAddr()
	eng := d.Engine()
	b.StartTimer()
	r := publishLimited(b, f.scaleLoad(n), func() uint64 { return eng.Stats().Touches }, lim)
	b.StopTimer()
	b.ReportMetric(float64(r.handled)/r.elapsed.Seconds(), "msgs/s")
	b.ReportMetric(100*float64(r.handled)/float64(r.published), "delivered-%")
	waitSettled(b, eng, url, "ingest", func(st engine.Stats) bool { return st.OnlineTransitions >= r.handled })
	time.Sleep(settle)
	heap, rs := liveHeap(), rss()
	logMem(b, "online", rs)
	heapProfile(b, "online")
	b.ReportMetric(per(heap), "heap-B/device")
	b.ReportMetric(per(rs), "rss-B/device")

	// Mass expiry.
	timeout := scaleTimeout(n)
	st0, m0 := eng.Stats(), scrapeOrFail(b, url)
	at := time.Now()
	deadline := at.Add(timeout)
	touchFleet(b, eng, n, at, timeout)
	b.Logf("touched %d devices in %v", n, time.Since(at).Round(time.Millisecond))
	// The touches' own writes (last seen, rows) settle before the deadline.
	settledBy := pollUntil(b, deadline, func(m map[string]float64) bool {
		return m["presence_writeback_dirty_devices"] == 0 && eng.Stats().Queued == 0
	}, url)
	if settledBy.After(deadline) {
		b.Logf("the touches' writes had not settled by the deadline")
	}
	time.Sleep(time.Until(deadline))
	b.StartTimer()
	stop := deadline.Add(within)
	for eng.Stats().OfflineTransitions-st0.OfflineTransitions < uint64(n) {
		if time.Now().After(stop) {
			b.Fatalf("%d of %d offline transitions by %v", eng.Stats().OfflineTransitions-st0.OfflineTransitions, n, within)
		}
		time.Sleep(time.Millisecond)
	}
	b.ReportMetric(msSince(deadline), "deadline-to-engine-ms")
	// The writers are polled together, each timed when it first has
	// nothing left (one after the other, a writer done early was timed
	// when the one before it finished).
	// The events are done when the Stream has sent the N offline ones (an
	// empty queue right after the deadline only means that the engine has
	// not delivered them yet).
	const sent = `presence_events_sent_total{dest="stream"}`
	writers := []struct {
		metric string
		done   func(m map[string]float64) bool
	}{
		{"deadline-to-redis-ms", func(m map[string]float64) bool { return m[`presence_writeback_dirty_devices{sink="redis"}`] == 0 }},
		{"deadline-to-postgres-ms", func(m map[string]float64) bool { return m[`presence_writeback_dirty_devices{sink="postgres"}`] == 0 }},
		{"deadline-to-events-ms", func(m map[string]float64) bool { return m[sent]-m0[sent] >= float64(n) }},
	}
	doneAt := map[string]float64{}
	pollUntil(b, stop, func(m map[string]float64) bool {
		for _, w := range writers {
			if _, ok := doneAt[w.metric]; !ok && w.done(m) {
				doneAt[w.metric] = msSince(deadline)
			}
		}
		return len(doneAt) == len(writers)
	}, url)
	for _, w := range writers {
		ms, ok := doneAt[w.metric]
		if !ok {
			b.Fatalf("%s: not done within %v", w.metric, within)
		}
		b.ReportMetric(ms, w.metric)
	}
	b.StopTimer()
	waitSettled(b, eng, url, "expiry", func(st engine.Stats) bool {
		return st.OfflineTransitions-st0.OfflineTransitions >= uint64(n)
	})
	m1 := scrapeOrFail(b, url)
	const dropped = `presence_events_dropped_total{dest="stream"}`
	b.ReportMetric(m1[dropped]-m0[dropped], "dropped")
	// The history's queue drops its oldest past 1,048,576 transitions
	// (documented); counted over the ingest and the expiry.
	b.ReportMetric(m1["presence_writeback_history_dropped_total"], "history-dropped")
	if m1[dropped] != m0[dropped] {
		b.Errorf("the Stream dropped %.0f events", m1[dropped]-m0[dropped])
	}
	if off := countOffline(b, f, n); off != n {
		b.Errorf("%d of %d status keys say offline after the expiry", off, n)
	}
	time.Sleep(settle)
	heap, rs = liveHeap(), rss()
	logMem(b, "expired", rs)
	heapProfile(b, "expired")
	b.ReportMetric(per(heap), "expired-heap-B/device")
	b.ReportMetric(per(rs), "expired-rss-B/device")
	b.ReportMetric(redisPerDevice(b, f, n), "redis-B/device")
	b.ReportMetric(maxPause(pauses, gcPauses()).Seconds()*1000, "max-gc-pause-ms")
}

// scaleTimeout is the daemon's timeout in the ingest and expiry phases:
// longer than the ingest and its writes take (2 min, 1 min a million
// devices from 2M), so that nobody times out before the expiry, and the
// same in both, so that the expiry's touches arm no earlier wheel entry
// and leave no stale one behind.
func scaleTimeout(n int) time.Duration {
	return max(2*time.Minute, time.Duration(n/1_000_000)*time.Minute)
}

func msSince(t time.Time) float64 { return float64(time.Since(t).Milliseconds()) }

// pollUntil scrapes the daemon's metrics every 10 ms until done says so or
// stop passes, and returns when that was.
func pollUntil(b *testing.B, stop time.Time, done func(map[string]float64) bool, url string) time.Time {
	b.Helper()
	for {
		now := time.Now()
		if m, err := testenv.ScrapeMetrics(url + "/metrics"); err == nil && done(m) {
			return now
		}
		if now.After(stop) {
			return now
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// countOffline reads every device's status key, 10,000 a pipeline, and
// counts those that say offline.
func countOffline(b *testing.B, f *fixture, n int) int {
	b.Helper()
	ctx := context.Background()
	off := 0
	keys := make([]string, 0, 10_000)
	for lo := 1; lo <= n; lo += cap(keys) {
		keys = keys[:0]
		for i := lo; i < lo+cap(keys) && i <= n; i++ {
			keys = append(keys, f.prefix+"status:"+strconv.Itoa(i))
		}
		vals, err := f.rdb.MGet(ctx, keys...).Result()
		if err != nil {
			b.Fatal(err)
		}
		for _, v := range vals {
			if v == "offline" {
				off++
			}
		}
	}
	return off
}

// redisPerDevice is Redis's MEMORY USAGE of the status and last-seen keys
// of 1,000 devices spread over 1..n, per device.
func redisPerDevice(b *testing.B, f *fixture, n int) float64 {
	b.Helper()
	ctx := context.Background()
	const sample = 1000
	pipe := f.rdb.Pipeline()
	var cmds []*redis.IntCmd
	for k := range sample {
		id := strconv.Itoa(1 + k*n/sample)
		cmds = append(cmds, pipe.MemoryUsage(ctx, f.prefix+"status:"+id), pipe.MemoryUsage(ctx, f.prefix+"lastseen:"+id))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		b.Fatal(err)
	}
	var total int64
	for _, c := range cmds {
		total += c.Val()
	}
	return float64(total) / sample
}

const pauseMetric = "/sched/pauses/total/gc:seconds"

// gcPauses is the process's histogram of stop-the-world GC pauses so far.
func gcPauses() *metrics.Float64Histogram {
	s := []metrics.Sample{{Name: pauseMetric}}
	metrics.Read(s)
	return s[0].Value.Float64Histogram()
}

// maxPause is the upper bound of the highest bucket that gained pauses
// from before to after.
func maxPause(before, after *metrics.Float64Histogram) time.Duration {
	for i := len(after.Counts) - 1; i >= 0; i-- {
		if after.Counts[i] > before.Counts[i] {
			hi := after.Buckets[i+1]
			if math.IsInf(hi, 1) {
				hi = after.Buckets[i]
			}
			return time.Duration(hi * float64(time.Second))
		}
	}
	return 0
}
