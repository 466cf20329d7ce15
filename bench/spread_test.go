package bench

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/internal/app/loadgen"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
	"github.com/presence-dev/presence/internal/wire"
)

// Spread expiry: issue 23's overlapping online and offline events.
const (
	spreadDevices = 1_000_000
	spreadRate    = 40_000           // msgs/s: the fleet arrives over 25 s
	spreadTimeout = 20 * time.Second // shorter than the arrival window
)

// BenchmarkSpreadExpiry is a fleet whose deadlines spread over its
// reporting interval while it is still arriving: 1,000,000 devices each
// publish one telemetry message through Mosquitto (QoS 0, 4 connections,
// 40,000 msgs/s, so over 25 s), the daemon (defaults, Redis keys, index,
// Pub/Sub and the Stream on) with a 20 s timeout; each device goes offline
// 20 s after its message, so for 5 s online and offline events share the
// Stream, and then the offline events come at the arrival rate. Measured
// per offline event, from the Stream: the lag of its entry (Redis's
// millisecond clock, the entry id) after its deadline (the event's "at"),
// as p50, p90, p99 and max, with the Stream's drops (must be 0).
//
//	go test ./bench -run '^$' -bench SpreadExpiry -benchtime 1x -count 3 -timeout 30m
func BenchmarkSpreadExpiry(b *testing.B) {
	f := newFixture(b, 0)
	cfg := f.daemonConfig()
	cfg.Engine.DefaultTimeout = spreadTimeout
	d := startBenchDaemon(b, cfg)
	testenv.Eventually(b, 30*time.Second, func() error { return getOK("http://" + d.HTTPAddr() + "/readyz") })
	url := "http://" + d.HTTPAddr()
	eng := d.Engine()
	const dropped = `presence_events_dropped_total{dest="stream"}`

	var p50, p90, p99, worst, events, drops float64
	b.ResetTimer()
	for n := range b.N {
		b.StopTimer()
		mark := streamEnd(b, f.rdb, cfg.Events.Stream.Key)
		before := scrapeOrFail(b, url)
		st0 := eng.Stats()
		lc := f.load()
		lc.Devices, lc.IDStart = spreadDevices, uint64(1+n*spreadDevices)
		lc.Rate, lc.Count, lc.Conns, lc.QoS = spreadRate, spreadDevices, 4, 0
		r, err := loadgen.New(lc, loadgen.Options{Dial: rawDialer()})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		sum, err := r.Run(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		arrived := func() uint64 { return eng.Stats().OnlineTransitions - st0.OnlineTransitions }
		// Every device that arrived goes offline; then the stream has them.
		testenv.Eventually(b, 5*time.Minute, func() error {
			on, off := arrived(), eng.Stats().OfflineTransitions-st0.OfflineTransitions
			if on == 0 || off < on {
				return fmt.Errorf("%d of %d arrived devices offline", off, on)
			}
			m := scrapeOrFail(b, url)
			if q := m["presence_events_queued"]; q > 0 {
				return fmt.Errorf("%.0f events queued", q)
			}
			return nil
		})
		b.StopTimer()
		lags := offlineLags(b, f.rdb, cfg.Events.Stream.Key, mark)
		if uint64(len(lags)) != arrived() {
			b.Fatalf("%d offline events in the stream for %d devices (%d published)", len(lags), arrived(), sum.Sent)
		}
		at := func(q float64) float64 { return float64(lags[int(q*float64(len(lags)-1))].Milliseconds()) }
		p50, p90, p99, worst = p50+at(0.5), p90+at(0.9), p99+at(0.99), worst+at(1)
		events += float64(len(lags))
		after := scrapeOrFail(b, url)
		drops += after[dropped] - before[dropped]
		b.Logf("run %d: %d devices (%d published), offline lag p50 %.0f ms, p90 %.0f, p99 %.0f, max %.0f, dropped %.0f",
			n, len(lags), sum.Sent, at(0.5), at(0.9), at(0.99), at(1), after[dropped]-before[dropped])
		b.StartTimer()
	}
	b.StopTimer()
	per := func(v float64) float64 { return v / float64(b.N) }
	b.ReportMetric(per(events), "offline-events")
	b.ReportMetric(per(p50), "lag-p50-ms")
	b.ReportMetric(per(p90), "lag-p90-ms")
	b.ReportMetric(per(p99), "lag-p99-ms")
	b.ReportMetric(per(worst), "lag-max-ms")
	b.ReportMetric(per(drops), "dropped")
	if drops != 0 {
		b.Errorf("the stream dropped %.0f events", drops)
	}
}

// offlineLags reads the stream after mark and returns, sorted, how long
// after its deadline (its "at") Redis added each timeout offline event.
func offlineLags(b *testing.B, rdb *redis.Client, key, mark string) []time.Duration {
	b.Helper()
	var lags []time.Duration
	eachOffline(b, rdb, key, mark, func(added int64, e redis.XMessage) {
		s, _ := e.Values["at"].(string)
		deadline, err := wire.ParseTime(s)
		if err != nil {
			b.Fatalf("entry %s: at %q: %v", e.ID, s, err)
		}
		lags = append(lags, time.UnixMilli(added).Sub(deadline.Truncate(time.Millisecond)))
	})
	slices.Sort(lags)
	return lags
}
