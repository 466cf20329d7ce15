package redis

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/envflag"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
	"github.com/presence-dev/presence/internal/wire"
	"github.com/presence-dev/presence/writeback"
	"github.com/presence-dev/presence/writeback/writebacktest"
)

func newRedisHarness(t *testing.T, src writeback.Source, o writebacktest.Opts) writebacktest.Harness {
	t.Helper()
	return redisHarness(t, src, o, false)
}

// newGuardedRedisHarness is the sink as a cluster node runs it.
func newGuardedRedisHarness(t *testing.T, src writeback.Source, o writebacktest.Opts) writebacktest.Harness {
	t.Helper()
	return redisHarness(t, src, o, true)
}

func redisHarness(t *testing.T, src writeback.Source, o writebacktest.Opts, guarded bool) writebacktest.Harness {
	t.Helper()
	direct := testenv.RedisClient(t, "")
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, direct, prefix)
	client := direct
	var px *testenv.Proxy
	if o.ViaProxy {
		px = testenv.NewProxy(t, direct.Options().Addr)
		client = testenv.RedisClient(t, px.Addr())
	}
	cfg := DefaultConfig()
	cfg.KeyPrefix = prefix
	cfg.Flush = writebacktest.FlushConfig(t, cfg.Flush, o)
	cfg.Guarded = guarded
	if guarded {
		// Guarded keys expire at LastSeen + TTL, and the shared tests write
		// times around writebacktest.T0, in 2025.
		cfg.TTL = longTTL
	}
	sink, err := New(client, src, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return writebacktest.Harness{Sink: sink, Label: "redis", HasStatus: true, Monotonic: guarded, Proxy: px}
}

// longTTL outlives writebacktest.T0 (2025) by a year whenever the tests
// run: a guarded write of a state seen at T0 with the default TTL would
// expire at once.
var longTTL = (time.Since(writebacktest.T0) + 365*24*time.Hour).Truncate(time.Second)

// testSink is a sink with the test's own key prefix over a fake source;
// mod adjusts its config.
func testSink(t *testing.T, mod func(prefix string, cfg *Config)) (*Sink, *writebacktest.FakeSource, goredis.UniversalClient, string) {
	t.Helper()
	client := testenv.RedisClient(t, "")
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, client, prefix)
	src := writebacktest.NewFakeSource()
	cfg := DefaultConfig()
	cfg.KeyPrefix = prefix
	cfg.Flush.Logger = testenv.Logger(t)
	if mod != nil {
		mod(prefix, &cfg)
	}
	sink, err := New(client, src, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return sink, src, client, prefix
}

func TestRedisKeyLayoutAndTTL(t *testing.T) {
	sink, src, client, prefix := testSink(t, nil)
	src.Set(engine.DeviceState{ID: "42", Status: engine.StatusOnline, LastSeen: writebacktest.T0},
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
	if got := writebacktest.Counter(sink.Metrics(), "presence_writeback_keys_written_total", "redis"); got != 3 {
		t.Fatalf("keys_written_total = %d, want 3", got)
	}
	if sink.StatusKey("9") != prefix+"status:9" || sink.LastSeenKey("9") != prefix+"lastseen:9" {
		t.Fatal("key helpers disagree with the layout")
	}
}

// A change of status alone (a timeout) rewrites the status key alone: one
// command, expiring with the last-seen key, which holds the same last-seen
// time; with the last-seen key (nearly) expired, both keys.
func TestRedisStatusOnly(t *testing.T) {
	sink, src, client, prefix := testSink(t, nil)
	ctx := context.Background()
	seen := time.Now().Add(-time.Hour)
	src.Set(engine.DeviceState{ID: "42", Status: engine.StatusOnline, LastSeen: seen})
	if err := sink.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	client.Set(ctx, prefix+"lastseen:42", "marker", time.Hour)
	src.Set(engine.DeviceState{ID: "42", Status: engine.StatusOffline, LastSeen: seen, StatusOnly: true})
	if err := sink.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := client.Get(ctx, prefix+"status:42").Val(); got != "offline" {
		t.Fatalf("status %q after a timeout", got)
	}
	if got := client.Get(ctx, prefix+"lastseen:42").Val(); got != "marker" {
		t.Fatalf("last-seen rewritten (%q) for a change of status alone", got)
	}
	// It expires when the last-seen key written an hour ago does: in 23 h.
	if ttl := client.PTTL(ctx, prefix+"status:42").Val(); ttl < 23*time.Hour-time.Minute || ttl > 23*time.Hour {
		t.Fatalf("status TTL %v, want the last-seen key's 23 h", ttl)
	}
	if got := writebacktest.Counter(sink.Metrics(), "presence_writeback_keys_written_total", "redis"); got != 3 {
		t.Fatalf("keys_written_total = %d, want 3 (2 + 1)", got)
	}

	// A timeout longer than the TTL: the last-seen key is gone by the time
	// the status changes, and both are written again, for a full TTL.
	old := time.Now().Add(-25 * time.Hour)
	src.Set(engine.DeviceState{ID: "43", Status: engine.StatusOffline, LastSeen: old, StatusOnly: true})
	if err := sink.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{prefix + "status:43", prefix + "lastseen:43"} {
		if ttl := client.TTL(ctx, key).Val(); ttl < 24*time.Hour-time.Minute {
			t.Fatalf("%s TTL %v, want 24 h", key, ttl)
		}
	}
}

func TestClientConfig(t *testing.T) {
	parse := func(args []string, env map[string]string) (ClientConfig, error) {
		c := DefaultClientConfig()
		s := envflag.New("x")
		c.RegisterFlags(s)
		err := s.Parse(args, func(k string) string { return env[k] })
		return c, err
	}
	check := func(name string, env map[string]string, addr string, db int, pass string, tls bool) {
		t.Run(name, func(t *testing.T) {
			c, err := parse(nil, env)
			if err != nil {
				t.Fatal(err)
			}
			o, err := c.options()
			if err != nil {
				t.Fatal(err)
			}
			if o.Addr != addr || o.DB != db || o.Password != pass || (o.TLSConfig != nil) != tls {
				t.Fatalf("got addr %q db %d password %q tls %v", o.Addr, o.DB, o.Password, o.TLSConfig != nil)
			}
			if !c.Enabled() && len(env) > 0 {
				t.Fatal("not enabled")
			}
		})
	}
	check("defaults", map[string]string{}, "localhost:6379", 0, "", false)
	check("seed vars", map[string]string{"REDIS_HOST": "redis.local", "REDIS_PORT": "6380", "REDIS_DB": "3", "REDIS_PASSWORD": "s3cret"}, "redis.local:6380", 3, "s3cret", false)
	check("ipv6 host", map[string]string{"REDIS_HOST": "::1"}, "[::1]:6379", 0, "", false)
	check("bracketed ipv6 host", map[string]string{"REDIS_HOST": "[::1]"}, "[::1]:6379", 0, "", false)
	check("seed vars with TLS", map[string]string{"REDIS_HOST": "r", "REDIS_TLS": "yes"}, "r:6379", 0, "", true)
	check("url wins", map[string]string{"REDIS_URL": "redis://:pw@u.local:7000/5", "REDIS_HOST": "ignored", "REDIS_DB": "9"}, "u.local:7000", 5, "pw", false)
	check("rediss", map[string]string{"REDIS_URL": "rediss://user:pw@secure:6390/1"}, "secure:6390", 1, "pw", true)
	if c, _ := parse(nil, nil); c.Enabled() {
		t.Fatal("enabled with nothing set")
	}

	// Bad values are refused, named, and a password is never echoed.
	for name, env := range map[string]map[string]string{
		"bad scheme": {"REDIS_URL": "http://x"},
		"bad url":    {"REDIS_URL": "redis://user:hunter2@host:port/0"},
		"bad port":   {"REDIS_HOST": "r", "REDIS_PORT": "70000"},
		"port text":  {"REDIS_HOST": "r", "REDIS_PORT": "tcp://10.0.0.1:6379"},
		"bad db":     {"REDIS_HOST": "r", "REDIS_DB": "-1"},
		"bad addrs":  {"REDIS_ADDRS": "r1"},
		"sentinel":   {"REDIS_HOST": "r", "REDIS_MASTER_NAME": "m"},
	} {
		c, err := parse(nil, env)
		if err == nil {
			err = c.Validate()
		}
		if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "REDIS_") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := parse(nil, map[string]string{"REDIS_TLS": "maybe"}); err == nil {
		t.Error("REDIS_TLS=maybe accepted")
	}
	// Kubernetes sets REDIS_PORT=tcp://... beside a Service named redis: it
	// is read only when the host and port are used.
	for _, env := range []map[string]string{
		{"REDIS_PORT": "tcp://10.0.0.1:6379"},
		{"REDIS_PORT": "tcp://10.0.0.1:6379", "REDIS_URL": "redis://u.local:6379/0"},
	} {
		c, err := parse(nil, env)
		if err == nil && c.Enabled() {
			err = c.Validate()
		}
		if err != nil {
			t.Errorf("%v: %v", env, err)
		}
	}
}

// Addrs make a Cluster client, or with a master name a Sentinel-backed one.
func TestClientConfigKinds(t *testing.T) {
	check := func(c ClientConfig, cluster bool) {
		t.Helper()
		cl, err := c.NewClient()
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		if _, ok := cl.(*goredis.ClusterClient); ok != cluster {
			t.Fatalf("%+v: %T", c, cl)
		}
	}
	check(ClientConfig{Host: "r"}, false)
	check(ClientConfig{Addrs: []string{"r1:7000", "r2:7000"}, Password: "pw"}, true)
	check(ClientConfig{Addrs: []string{"s1:26379"}, MasterName: "mymaster"}, false)

	// With TLS, each Cluster node (and a Sentinel's primary) is checked
	// against the host of its own address, not REDIS_HOST: no server
	// name is fixed, so crypto/tls takes it from the address dialed.
	for _, c := range []ClientConfig{
		{Addrs: []string{"r1.example:7000", "r2.example:7000"}, TLS: true, Host: "redis.example"},
		{Addrs: []string{"s1.example:26379"}, MasterName: "m", TLS: true},
	} {
		cl, err := c.NewClient()
		if err != nil {
			t.Fatal(err)
		}
		var tc *tls.Config
		switch cl := cl.(type) {
		case *goredis.ClusterClient:
			tc = cl.Options().TLSConfig
		case *goredis.Client:
			tc = cl.Options().TLSConfig
		}
		cl.Close()
		if tc == nil || tc.ServerName != "" {
			t.Fatalf("%+v: TLS config %+v, want one without a fixed server name", c, tc)
		}
	}
	// A Cluster has database 0 alone.
	if err := (ClientConfig{Addrs: []string{"r1:7000"}, DB: "15"}).Validate(); err == nil || !strings.Contains(err.Error(), "only database 0") {
		t.Fatalf("REDIS_DB with a Cluster: %v", err)
	}
	if err := (ClientConfig{Addrs: []string{"r1:7000"}, URL: "redis://h:6379/15"}).Validate(); err == nil || !strings.Contains(err.Error(), "only database 0") {
		t.Fatalf("a REDIS_URL database with a Cluster: %v", err)
	}
	if err := (ClientConfig{Addrs: []string{"r1:7000"}, URL: "redis://h:6379/0", DB: "15"}).Validate(); err != nil {
		t.Fatalf("REDIS_DB beside a REDIS_URL that wins over it: %v", err)
	}
	if err := (ClientConfig{Addrs: []string{"s1:26379"}, MasterName: "m", DB: "15"}).Validate(); err != nil {
		t.Fatalf("REDIS_DB with Sentinels: %v", err)
	}
}

func TestRedisConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*Config){
		"ttl zero":       func(c *Config) { c.TTL = 0 },
		"ttl fraction":   func(c *Config) { c.TTL = 1500 * time.Millisecond },
		"no interval":    func(c *Config) { c.Flush.Interval = 0 },
		"no batch":       func(c *Config) { c.Flush.BatchSize = 0 },
		"concurrency":    func(c *Config) { c.Flush.Concurrency = 0 },
		"backoff order":  func(c *Config) { c.Flush.MaxBackoff = c.Flush.MinBackoff / 2 },
		"write timeout":  func(c *Config) { c.Flush.WriteTimeout = 0 },
		"negative flush": func(c *Config) { c.Flush.FlushAt = -1 },
	} {
		c := DefaultConfig()
		mod(&c)
		if err := c.Validate(); !errors.Is(err, writeback.ErrInvalidConfig) || !strings.Contains(err.Error(), "redis") {
			t.Errorf("%s: Validate = %v", name, err)
		}
	}
	if _, err := New(nil, writebacktest.NewFakeSource(), DefaultConfig()); !errors.Is(err, writeback.ErrInvalidConfig) {
		t.Errorf("nil client: %v", err)
	}
	var _ goredis.UniversalClient = (*goredis.ClusterClient)(nil)
}

// A stale owner cannot move last-seen back nor overwrite the status a newer
// message set; a newer or equal time writes.
func TestRedisGuardedWrites(t *testing.T) {
	src := writebacktest.NewFakeSource()
	h := newGuardedRedisHarness(t, src, writebacktest.Opts{})
	sink := h.Sink.(*Sink)
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
	write(engine.StatusOnline, writebacktest.T0.Add(time.Minute))
	write(engine.StatusOffline, writebacktest.T0) // the stale owner: older message time
	check(engine.StatusOnline, writebacktest.T0.Add(time.Minute))
	write(engine.StatusOffline, writebacktest.T0.Add(time.Minute)) // a timeout: same time
	check(engine.StatusOffline, writebacktest.T0.Add(time.Minute))
	write(engine.StatusOnline, writebacktest.T0.Add(time.Minute)) // a stale owner that missed the timeout
	check(engine.StatusOffline, writebacktest.T0.Add(time.Minute))
	write(engine.StatusOnline, writebacktest.T0.Add(2*time.Minute))
	check(engine.StatusOnline, writebacktest.T0.Add(2*time.Minute))
	// After a Redis script flush (a restart) the script is loaded again.
	if err := sink.client.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	write(engine.StatusOffline, writebacktest.T0.Add(3*time.Minute))
	check(engine.StatusOffline, writebacktest.T0.Add(3*time.Minute))
}

func redisKinds() map[string]writebacktest.NewHarness {
	return map[string]writebacktest.NewHarness{
		"redis":         newRedisHarness,
		"redis/guarded": newGuardedRedisHarness,
	}
}

// TestConformance runs the state sinks' shared behaviour tests.
func TestConformance(t *testing.T) { writebacktest.RunConformance(t, redisKinds()) }

// TestOutage: see writebacktest.RunOutage.
func TestOutage(t *testing.T) { writebacktest.RunOutage(t, redisKinds()) }

// A device's own timeout is stored at once and read back by ReadStates; a
// Removed state deletes its keys, its override and its index entry, in
// both write modes.
func TestRedisOverridesAndRemoval(t *testing.T) {
	for _, guarded := range []bool{false, true} {
		t.Run(fmt.Sprint("guarded=", guarded), func(t *testing.T) {
			sink, src, client, prefix := testSink(t, func(prefix string, cfg *Config) {
				cfg.Guarded = guarded
				cfg.TTL = longTTL
				cfg.IndexKeyOf = func(string) string { return prefix + "index:0" }
				if guarded { // the daemon's layout: a hash per partition
					cfg.TimeoutsKeyOf = func(id string) string { return prefix + "timeouts:" + id }
				}
			})
			ctx := context.Background()
			src.Set(engine.DeviceState{ID: "1", Status: engine.StatusOnline, LastSeen: writebacktest.T0},
				engine.DeviceState{ID: "2", Status: engine.StatusOnline, LastSeen: writebacktest.T0})
			if err := sink.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			client.SAdd(ctx, prefix+"index:0", "1", "2")
			for id, d := range map[string]time.Duration{"1": time.Hour, "2": 90 * time.Second} {
				if err := sink.SetTimeoutOverride(ctx, id, d); err != nil {
					t.Fatal(err)
				}
			}
			client.HSet(ctx, sink.TimeoutsKeyOf("3"), "3", "0.1") // out of range: ignored
			states, err := sink.ReadStates(ctx, []string{"1", "2", "3"})
			if err != nil {
				t.Fatal(err)
			}
			if states[0].Timeout != time.Hour || states[0].TimeoutSource != engine.TimeoutDevice ||
				states[1].Timeout != 90*time.Second || states[2].Timeout != 0 || states[2].TimeoutSource != 0 {
				t.Fatalf("read back %+v", states)
			}
			if err := sink.SetTimeoutOverride(ctx, "2", 0); err != nil {
				t.Fatal(err)
			}
			if ok, _ := client.HExists(ctx, sink.TimeoutsKeyOf("2"), "2").Result(); ok {
				t.Fatal("override of 2 left after clearing it")
			}
			src.Set(engine.DeviceState{ID: "1", Removed: true})
			if err := sink.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if n, _ := client.Exists(ctx, sink.StatusKey("1"), sink.LastSeenKey("1")).Result(); n != 0 {
				t.Fatalf("%d keys of the removed device left", n)
			}
			if ok, _ := client.HExists(ctx, sink.TimeoutsKeyOf("1"), "1").Result(); ok {
				t.Fatal("override of the removed device left")
			}
			if m, _ := client.SMembers(ctx, prefix+"index:0").Result(); len(m) != 1 || m[0] != "2" {
				t.Fatalf("index %v, want [2]", m)
			}
			if st, _ := client.Get(ctx, sink.StatusKey("2")).Result(); st != "online" {
				t.Fatalf("2's status %q after 1's removal", st)
			}
		})
	}
}

func TestVersionLess(t *testing.T) {
	for _, c := range []struct {
		a, b string
		less bool
	}{{"6.2.14", "7.0", true}, {"7.0.15", "7.0", false}, {"7.0", "7.0.0", false}, {"10.0", "7.0", false}, {"7", "7.2", true}} {
		t.Run(c.a+"<"+c.b, func(t *testing.T) {
			if got := versionLess(c.a, c.b); got != c.less {
				t.Errorf("versionLess(%q, %q) = %v", c.a, c.b, got)
			}
		})
	}
}

// The fence's edges: a key written under a longer TTL (-redis-ttl
// lowered, or a key not written by presence) does not block guarded
// writes; a guarded write whose fence has passed (a device silent for
// longer than the TTL) leaves the device out of Redis.
func TestGuardedFenceEdges(t *testing.T) {
	sink, src, client, prefix := testSink(t, func(_ string, cfg *Config) { cfg.Guarded = true })
	ctx := context.Background()
	seen := time.Now().Add(-time.Minute).Truncate(time.Microsecond)
	client.Set(ctx, prefix+"status:1", "online", 48*time.Hour)
	client.Set(ctx, prefix+"lastseen:1", wire.FormatTime(seen), 48*time.Hour)
	src.Set(engine.DeviceState{ID: "1", Status: engine.StatusOffline, LastSeen: seen, StatusOnly: true})
	if err := sink.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := client.Get(ctx, prefix+"status:1").Val(); got != "offline" {
		t.Fatalf("status %q: a key expiring beyond now + TTL blocked the timeout", got)
	}
	if ttl := client.PTTL(ctx, prefix+"status:1").Val(); ttl > 24*time.Hour {
		t.Fatalf("status expires in %v, want by last-seen + 24 h", ttl)
	}

	old := time.Now().Add(-25 * time.Hour)
	src.Set(engine.DeviceState{ID: "2", Status: engine.StatusOffline, LastSeen: old})
	if err := sink.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := client.Exists(ctx, prefix+"status:2", prefix+"lastseen:2").Val(); n != 0 {
		t.Fatalf("%d keys of a device silent for longer than the TTL", n)
	}
}

// A device listed as new (after a failover: Tracker.MarkAll) has its own
// timeout written again with its index entry: the override stored just
// before the failover may be lost with the old master's last writes.
func TestNewStateRewritesOwnTimeout(t *testing.T) {
	sink, src, client, prefix := testSink(t, func(prefix string, cfg *Config) {
		cfg.IndexKeyOf = func(string) string { return prefix + "index:0" }
	})
	ctx := context.Background()
	now := time.Now()
	src.Set(engine.DeviceState{ID: "1", Status: engine.StatusOnline, LastSeen: now, New: true,
		Timeout: time.Hour, TimeoutSource: engine.TimeoutDevice},
		engine.DeviceState{ID: "2", Status: engine.StatusOnline, LastSeen: now, New: true,
			Timeout: time.Minute, TimeoutSource: engine.TimeoutDefault})
	if err := sink.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if v := client.HGet(ctx, sink.TimeoutsKeyOf("1"), "1").Val(); v != "3600" {
		t.Fatalf("own timeout of 1: %q, want 3600", v)
	}
	if ok := client.HExists(ctx, sink.TimeoutsKeyOf("2"), "2").Val(); ok {
		t.Fatal("a default timeout stored as the device's own")
	}
	if m := client.SMembers(ctx, prefix+"index:0").Val(); len(m) != 2 {
		t.Fatalf("index %v", m)
	}
}

// On a Redis before 6.2 (SET ... PXAT refused, as the sink finds out) the
// keys expire by PX: the same time.
func TestRelativeExpiry(t *testing.T) {
	sink, src, client, prefix := testSink(t, nil)
	sink.relative.Store(true)
	ctx := context.Background()
	seen := time.Now().Add(-time.Hour)
	src.Set(engine.DeviceState{ID: "1", Status: engine.StatusOnline, LastSeen: seen})
	if err := sink.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{prefix + "status:1", prefix + "lastseen:1"} {
		if ttl := client.PTTL(ctx, key).Val(); ttl < 23*time.Hour-time.Minute || ttl > 23*time.Hour {
			t.Fatalf("%s expires in %v, want last-seen + 24 h: 23 h", key, ttl)
		}
	}
}
