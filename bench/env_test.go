package bench

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/ingest"
	"github.com/presence-dev/presence/internal/app/daemon"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// fixture is the real Redis and Postgres with names private to one test or
// benchmark: a Redis key prefix "{name}:device:", a topic root "{name}", a
// devices table "{name}_devices" and a history table "{name}_history".
// Everything is removed when the test ends.
type fixture struct {
	name    string
	prefix  string // Redis key prefix, the seed's "device:" made unique
	rdb     *redis.Client
	pool    *pgxpool.Pool
	devices string // devices table, rows 1..n
	history string
}

// newFixture skips under -short, and creates the devices table with rows
// for ids 1..n (like the seed's Device model: id bigint, last_seen
// timestamptz, plus a status column). n == 0 creates no table.
func newFixture(tb testing.TB, n int) *fixture {
	tb.Helper()
	if testing.Short() {
		tb.Skip("needs the real Redis, Postgres and Mosquitto; skipped with -short")
	}
	f := &fixture{name: testenv.Name(tb)}
	f.prefix = f.name + ":device:"
	f.devices, f.history = f.name+"_devices", f.name+"_history"
	opts, err := redis.ParseURL(testenv.RedisURL())
	if err != nil {
		tb.Fatal(err)
	}
	f.rdb = redis.NewClient(opts)
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		// A client of its own, patient: after a 10M run Redis takes its
		// time to unlink tens of millions of keys.
		o := *opts
		o.ReadTimeout, o.WriteTimeout = time.Minute, time.Minute
		rdb := redis.NewClient(&o)
		defer rdb.Close()
		if _, err := unlinkPrefix(ctx, rdb, f.name+":"); err != nil {
			tb.Errorf("cleanup of Redis keys %s:*: %v", f.name, err)
		}
		f.rdb.Close()
	})
	ctx := context.Background()
	if err := f.rdb.Ping(ctx).Err(); err != nil {
		tb.Fatalf("Redis at %s: %v", testenv.RedisURL(), err)
	}
	if n == 0 {
		return f
	}
	if f.pool, err = pgxpool.New(ctx, testenv.DatabaseURL()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_, err := f.pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+pgx.Identifier{f.devices}.Sanitize()+", "+pgx.Identifier{f.history}.Sanitize())
		if err != nil {
			tb.Errorf("cleanup of tables %s: %v", f.devices, err)
		}
		f.pool.Close()
	})
	tbl := pgx.Identifier{f.devices}.Sanitize()
	if _, err := f.pool.Exec(ctx, "CREATE TABLE "+tbl+" (id bigint PRIMARY KEY, name text, last_seen timestamptz, status text)"); err != nil {
		tb.Fatalf("Postgres at %s: %v", testenv.DatabaseURL(), err)
	}
	if _, err := f.pool.Exec(ctx, "INSERT INTO "+tbl+" (id, name) SELECT i, 'device ' || i FROM generate_series(1, $1::bigint) i", n); err != nil {
		tb.Fatal(err)
	}
	if _, err := f.pool.Exec(ctx, "ANALYZE "+tbl); err != nil {
		tb.Fatal(err)
	}
	return f
}

// topic is the telemetry topic of device id under the fixture's root.
func (f *fixture) topic(id int64) string { return fmt.Sprintf("%s/devices/%d/telemetry", f.name, id) }

// daemonConfig is the daemon's DefaultConfig on the fixture's names: its
// topics, share group and Redis prefix, the test broker and Redis, the HTTP
// API on a free port. No Postgres: set DatabaseURL and the tables for it.
func (f *fixture) daemonConfig() daemon.Config {
	cfg := daemon.DefaultConfig()
	cfg.Ingest.BrokerURL = testenv.MQTTURL()
	cfg.Ingest.ClientIDPrefix = f.name
	cfg.Ingest.ShareGroup = f.name
	cfg.Ingest.Topics = []ingest.Topic{
		{Pattern: f.name + "/devices/{id}/telemetry", Kind: ingest.KindTelemetry},
		{Pattern: f.name + "/devices/{id}/status", Kind: ingest.KindStatus},
	}
	cfg.Redis.URL = testenv.RedisURL()
	cfg.Keys.KeyPrefix = f.prefix
	// The run's own stream and channel (removed with the prefix's keys).
	cfg.Events.Stream.Key = f.name + ":stream"
	cfg.Events.PubSub.Channel = f.name + ":events"
	cfg.API.Addr = "127.0.0.1:0"
	return cfg
}

// unlinkPrefix removes every key starting with prefix: SCAN, then UNLINK in
// pipelines of 1000 keys. It returns how many keys it removed.
func unlinkPrefix(ctx context.Context, rdb *redis.Client, prefix string) (int, error) {
	n := 0
	it := rdb.Scan(ctx, 0, escapeGlob(prefix)+"*", 10_000).Iterator()
	batch := make([]string, 0, 1000)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if err := rdb.Unlink(ctx, batch...).Err(); err != nil {
			return err
		}
		n += len(batch)
		batch = batch[:0]
		return nil
	}
	for it.Next(ctx) {
		batch = append(batch, it.Val())
		if len(batch) == cap(batch) {
			if err := flush(); err != nil {
				return n, err
			}
		}
	}
	if err := it.Err(); err != nil {
		return n, err
	}
	return n, flush()
}

func escapeGlob(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[', ']', '\\':
			out = append(out, '\\')
		}
		out = append(out, s[i])
	}
	return string(out)
}
