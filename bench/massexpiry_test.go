package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
	"github.com/presence-dev/presence/internal/wire"
)

// massDevices is the fleet of BenchmarkMassExpiry.
const massDevices = 1_000_000

// BenchmarkMassExpiry is issue 23's mass expiry: 1,000,000 devices online,
// then all silent with the same deadline, through the real daemon with its
// defaults (Redis keys, device index, Pub/Sub and the Stream on), once with
// Redis alone and once with PostgreSQL too (devices table of 1M rows and
// the history), each beside the ceilings of its stores in the same run.
//
// The devices are made online through the engine (Engine().TouchBatch,
// 50,000 at a time; ingest is not what is measured), all at one instant
// with the default 60 s timeout, so that the 1M offline transitions come
// due together; the writers settle before the deadline (the run fails
// otherwise). Times are from the deadline to:
//   - engine: the engine's last offline transition;
//   - keys: the Redis sink's last device written
//     (presence_writeback_devices_written_total{sink="redis"});
//   - stream: the last offline event in the Stream (by its Redis entry id;
//     stream-p50 the median one);
//   - pg: the Postgres sink's last device written (with Postgres);
//   - history: the history's last row written (with Postgres).
//
// Then, in the same run, the ceilings: a plain go-redis client setting the
// N status keys again (SET ... offline EX 86400, pipelines of 1,000 over 4
// connections: the writes the daemon made, to keys that exist), the same
// client adding N Stream entries of the same fields (pipelines of 1,000,
// one connection: one stream keeps its order), and with Postgres a plain
// pgx COPY of N rows into a staging table plus one UPDATE ... FROM of the
// devices table. keys-x, stream-x and pg-x are the daemon's times over
// the ceilings'. Redis is one core: the daemon's Stream shares it with its
// keys and Pub/Sub, so plain-redis-ms is the three plain writers at once
// (keys, Stream, and a plain PUBLISH of each event's JSON on one
// connection), to the last one done, and stream-x-redis the Stream over
// it. Every status key is read back offline, and every row.
//
//	go test ./bench -run '^$' -bench MassExpiry -benchtime 1x -count 3 -timeout 60m
func BenchmarkMassExpiry(b *testing.B) {
	b.Run("stores=redis", func(b *testing.B) { benchMassExpiry(b, false) })
	b.Run("stores=redis+postgres", func(b *testing.B) { benchMassExpiry(b, true) })
}

// massTimes are one run's times from the deadline.
type massTimes struct {
	engine, keys, stream, streamP50, pg, history time.Duration
	// The ceilings, each timed from its start.
	plainKeys, plainStream, plainPG time.Duration
	// plainRedis: the three plain Redis writers (keys, Stream, Pub/Sub) at
	// once, as the daemon's are: to the last of them done.
	plainRedis time.Duration
}

func benchMassExpiry(b *testing.B, withPG bool) {
	rows := 0
	if withPG {
		rows = massDevices
	}
	f := newFixture(b, rows)
	cfg := f.daemonConfig()
	if withPG {
		cfg.Postgres.URL = testenv.DatabaseURL()
		cfg.Devices.Table = f.devices
		cfg.History.Table = f.history
	}
	d := startBenchDaemon(b, cfg)
	testenv.Eventually(b, 30*time.Second, func() error { return getOK("http://" + d.HTTPAddr() + "/readyz") })
	url := "http://" + d.HTTPAddr() // listening by now
	eng := d.Engine()
	timeout := cfg.Engine.DefaultTimeout

	var all []massTimes
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		st0 := eng.Stats()
		before := scrapeOrFail(b, url)
		at := time.Now()
		deadline := at.Add(timeout)
		touchFleet(b, eng, massDevices, at, 0) // the default timeout
		waitSettled(b, eng, url, "online", func(st engine.Stats) bool {
			return st.OnlineTransitions-st0.OnlineTransitions >= massDevices
		})
		if time.Now().After(deadline.Add(-5 * time.Second)) {
			b.Fatalf("the writers settled %v after the touches, too close to the %v deadline", time.Since(at), timeout)
		}
		mark := streamEnd(b, f.rdb, cfg.Events.Stream.Key)
		online := scrapeOrFail(b, url)
		written := func(m map[string]float64, sink string) float64 {
			return m[`presence_writeback_devices_written_total{sink="`+sink+`"}`]
		}
		histRows := func(m map[string]float64) float64 {
			return m[`presence_writeback_rows_written_total{sink="history"}`]
		}

		// From the deadline: poll the engine's stats every millisecond, the
		// metrics every 10 ms, until every writer has the fleet.
		time.Sleep(time.Until(deadline))
		b.StartTimer()
		var t massTimes
		for t.engine == 0 {
			if eng.Stats().OfflineTransitions-st0.OfflineTransitions >= massDevices {
				t.engine = time.Since(deadline)
				break
			}
			time.Sleep(time.Millisecond)
		}
		sent := `presence_events_sent_total{dest="stream"}`
		testenv.Eventually(b, 20*time.Minute, func() error {
			m := scrapeOrFail(b, url)
			since := time.Since(deadline)
			var missing []string
			done := func(d *time.Duration, what string, ok bool) {
				if *d == 0 && ok {
					*d = since
				}
				if *d == 0 {
					missing = append(missing, what)
				}
			}
			done(&t.keys, "keys", written(m, "redis")-written(online, "redis") >= massDevices)
			done(&t.stream, "stream", m[sent]-online[sent] >= massDevices)
			if withPG {
				done(&t.pg, "postgres", written(m, "postgres")-written(online, "postgres") >= massDevices)
				done(&t.history, "history", histRows(m)-histRows(online) >= massDevices)
			}
			if len(missing) > 0 {
				return fmt.Errorf("not yet written: %v", missing)
			}
			return nil
		})
		b.StopTimer()
		offline, toLast, toP50 := readOffline(b, f.rdb, cfg.Events.Stream.Key, mark, deadline)
		if offline != massDevices {
			b.Fatalf("%d offline events in the stream, want %d", offline, massDevices)
		}
		t.stream, t.streamP50 = toLast, toP50
		after := scrapeOrFail(b, url)
		if dropped := after[`presence_events_dropped_total{dest="stream"}`] - before[`presence_events_dropped_total{dest="stream"}`]; dropped != 0 {
			b.Fatalf("the stream dropped %.0f events", dropped)
		}
		checkKeysOffline(b, f, massDevices)
		if withPG {
			checkRowsOffline(b, f, massDevices)
		}

		// The ceilings, on the same machine, now quiet.
		var err error
		if t.plainKeys, err = plainSetKeys(f.rdb, f.prefix+"status:", massDevices); err != nil { // the same keys, the same value
			b.Fatal(err)
		}
		if t.plainStream, err = plainXAdd(f.rdb, f.name+":ceiling:stream", massDevices, deadline); err != nil {
			b.Fatal(err)
		}
		if withPG {
			t.plainPG = plainCopyUpdate(b, f, massDevices, deadline)
		}
		t.plainRedis = plainRedisAll(b, f, massDevices, deadline)
		b.Logf("deadline to engine %v, keys %v, stream %v (p50 %v), postgres %v, history %v; ceilings: keys %v, stream %v, keys+stream+pubsub %v, postgres %v",
			t.engine, t.keys, t.stream, t.streamP50, t.pg, t.history, t.plainKeys, t.plainStream, t.plainRedis, t.plainPG)
		all = append(all, t)
		b.StartTimer()
	}
	b.StopTimer()
	ms := func(get func(massTimes) time.Duration) float64 {
		var sum time.Duration
		for _, t := range all {
			sum += get(t)
		}
		return float64(sum.Milliseconds()) / float64(len(all))
	}
	ratio := func(num, den func(massTimes) time.Duration) float64 {
		var sum float64
		for _, t := range all {
			sum += float64(num(t)) / float64(den(t))
		}
		return sum / float64(len(all))
	}
	b.ReportMetric(ms(func(t massTimes) time.Duration { return t.engine }), "engine-ms")
	b.ReportMetric(ms(func(t massTimes) time.Duration { return t.keys }), "keys-ms")
	b.ReportMetric(ms(func(t massTimes) time.Duration { return t.stream }), "stream-ms")
	b.ReportMetric(ms(func(t massTimes) time.Duration { return t.streamP50 }), "stream-p50-ms")
	b.ReportMetric(ms(func(t massTimes) time.Duration { return t.plainKeys }), "plain-keys-ms")
	b.ReportMetric(ms(func(t massTimes) time.Duration { return t.plainStream }), "plain-stream-ms")
	b.ReportMetric(ratio(func(t massTimes) time.Duration { return t.keys }, func(t massTimes) time.Duration { return t.plainKeys }), "keys-x")
	b.ReportMetric(ratio(func(t massTimes) time.Duration { return t.stream }, func(t massTimes) time.Duration { return t.plainStream }), "stream-x")
	b.ReportMetric(ms(func(t massTimes) time.Duration { return t.plainRedis }), "plain-redis-ms")
	b.ReportMetric(ratio(func(t massTimes) time.Duration { return t.stream }, func(t massTimes) time.Duration { return t.plainRedis }), "stream-x-redis")
	if withPG {
		b.ReportMetric(ms(func(t massTimes) time.Duration { return t.pg }), "pg-ms")
		b.ReportMetric(ms(func(t massTimes) time.Duration { return t.history }), "history-ms")
		b.ReportMetric(ms(func(t massTimes) time.Duration { return t.plainPG }), "plain-pg-ms")
		b.ReportMetric(ratio(func(t massTimes) time.Duration { return t.pg }, func(t massTimes) time.Duration { return t.plainPG }), "pg-x")
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

// streamEnd is the id of the last entry of the stream key ("0-0" if empty).
func streamEnd(b *testing.B, rdb *redis.Client, key string) string {
	b.Helper()
	last, err := rdb.XRevRangeN(context.Background(), key, "+", "-", 1).Result()
	if err != nil {
		b.Fatal(err)
	}
	if len(last) == 0 {
		return "0-0"
	}
	return last[0].ID
}

// readOffline reads the stream after mark and returns the number of
// timeout offline status events, and how long after deadline Redis added
// the last and the median of them (by entry id, Redis's milliseconds).
func readOffline(b *testing.B, rdb *redis.Client, key, mark string, deadline time.Time) (n int, toLast, toP50 time.Duration) {
	b.Helper()
	var ms []int64
	eachOffline(b, rdb, key, mark, func(added int64, _ redis.XMessage) { ms = append(ms, added) })
	if len(ms) == 0 {
		return 0, 0, 0
	}
	slices.Sort(ms)
	since := func(v int64) time.Duration { return time.UnixMilli(v).Sub(deadline) }
	return len(ms), since(ms[len(ms)-1]), since(ms[len(ms)/2])
}

// eachOffline calls fn with every timeout offline status event of the
// stream after mark and the Unix millisecond Redis added it at (its entry
// id), reading 10,000 entries a call.
func eachOffline(b *testing.B, rdb *redis.Client, key, mark string, fn func(added int64, e redis.XMessage)) {
	b.Helper()
	ctx := context.Background()
	start := "(" + mark
	for {
		page, err := rdb.XRangeN(ctx, key, start, "+", 10_000).Result()
		if err != nil {
			b.Fatal(err)
		}
		for _, e := range page {
			if e.Values["type"] != "status" || e.Values["status"] != "offline" || e.Values["cause"] != "timeout" {
				continue
			}
			ms, _, _ := strings.Cut(e.ID, "-")
			added, err := strconv.ParseInt(ms, 10, 64)
			if err != nil {
				b.Fatalf("entry id %q: %v", e.ID, err)
			}
			fn(added, e)
		}
		if len(page) < 10_000 {
			return
		}
		start = "(" + page[len(page)-1].ID
	}
}

// checkKeysOffline reads the status keys of devices 1..n (pipelined MGETs)
// and fails unless every one is offline.
func checkKeysOffline(b *testing.B, f *fixture, n int) {
	b.Helper()
	ctx := context.Background()
	const chunk = 10_000
	for lo := 1; lo <= n; lo += chunk {
		keys := make([]string, 0, chunk)
		for id := lo; id < lo+chunk && id <= n; id++ {
			keys = append(keys, f.prefix+"status:"+strconv.Itoa(id))
		}
		vals, err := f.rdb.MGet(ctx, keys...).Result()
		if err != nil {
			b.Fatal(err)
		}
		for i, v := range vals {
			if v != "offline" {
				b.Fatalf("%s = %v, want offline", keys[i], v)
			}
		}
	}
}

// checkRowsOffline fails unless rows 1..n of the devices table are offline.
func checkRowsOffline(b *testing.B, f *fixture, n int) {
	b.Helper()
	var got int
	err := f.pool.QueryRow(context.Background(), "SELECT count(*) FROM "+pgx.Identifier{f.devices}.Sanitize()+
		" WHERE status = 'offline' AND id BETWEEN 1 AND $1", n).Scan(&got)
	if err != nil {
		b.Fatal(err)
	}
	if got != n {
		b.Fatalf("%d of %d rows offline", got, n)
	}
}

// plainSetKeys is the keys' ceiling: a plain go-redis client setting n keys
// prefix{i} to "offline" with the sink's TTL, in pipelines of 1,000 over 4
// connections. It returns the time taken.
func plainSetKeys(rdb *redis.Client, prefix string, n int) (time.Duration, error) {
	const conns, pipeline = 4, 1000
	ctx := context.Background()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for c := range conns {
		wg.Go(func() {
			for lo := 1 + c*pipeline; lo <= n; lo += conns * pipeline {
				pipe := rdb.Pipeline()
				for id := lo; id < lo+pipeline && id <= n; id++ {
					pipe.Set(ctx, prefix+strconv.Itoa(id), "offline", 24*time.Hour)
				}
				if _, err := pipe.Exec(ctx); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	close(errs)
	return took, <-errs
}

// plainXAdd is the Stream's ceiling: the same client adding n entries of
// an offline event's fields to key, in pipelines of 1,000 on one
// connection (one stream keeps its order). It returns the time taken.
func plainXAdd(rdb *redis.Client, key string, n int, at time.Time) (time.Duration, error) {
	const pipeline = 1000
	ctx := context.Background()
	ts := wire.FormatTime(at)
	start := time.Now()
	for lo := 1; lo <= n; lo += pipeline {
		pipe := rdb.Pipeline()
		for id := lo; id < lo+pipeline && id <= n; id++ {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: key, Values: []string{
				"type", "status", "id", strconv.Itoa(id), "status", "offline", "previous", "online",
				"at", ts, "cause", "timeout"}})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

// plainPublish is Pub/Sub's part of plainRedisAll: the same client
// PUBLISHing n offline events' JSON to channel, in pipelines of 1,000 on
// one connection.
func plainPublish(rdb *redis.Client, channel string, n int, at time.Time) error {
	const pipeline = 1000
	ctx := context.Background()
	ts := wire.FormatTime(at)
	for lo := 1; lo <= n; lo += pipeline {
		pipe := rdb.Pipeline()
		for id := lo; id < lo+pipeline && id <= n; id++ {
			pipe.Publish(ctx, channel, `{"type":"status","id":"`+strconv.Itoa(id)+
				`","status":"offline","previous":"online","at":"`+ts+`","cause":"timeout"}`)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
	}
	return nil
}

// plainRedisAll runs the three plain Redis writers at once, keys,
// Stream and Pub/Sub, and returns the time until the last is done.
func plainRedisAll(b *testing.B, f *fixture, n int, at time.Time) time.Duration {
	b.Helper()
	start := time.Now()
	var wg sync.WaitGroup
	var errs [3]error
	wg.Go(func() { _, errs[0] = plainSetKeys(f.rdb, f.prefix+"status:", n) })
	wg.Go(func() { _, errs[1] = plainXAdd(f.rdb, f.name+":ceiling:stream2", n, at) })
	wg.Go(func() { errs[2] = plainPublish(f.rdb, f.name+":ceiling:events", n, at) })
	wg.Wait()
	took := time.Since(start)
	if err := errors.Join(errs[:]...); err != nil {
		b.Fatal(err)
	}
	return took
}

// plainCopyUpdate is PostgreSQL's ceiling: a plain pgx COPY of n rows into
// a staging table and one UPDATE ... FROM of the devices table, in one
// transaction. It returns the time taken.
func plainCopyUpdate(b *testing.B, f *fixture, n int, at time.Time) time.Duration {
	b.Helper()
	ctx := context.Background()
	start := time.Now()
	tx, err := f.pool.Begin(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "CREATE TEMP TABLE ceiling_stage (id bigint NOT NULL, last_seen timestamptz, status text NOT NULL) ON COMMIT DROP"); err != nil {
		b.Fatal(err)
	}
	ls := at.Add(time.Second) // newer than the daemon's rows: every row moves
	id := 0
	src := pgx.CopyFromFunc(func() ([]any, error) {
		if id == n {
			return nil, nil
		}
		id++
		return []any{int64(id), ls, "offline"}, nil
	})
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"ceiling_stage"}, []string{"id", "last_seen", "status"}, src); err != nil {
		b.Fatal(err)
	}
	tbl := pgx.Identifier{f.devices}.Sanitize()
	tag, err := tx.Exec(ctx, "UPDATE "+tbl+" AS t SET last_seen = s.last_seen, status = s.status FROM ceiling_stage AS s WHERE t.id = s.id AND (t.last_seen IS NULL OR t.last_seen < s.last_seen)")
	if err != nil {
		b.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		b.Fatal(err)
	}
	if tag.RowsAffected() != int64(n) {
		b.Fatalf("the ceiling's UPDATE moved %d rows, want %d", tag.RowsAffected(), n)
	}
	return time.Since(start)
}
