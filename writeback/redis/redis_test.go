package writeback

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

func newRedisHarness(t *testing.T, src Source, o harnessOpts) harness {
	t.Helper()
	return redisHarness(t, src, o, false)
}

// newGuardedRedisHarness is the sink as a cluster node runs it.
func newGuardedRedisHarness(t *testing.T, src Source, o harnessOpts) harness {
	t.Helper()
	return redisHarness(t, src, o, true)
}

func redisHarness(t *testing.T, src Source, o harnessOpts, guarded bool) harness {
	t.Helper()
	direct := newRedisClient(t, "")
	prefix := testenv.Name(t) + ":"
	cleanupRedisPrefix(t, direct, prefix)
	client := direct
	var px *testenv.Proxy
	if o.viaProxy {
		px = testenv.NewProxy(t, direct.Options().Addr)
		client = newRedisClient(t, px.Addr())
	}
	cfg := DefaultRedisConfig()
	cfg.KeyPrefix = prefix
	cfg.Flush = testFlushConfig(t, cfg.Flush, o)
	cfg.Guarded = guarded
	sink, err := NewRedis(client, src, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return harness{sink: sink, label: "redis", hasStatus: true, monotonic: guarded, proxy: px}
}

func TestRedisKeyLayoutAndTTL(t *testing.T) {
	client := newRedisClient(t, "")
	prefix := testenv.Name(t) + ":"
	cleanupRedisPrefix(t, client, prefix)
	src := newFakeSource()
	cfg := DefaultRedisConfig()
	cfg.KeyPrefix = prefix
	cfg.Flush.Logger = testLogger(t)
	sink, err := NewRedis(client, src, cfg)
	if err != nil {
		t.Fatal(err)
	}
	src.Set(engine.DeviceState{ID: "42", Status: engine.StatusOnline, LastSeen: t0},
		engine.DeviceState{ID: "43", Status: engine.StatusOffline}) // no last seen
	ctx := context.Background()
	if err := sink.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	check := func(key, want string) {
		t.Helper()
		got, err := client.Get(ctx, key).Result()
		if err != nil || got != want {
			t.Fatalf("GET %s = %q, %v; want %q", key, got, err, want)
		}
		ttl, err := client.TTL(ctx, key).Result()
		if err != nil || ttl < 24*time.Hour-time.Minute || ttl > 24*time.Hour {
			t.Fatalf("TTL %s = %v, %v; want 24h", key, ttl, err)
		}
	}
	check(prefix+"status:42", "online")
	check(prefix+"lastseen:42", "2025-12-14T10:30:45.123456+00:00")
	check(prefix+"status:43", "offline")
	if n, _ := client.Exists(ctx, prefix+"lastseen:43").Result(); n != 0 {
		t.Fatal("lastseen written for a zero LastSeen")
	}
	if got := counter(sink.Metrics(), "presence_writeback_keys_written_total", "redis"); got != 3 {
		t.Fatalf("keys_written_total = %d, want 3", got)
	}
	if sink.StatusKey("9") != prefix+"status:9" || sink.LastSeenKey("9") != prefix+"lastseen:9" {
		t.Fatal("key helpers disagree with the layout")
	}
}

func TestRedisScan(t *testing.T) {
	client := newRedisClient(t, "")
	prefix := testenv.Name(t) + ":"
	cleanupRedisPrefix(t, client, prefix)
	src := newFakeSource()
	cfg := DefaultRedisConfig()
	cfg.KeyPrefix = prefix
	sink, err := NewRedis(client, src, cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]engine.DeviceState{}
	for i := range 12_000 { // several SCAN batches, read concurrently
		d := dev(i, engine.Status(1+i%2), t0.Add(time.Duration(i)*time.Second))
		want[d.ID] = d
		src.Set(d)
	}
	ctx := context.Background()
	if err := sink.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got := map[string]engine.DeviceState{}
	err = sink.Scan(ctx, func(s engine.DeviceState) error { got[s.ID] = s; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("scanned %d devices, want %d", len(got), len(want))
	}
	for id, w := range want {
		if g := got[id]; g.Status != w.Status || !g.LastSeen.Equal(w.LastSeen.Truncate(time.Microsecond)) {
			t.Fatalf("device %s: got %+v, want %+v", id, g, w)
		}
	}
	stop := errors.New("stop")
	if err := sink.Scan(ctx, func(engine.DeviceState) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("Scan error = %v, want the callback's", err)
	}
}

func TestRedisOptionsFromEnv(t *testing.T) {
	env := func(kv ...string) func(string) string {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return func(k string) string { return m[k] }
	}
	check := func(name string, getenv func(string) string, addr string, db int, pass string, tls bool) {
		t.Run(name, func(t *testing.T) {
			o, err := RedisOptionsFromEnv(getenv)
			if err != nil {
				t.Fatal(err)
			}
			if o.Addr != addr || o.DB != db || o.Password != pass || (o.TLSConfig != nil) != tls {
				t.Fatalf("got addr %q db %d password %q tls %v", o.Addr, o.DB, o.Password, o.TLSConfig != nil)
			}
		})
	}
	check("defaults", env(), "localhost:6379", 0, "", false)
	check("seed vars", env("REDIS_HOST", "redis.local", "REDIS_PORT", "6380", "REDIS_DB", "3", "REDIS_PASSWORD", "s3cret"), "redis.local:6380", 3, "s3cret", false)
	check("ipv6 host", env("REDIS_HOST", "::1"), "[::1]:6379", 0, "", false)
	check("seed vars with TLS", env("REDIS_HOST", "r", "REDIS_TLS", "true"), "r:6379", 0, "", true)
	check("url wins", env("REDIS_URL", "redis://:pw@u.local:7000/5", "REDIS_HOST", "ignored", "REDIS_DB", "9"), "u.local:7000", 5, "pw", false)
	check("rediss", env("REDIS_URL", "rediss://user:pw@secure:6390/1"), "secure:6390", 1, "pw", true)

	for name, getenv := range map[string]func(string) string{
		"bad url":  env("REDIS_URL", "http://x"),
		"bad port": env("REDIS_PORT", "sixty"),
		"bad db":   env("REDIS_DB", "-1"),
		"bad tls":  env("REDIS_TLS", "maybe"),
	} {
		if _, err := RedisOptionsFromEnv(getenv); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestRedisConfigValidate(t *testing.T) {
	if err := DefaultRedisConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*RedisConfig){
		"ttl zero":       func(c *RedisConfig) { c.TTL = 0 },
		"ttl fraction":   func(c *RedisConfig) { c.TTL = 1500 * time.Millisecond },
		"no interval":    func(c *RedisConfig) { c.Flush.Interval = 0 },
		"no batch":       func(c *RedisConfig) { c.Flush.BatchSize = 0 },
		"concurrency":    func(c *RedisConfig) { c.Flush.Concurrency = 0 },
		"backoff order":  func(c *RedisConfig) { c.Flush.MaxBackoff = c.Flush.MinBackoff / 2 },
		"write timeout":  func(c *RedisConfig) { c.Flush.WriteTimeout = 0 },
		"negative flush": func(c *RedisConfig) { c.Flush.FlushAt = -1 },
	} {
		c := DefaultRedisConfig()
		mod(&c)
		if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "redis") {
			t.Errorf("%s: Validate = %v", name, err)
		}
	}
	if _, err := NewRedis(nil, newFakeSource(), DefaultRedisConfig()); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("nil client: %v", err)
	}
	var _ redis.UniversalClient = (*redis.ClusterClient)(nil)
}

// A stale owner cannot move last-seen back nor overwrite the status a newer
// message set; a newer or equal time writes.
func TestRedisGuardedWrites(t *testing.T) {
	src := newFakeSource()
	h := newGuardedRedisHarness(t, src, harnessOpts{})
	sink := h.sink.(*Redis)
	ctx := context.Background()
	write := func(st engine.Status, at time.Time) {
		t.Helper()
		src.Set(engine.DeviceState{ID: "7", Status: st, LastSeen: at})
		if err := sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	check := func(st engine.Status, at time.Time) {
		t.Helper()
		got, err := sink.ReadStates(ctx, []string{"7"})
		if err != nil || got[0].Status != st || !got[0].LastSeen.Equal(at.Truncate(time.Microsecond)) {
			t.Fatalf("stored %+v (%v), want %v at %v", got, err, st, at)
		}
	}
	write(engine.StatusOnline, t0.Add(time.Minute))
	write(engine.StatusOffline, t0) // the stale owner: older message time
	check(engine.StatusOnline, t0.Add(time.Minute))
	write(engine.StatusOffline, t0.Add(time.Minute)) // a timeout: same time
	check(engine.StatusOffline, t0.Add(time.Minute))
	write(engine.StatusOnline, t0.Add(time.Minute)) // a stale owner that missed the timeout
	check(engine.StatusOffline, t0.Add(time.Minute))
	write(engine.StatusOnline, t0.Add(2*time.Minute))
	check(engine.StatusOnline, t0.Add(2*time.Minute))
	// After a Redis script flush (a restart) the script is loaded again.
	if err := sink.client.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	write(engine.StatusOffline, t0.Add(3*time.Minute))
	check(engine.StatusOffline, t0.Add(3*time.Minute))
}
