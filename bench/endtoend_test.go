package bench

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/app/loadgen"
	"github.com/presence-dev/presence/internal/lifecycle"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
	"github.com/presence-dev/presence/internal/wire"
)

// The workload of BenchmarkEndToEnd, the same for every system.
const (
	e2eDevices  = 10_000  // ids 1..10000, one row each in the devices table
	e2eMessages = 300_000 // telemetry messages published per iteration (30 per device)
	e2eConns    = 2       // publisher connections, and subscriber connections of every system
	// e2ePubQoS is the QoS of the publishes and e2eSubQoS that of every
	// subscription (presence's default). MQTT delivers at the lower of the
	// two, so messages reach the subscribers at QoS 0: no broker in-flight
	// window (Mosquitto's max_inflight_messages, 20) caps a connection, and
	// whatever a subscriber cannot take is dropped by the broker and shows
	// as delivered-% below 100. See doc.go.
	e2ePubQoS = 0
	e2eSubQoS = 1
	// e2eQuiet ends an iteration once the system handled nothing for this
	// long after the publishers finished: the broker dropped the rest.
	e2eQuiet = time.Second
	// e2ePoll is how often the handled count is read; the end time is
	// known to within it.
	e2ePoll = 2 * time.Millisecond
)

// BenchmarkEndToEnd pushes the same telemetry through the same broker into
// three systems and reports how many messages each fully handled per second.
// See doc.go for what is measured and why it is fair.
//
//	go test ./bench -run '^$' -bench BenchmarkEndToEnd -benchtime 1x -count 3 -timeout 30m
func BenchmarkEndToEnd(b *testing.B) {
	b.Run("system=presence", benchPresence)
	b.Run("system=bare-subscriber", benchBare)
	b.Run("system=seed-design", benchSeed)
	b.Run("qos=1", benchQoS1)
}

// benchPresence runs the real daemon with Redis and Postgres write-behind
// and the default 2 shared-subscription connections, QoS 1. Handled means
// accepted by the engine (Stats().Touches); after each iteration it also
// waits until Redis and Postgres hold every device's last message time and
// reports how long that took (flush-ms, durable-msgs/s).
func benchPresence(b *testing.B) {
	f := newFixture(b, e2eDevices)
	cfg := f.daemonConfig()
	cfg.Postgres.URL = testenv.DatabaseURL()
	cfg.Devices.Table = f.devices
	cfg.History.Table = f.history
	if cfg.Ingest.Connections != e2eConns || cfg.Ingest.QoS != e2eSubQoS {
		b.Fatalf("daemon defaults changed (%d connections, QoS %d): update the benchmark's workload", cfg.Ingest.Connections, cfg.Ingest.QoS)
	}
	d := startBenchDaemon(b, cfg)
	testenv.Eventually(b, 30*time.Second, func() error { return getOK("http://" + d.HTTPAddr() + "/readyz") })

	eng := d.Engine()
	touches := func() uint64 { return eng.Stats().Touches }
	ids := make([]string, e2eDevices)
	for i := range ids {
		ids[i] = strconv.Itoa(i + 1)
	}
	var tot e2eTotals
	var durable time.Duration
	b.ResetTimer()
	for range b.N {
		r := publishAndWait(b, f, touches)
		tot.add(r)
		flushed := waitDurable(b, f, eng, ids)
		durable += r.elapsed + flushed.Sub(r.last)
	}
	b.StopTimer()
	tot.report(b)
	b.ReportMetric(float64(tot.handled)/durable.Seconds(), "durable-msgs/s")
	b.ReportMetric(float64((durable-tot.elapsed).Milliseconds())/float64(b.N), "flush-ms")
	// Where the undelivered messages went: never received from the broker,
	// or received and dropped by ingest (its queues full).
	m, err := testenv.ScrapeMetrics("http://" + d.HTTPAddr() + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(100*(1-m["presence_ingest_messages_received_total"]/float64(tot.published)), "broker-lost-%")
	b.ReportMetric(m[`presence_ingest_messages_dropped_total{reason="queue_full"}`], "queue-full")
	if st := eng.Stats(); st.Rejected != 0 {
		b.Errorf("engine rejected %d messages", st.Rejected)
	}
}

// benchBare is the ceiling: the same subscriptions (2 connections, one
// shared-subscription group, QoS 1) and a handler that only counts.
func benchBare(b *testing.B) {
	f := newFixture(b, 0)
	var n atomic.Uint64
	sub, err := Subscribe(subscriberConfig(f), func(int, mqtt.Message) { n.Add(1) })
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Close()
	iterate(b, func() e2eResult { return publishAndWait(b, f, n.Load) })
}

// iterate runs b.N timed iterations of one and reports their totals.
func iterate(b *testing.B, one func() e2eResult) {
	var tot e2eTotals
	b.ResetTimer()
	for range b.N {
		tot.add(one())
	}
	b.StopTimer()
	tot.report(b)
}

// benchSeed is the seed's design: the same subscriptions, each message
// handled synchronously in the paho callback by UpdateDeviceActivity (two
// Redis SETs and one Postgres UPDATE, one round trip each), and the seed's
// background monitor sweeping every device once a second meanwhile.
func benchSeed(b *testing.B) {
	f := newFixture(b, e2eDevices)
	tr, err := NewSeedTracker(f.rdb, f.pool, SeedConfig{KeyPrefix: f.prefix, Table: f.devices})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var handled, failed atomic.Uint64
	var firstErr atomic.Pointer[error]
	sub, err := Subscribe(subscriberConfig(f), func(_ int, m mqtt.Message) {
		id, err := DeviceID(m.Topic())
		if err == nil {
			err = tr.UpdateDeviceActivity(ctx, id)
		}
		if err != nil {
			failed.Add(1)
			firstErr.CompareAndSwap(nil, &err)
			return
		}
		handled.Add(1)
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Close()
	ids := make([]int64, e2eDevices)
	for i := range ids {
		ids[i] = int64(i + 1)
	}
	type monitorResult struct {
		failed int
		first  error
	}
	monitorDone := make(chan monitorResult, 1)
	go func() {
		n, err := tr.Monitor(ctx, ids, time.Second, nil)
		monitorDone <- monitorResult{n, err}
	}()
	var tot e2eTotals
	b.ResetTimer()
	for range b.N {
		tot.add(publishAndWait(b, f, handled.Load))
	}
	b.StopTimer()
	sub.Close()
	cancel()
	if m := <-monitorDone; m.failed > 0 {
		b.Errorf("seed monitor: %d failed checks, first: %v", m.failed, m.first)
	}
	if n := failed.Load(); n > 0 {
		b.Errorf("seed: %d messages failed, first: %v", n, *firstErr.Load())
	}
	tot.report(b)
}

func subscriberConfig(f *fixture) SubscriberConfig {
	return SubscriberConfig{
		BrokerURL:   testenv.MQTTURL(),
		ClientID:    f.name,
		Filter:      f.name + "/devices/+/telemetry",
		ShareGroup:  f.name,
		Connections: e2eConns,
		QoS:         e2eSubQoS,
	}
}

// e2eResult is one iteration: published by the publishers, handled by the
// system, and the wall time from the first publish to the last message
// handled (last).
type e2eResult struct {
	published, handled uint64
	elapsed            time.Duration
	pubElapsed         time.Duration // first publish to last publish acknowledged
	last               time.Time
}

type e2eTotals struct {
	published, handled  uint64
	elapsed, pubElapsed time.Duration
}

func (t *e2eTotals) add(r e2eResult) {
	t.published += r.published
	t.handled += r.handled
	t.elapsed += r.elapsed
	t.pubElapsed += r.pubElapsed
}

func (t *e2eTotals) report(b *testing.B) {
	b.ReportMetric(float64(t.handled)/t.elapsed.Seconds(), "msgs/s")
	b.ReportMetric(100*float64(t.handled)/float64(t.published), "delivered-%")
	b.ReportMetric(float64(t.published)/t.pubElapsed.Seconds(), "pub-msgs/s")
}

// publishAndWait publishes e2eMessages messages for e2eDevices devices as
// fast as the broker acknowledges them, then waits until handled (a
// cumulative counter) has grown by as many, or has not moved for e2eQuiet:
// what the broker dropped is never handled, so it is not credited.
func publishAndWait(b *testing.B, f *fixture, handled func() uint64) e2eResult {
	b.Helper()
	cfg := f.load()
	cfg.Devices = e2eDevices
	cfg.Rate = loadgen.MaxRate // no pacing: the in-flight window and the broker's PUBACKs set the pace
	cfg.Count = e2eMessages
	cfg.Conns = e2eConns
	cfg.QoS = e2ePubQoS
	return publishLoad(b, cfg, handled)
}

// load is the publishers' configuration for f's topic root; callers set
// the workload.
func (f *fixture) load() loadgen.Config {
	cfg := loadgen.DefaultConfig()
	cfg.Broker = testenv.MQTTURL()
	cfg.ClientID = f.name + "-pub"
	cfg.Topic = f.name + "/devices/{id}/telemetry"
	cfg.Inflight = 1000
	cfg.Progress = 0
	return cfg
}

// publishLoad runs the publishers with cfg, then waits as publishAndWait
// describes.
func publishLoad(b *testing.B, cfg loadgen.Config, handled func() uint64) e2eResult {
	return publishLimited(b, cfg, handled, loadLimits{})
}

// loadLimits change how publishLimited runs the publishers.
type loadLimits struct {
	// window > 0 closes the loop: a publish waits while window messages
	// are published and not yet handled, so the broker never holds more
	// than that for the system and drops nothing; the rate is then the
	// system's own.
	window uint64
	// within bounds the run (5 minutes when zero).
	within time.Duration
	// raw publishes with rawDialer (QoS 0) instead of paho: the load
	// generator then costs the machine a syscall per millisecond, not one
	// per message.
	raw bool
	// split gives each of the Conns connections a runner of its own over
	// its own share of the devices: with Count a multiple of Devices every
	// device then gets exactly Count/Devices messages (one runner's
	// connections share Count, so a faster one starts a second round
	// while a slower one has devices left).
	split bool
}

// runners are the loadgen configurations that publish cfg under lim.
func (lim loadLimits) runners(cfg loadgen.Config) []loadgen.Config {
	if !lim.split || cfg.Conns == 1 {
		return []loadgen.Config{cfg}
	}
	var out []loadgen.Config
	per := cfg.Count / uint64(cfg.Devices)
	for c, lo := 0, 0; c < cfg.Conns; c++ {
		hi := cfg.Devices * (c + 1) / cfg.Conns
		r := cfg
		r.Conns, r.Devices, r.IDStart = 1, hi-lo, cfg.IDStart+uint64(lo)
		r.Count = per * uint64(hi-lo)
		r.ClientID = cfg.ClientID + "-" + strconv.Itoa(c)
		out = append(out, r)
		lo = hi
	}
	return out
}

// publishLimited is publishLoad within lim.
func publishLimited(b *testing.B, cfg loadgen.Config, handled func() uint64, lim loadLimits) e2eResult {
	b.Helper()
	var first atomic.Int64 // unix ns of the first publish
	base := handled()
	var win *window
	if lim.window > 0 {
		win = startWindow(lim.window, func() uint64 { return handled() - base })
		defer win.stop()
	}
	dial := loadgen.PahoDialer(slog.New(slog.DiscardHandler))
	if lim.raw {
		dial = rawDialer()
	}
	opts := loadgen.Options{Dial: func(ctx context.Context, c loadgen.Config, conn int) (loadgen.Publisher, error) {
		p, err := dial(ctx, c, conn)
		if err != nil {
			return nil, err
		}
		return &firstPublish{Publisher: p, first: &first, win: win}, nil
	}}
	var runners []*loadgen.Runner
	for _, c := range lim.runners(cfg) {
		r, err := loadgen.New(c, opts)
		if err != nil {
			b.Fatal(err)
		}
		runners = append(runners, r)
	}
	within := cmp.Or(lim.within, 5*time.Minute)
	type runResult struct {
		s   loadgen.Summary
		end time.Time
		err error
	}
	pubDone := make(chan runResult, 1)
	go func() {
		var mu sync.Mutex
		var res runResult
		var wg sync.WaitGroup
		for _, r := range runners {
			wg.Go(func() {
				s, err := r.Run(context.Background())
				mu.Lock()
				defer mu.Unlock()
				res.s.Sent += s.Sent
				res.s.Errors += s.Errors
				res.err = cmp.Or(res.err, err)
			})
		}
		wg.Wait()
		res.end = time.Now()
		pubDone <- res
	}()
	var pub *runResult
	last, lastChange := uint64(0), time.Now()
	deadline := time.Now().Add(within)
	for {
		now := time.Now()
		if n := handled() - base; n != last {
			last, lastChange = n, now
		}
		if pub == nil {
			select {
			case res := <-pubDone:
				if res.err != nil {
					b.Fatal(res.err)
				}
				pub = &res
			default:
			}
		}
		if pub != nil && (last >= pub.s.Sent || now.Sub(lastChange) > e2eQuiet && now.Sub(pub.end) > e2eQuiet) {
			break
		}
		if now.After(deadline) {
			b.Fatalf("handled %d messages, still going after %v", last, within)
		}
		time.Sleep(e2ePoll)
	}
	if pub.s.Errors > 0 {
		b.Errorf("publishers: %d errors", pub.s.Errors)
	}
	start := time.Unix(0, first.Load())
	return e2eResult{
		published:  pub.s.Sent,
		handled:    last,
		elapsed:    lastChange.Sub(start),
		pubElapsed: pub.end.Sub(start),
		last:       lastChange,
	}
}

// firstPublish records the time of the first publish of a run, and waits
// for room in win if there is one.
type firstPublish struct {
	loadgen.Publisher
	first *atomic.Int64
	win   *window
}

func (p *firstPublish) Publish(topic string, qos byte, payload []byte) loadgen.Pending {
	if p.win != nil {
		p.win.wait()
	}
	if p.first.Load() == 0 {
		p.first.CompareAndSwap(0, time.Now().UnixNano())
	}
	return p.Publisher.Publish(topic, qos, payload)
}

// window is loadLimits.window: the publishes so far against the handled
// count, which a goroutine reads every windowPoll (reading it can cost,
// the engine's Stats takes every shard's lock).
type window struct {
	size          uint64
	sent, handled atomic.Uint64
	stop          context.CancelFunc
}

const windowPoll = 200 * time.Microsecond

func startWindow(size uint64, handled func() uint64) *window {
	ctx, cancel := context.WithCancel(context.Background())
	w := &window{size: size, stop: cancel}
	go lifecycle.Every(ctx, windowPoll, func() { w.handled.Store(handled()) })
	return w
}

// wait takes a place in the window, waiting while it is full.
func (w *window) wait() {
	n := w.sent.Add(1)
	for n > w.handled.Load()+w.size {
		time.Sleep(windowPoll / 2)
	}
}

// waitDurable waits until Redis and Postgres hold, for every device, the
// last-seen time the engine has, and returns when it saw that. It checks what
// a consumer reads: the Redis last-seen and status keys and devices.last_seen.
func waitDurable(b *testing.B, f *fixture, eng *engine.Engine, ids []string) time.Time {
	b.Helper()
	states := eng.Devices(ids, nil)
	want := make([]string, len(ids))
	pgIDs := make([]int64, len(ids))
	pgWant := make([]time.Time, len(ids))
	for i, s := range states {
		if s.Status != engine.StatusOnline {
			b.Fatalf("device %s is %v after the run", s.ID, s.Status)
		}
		want[i] = wire.FormatTime(s.LastSeen)
		pgIDs[i], _ = strconv.ParseInt(s.ID, 10, 64)
		pgWant[i] = s.LastSeen.Truncate(time.Microsecond)
	}
	ctx := context.Background()
	query := "SELECT count(*) FROM " + pgx.Identifier{f.devices}.Sanitize() +
		" d JOIN unnest($1::bigint[], $2::timestamptz[]) w(id, ls) ON d.id = w.id WHERE d.last_seen >= w.ls"
	redisOK := func() error {
		pipe := f.rdb.Pipeline()
		lastSeen := make([]*redis.StringCmd, len(ids))
		status := make([]*redis.StringCmd, len(ids))
		for i, id := range ids {
			lastSeen[i] = pipe.Get(ctx, f.prefix+"lastseen:"+id)
			status[i] = pipe.Get(ctx, f.prefix+"status:"+id)
		}
		_, _ = pipe.Exec(ctx)
		for i := range ids {
			if v, _ := lastSeen[i].Result(); v < want[i] {
				return fmt.Errorf("device %s: Redis last seen %q, engine %q", ids[i], v, want[i])
			}
			if v, _ := status[i].Result(); v != "online" {
				return fmt.Errorf("device %s: Redis status %q", ids[i], v)
			}
		}
		return nil
	}
	pgOK := func() error {
		var n int
		if err := f.pool.QueryRow(ctx, query, pgIDs, pgWant).Scan(&n); err != nil {
			return err
		}
		if n != len(ids) {
			return fmt.Errorf("Postgres: %d of %d devices up to date", n, len(ids))
		}
		return nil
	}
	var at time.Time
	testenv.Eventually(b, 30*time.Second, func() error {
		if err := redisOK(); err != nil {
			return err
		}
		if err := pgOK(); err != nil {
			return err
		}
		at = time.Now()
		return nil
	})
	return at
}

func getOK(url string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", url, resp.StatusCode, body)
	}
	return nil
}
