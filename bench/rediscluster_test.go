package bench

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
	"github.com/presence-dev/presence/internal/wire"
	"github.com/presence-dev/presence/recovery"
	wbredis "github.com/presence-dev/presence/writeback/redis"
)

// clusterMassDevices is the fleet of BenchmarkRedisCluster.
const clusterMassDevices = 1_000_000

// redisTarget is one Redis deployment of BenchmarkRedisCluster: a private
// single redis-server, or a private Redis Cluster of 3 masters (no
// replicas: they would share the 2 cores too), on this machine.
type redisTarget struct {
	name    string
	client  redis.UniversalClient
	addrs   []string // -redis-addrs; empty: url
	url     string
	pids    func() []int // the redis-server processes serving it
	shards  int          // -events-stream-shards
	sharded bool         // -events-channel-sharded
}

func singleTarget(b *testing.B) *redisTarget {
	n := testenv.StartRedis(b)
	c := redis.NewClient(&redis.Options{Addr: n.Addr, ReadTimeout: time.Minute, WriteTimeout: time.Minute})
	b.Cleanup(func() { c.Close() })
	return &redisTarget{name: "one", client: c, url: "redis://" + n.Addr, pids: func() []int { return []int{n.Pid()} }, shards: 1}
}

func clusterTarget(b *testing.B, name string, sharded bool) *redisTarget {
	rc := testenv.StartRedisCluster(b, 3, 0)
	c, err := wbredis.ClientConfig{Addrs: rc.Addrs()}.NewClient()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	pids := func() []int {
		var out []int
		for _, n := range rc.Nodes {
			out = append(out, n.Pid())
		}
		return out
	}
	return &redisTarget{name: name, client: c, addrs: rc.Addrs(), pids: pids, shards: 3, sharded: sharded}
}

// cpuOf is the CPU time (user + system) used so far by each of the
// processes pids, from /proc.
func cpuOf(pids []int) ([]time.Duration, error) {
	var out []time.Duration
	for _, pid := range pids {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return nil, err
		}
		// The fields after the command name (in parentheses): utime and
		// stime are the 12th and 13th, in clock ticks (100 a second).
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 13 {
			return nil, fmt.Errorf("/proc/%d/stat: %q", pid, s)
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		out = append(out, time.Duration(u+st)*10*time.Millisecond)
	}
	return out, nil
}

// selfCPU is this process's CPU time (the daemon runs in it).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// clusterRun is one mass expiry into one target.
type clusterRun struct {
	keys, stream      time.Duration // deadline to the last key, the last event sent
	redisCPU, selfCPU time.Duration // from the deadline to the last of them
	busiest           time.Duration // the CPU time of the busiest redis-server
}

// BenchmarkRedisCluster is issue 24's comparison, one Redis against a
// Redis Cluster of 3 masters (private redis-server processes on this
// machine, started by the benchmark, no replicas), in the same run:
//
//   - mass-expiry: the real daemon (one presenced, its defaults: keys,
//     index, Pub/Sub and the Stream; on the Cluster the Stream in 3 shards)
//     with 1,000,000 devices online, all expiring at one deadline (30 s
//     timeout), as in BenchmarkMassExpiry; on the Cluster once with
//     Pub/Sub by PUBLISH (cluster), once by SPUBLISH (cluster-spublish,
//     -events-channel-sharded). Times from the deadline to the last key
//     written (keys-ms) and to the last event sent to the Stream
//     (stream-ms); the CPU time the redis-server processes used meanwhile,
//     per device (redis-cpu-us/key: its key, its Stream entry and its
//     Pub/Sub message), that of the busiest of them
//     (busiest-redis-cpu-us/key), and the benchmark process's own (the
//     daemon runs in it: presenced-cpu-us/key). cluster-x is the Cluster's
//     time to the last key over one Redis's. Every status key is read
//     back offline.
//   - hydrate: restart recovery of the same 1M devices (the daemon's own
//     recovery.Recovery, from the complete device index) from each.
//
// On 2 cores the 3 masters share the cores with the daemon: read the
// Cluster's figures as the cost of spreading, not as its scaling
// (BENCHMARKS.md works out N masters on N machines from the per-key CPU).
//
//	go test ./bench -run '^$' -bench RedisCluster -benchtime 1x -count 3 -timeout 60m
func BenchmarkRedisCluster(b *testing.B) {
	b.Run("mass-expiry", benchClusterMassExpiry)
	b.Run("hydrate", benchClusterHydrate)
}

func benchClusterMassExpiry(b *testing.B) {
	targets := []*redisTarget{singleTarget(b), clusterTarget(b, "cluster", false), clusterTarget(b, "cluster-spublish", true)}
	runs := map[string][]clusterRun{}
	b.ResetTimer()
	for range b.N {
		for _, tg := range targets {
			b.StopTimer()
			r := clusterMassExpiry(b, tg)
			runs[tg.name] = append(runs[tg.name], r)
			b.Logf("%s: deadline to keys %v, stream %v; redis CPU %v (%.2f µs/key, the busiest server %.2f), presenced CPU %v (%.2f µs/key)",
				tg.name, r.keys, r.stream, r.redisCPU, us(r.redisCPU, clusterMassDevices), us(r.busiest, clusterMassDevices),
				r.selfCPU, us(r.selfCPU, clusterMassDevices))
		}
	}
	b.StopTimer()
	avg := func(name string, get func(clusterRun) float64) float64 {
		sum := 0.0
		for _, r := range runs[name] {
			sum += get(r)
		}
		return sum / float64(len(runs[name]))
	}
	for _, name := range []string{"one", "cluster", "cluster-spublish"} {
		b.ReportMetric(avg(name, func(r clusterRun) float64 { return float64(r.keys.Milliseconds()) }), name+"-keys-ms")
		b.ReportMetric(avg(name, func(r clusterRun) float64 { return float64(r.stream.Milliseconds()) }), name+"-stream-ms")
		b.ReportMetric(avg(name, func(r clusterRun) float64 { return us(r.redisCPU, clusterMassDevices) }), name+"-redis-cpu-us/key")
		b.ReportMetric(avg(name, func(r clusterRun) float64 { return us(r.busiest, clusterMassDevices) }), name+"-busiest-redis-cpu-us/key")
		b.ReportMetric(avg(name, func(r clusterRun) float64 { return us(r.selfCPU, clusterMassDevices) }), name+"-presenced-cpu-us/key")
	}
	for _, name := range []string{"cluster", "cluster-spublish"} {
		ratio := 0.0
		for i := range runs["one"] {
			ratio += float64(runs[name][i].keys) / float64(runs["one"][i].keys)
		}
		b.ReportMetric(ratio/float64(len(runs["one"])), name+"-x")
	}
}

func us(d time.Duration, n int) float64 { return float64(d.Microseconds()) / float64(n) }

// clusterMassExpiry runs the daemon on tg through one mass expiry.
func clusterMassExpiry(b *testing.B, tg *redisTarget) clusterRun {
	b.Helper()
	f := newFixture(b, 0) // the names; its Redis is the machine's, not used
	cfg := f.daemonConfig()
	cfg.Redis.URL, cfg.Redis.Addrs = tg.url, tg.addrs
	cfg.Events.Stream.Shards = tg.shards
	cfg.Events.PubSub.Sharded = tg.sharded
	cfg.Engine.DefaultTimeout = 30 * time.Second
	d := startBenchDaemon(b, cfg)
	testenv.Eventually(b, 60*time.Second, func() error { return getOK("http://" + d.HTTPAddr() + "/readyz") })
	url := "http://" + d.HTTPAddr()
	eng := d.Engine()
	st0 := eng.Stats()
	at := time.Now()
	deadline := at.Add(cfg.Engine.DefaultTimeout)
	touchFleet(b, eng, clusterMassDevices, at, 0)
	waitSettled(b, eng, url, "online", func(st engine.Stats) bool {
		return st.OnlineTransitions-st0.OnlineTransitions >= clusterMassDevices
	})
	if time.Now().After(deadline.Add(-3 * time.Second)) {
		b.Fatalf("%s: the writers settled %v after the touches, too close to the deadline", tg.name, time.Since(at))
	}
	before := scrapeOrFail(b, url)
	time.Sleep(time.Until(deadline))
	cpu0, err := cpuOf(tg.pids())
	if err != nil {
		b.Fatal(err)
	}
	self0 := selfCPU()
	var r clusterRun
	written := `presence_writeback_devices_written_total{sink="redis"}`
	sent := `presence_events_sent_total{dest="stream"}`
	testenv.Eventually(b, 10*time.Minute, func() error {
		m := scrapeOrFail(b, url)
		since := time.Since(deadline)
		if r.keys == 0 && m[written]-before[written] >= clusterMassDevices {
			r.keys = since
		}
		if r.stream == 0 && m[sent]-before[sent] >= clusterMassDevices {
			r.stream = since
		}
		if r.keys == 0 || r.stream == 0 {
			return fmt.Errorf("%s: keys %v, stream %v", tg.name, r.keys, r.stream)
		}
		return nil
	})
	cpu1, err := cpuOf(tg.pids())
	if err != nil {
		b.Fatal(err)
	}
	for i := range cpu1 {
		d := cpu1[i] - cpu0[i]
		r.redisCPU += d
		r.busiest = max(r.busiest, d)
	}
	r.selfCPU = selfCPU() - self0
	checkOfflineOn(b, tg.client, f.prefix+"status:", clusterMassDevices)
	// Empty the target for the next run.
	if err := flushAll(tg.client); err != nil {
		b.Fatal(err)
	}
	return r
}

// checkOfflineOn reads the status keys prefix{1..n} (pipelined GETs: one
// MGET may not span a Cluster's slots) and fails unless each is offline.
func checkOfflineOn(b *testing.B, c redis.UniversalClient, prefix string, n int) {
	b.Helper()
	ctx := context.Background()
	const chunk = 10_000
	for lo := 1; lo <= n; lo += chunk {
		pipe := c.Pipeline()
		cmds := make([]*redis.StringCmd, 0, chunk)
		for id := lo; id < lo+chunk && id <= n; id++ {
			cmds = append(cmds, pipe.Get(ctx, prefix+strconv.Itoa(id)))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
		for _, cmd := range cmds {
			if cmd.Val() != "offline" {
				b.Fatalf("%s = %q, want offline", cmd.Args()[1], cmd.Val())
			}
		}
	}
}

// flushAll empties every master of c.
func flushAll(c redis.UniversalClient) error {
	ctx := context.Background()
	if cc, ok := c.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return m.FlushAll(ctx).Err() })
	}
	return c.FlushAll(ctx).Err()
}

func benchClusterHydrate(b *testing.B) {
	targets := []*redisTarget{singleTarget(b), clusterTarget(b, "cluster", false)}
	f := newFixture(b, 0)
	ctx := context.Background()
	base := time.Now()
	for _, tg := range targets {
		start := time.Now()
		if err := preloadOn(ctx, tg.client, f.prefix, clusterMassDevices, func(i int) storedDevice { return storedAt(i, base) }); err != nil {
			b.Fatal(err)
		}
		// The first start walks the keyspace and fills the index.
		eng, rec := hydrateTargetOn(b, tg.client, f.prefix, time.Now())
		if err := rec.Start(ctx); err != nil {
			b.Fatal(err)
		}
		verifyHydrated(b, eng, rec, clusterMassDevices, base, time.Now())
		b.Logf("%s: preloaded %d devices and filled the index in %v", tg.name, clusterMassDevices, time.Since(start).Round(time.Millisecond))
	}
	took := map[string]time.Duration{}
	b.ResetTimer()
	for range b.N {
		for _, tg := range targets {
			b.StopTimer()
			now := time.Now()
			eng, rec := hydrateTargetOn(b, tg.client, f.prefix, now)
			b.StartTimer()
			start := time.Now()
			err := rec.Start(ctx)
			d := time.Since(start)
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			verifyHydrated(b, eng, rec, clusterMassDevices, base, now)
			took[tg.name] += d
			b.Logf("%s: %d devices rebuilt from the index in %v", tg.name, clusterMassDevices, d.Round(time.Millisecond))
			b.StartTimer()
		}
	}
	b.StopTimer()
	b.ReportMetric(took["one"].Seconds()/float64(b.N), "one-seconds")
	b.ReportMetric(took["cluster"].Seconds()/float64(b.N), "cluster-seconds")
	b.ReportMetric(float64(took["cluster"])/float64(took["one"]), "cluster-x")
}

// preloadOn writes the two keys of devices 1..devices under prefix on c,
// device i as stored(i), as presence's Redis sink leaves them (expiring
// at LastSeen + 24 h), in pipelines of 1,000 devices from 4 goroutines.
func preloadOn(ctx context.Context, c redis.UniversalClient, prefix string, devices int, stored func(i int) storedDevice) error {
	const chunk, workers = 1000, 4
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for lo := 1 + w*chunk; lo <= devices; lo += workers * chunk {
				pipe := c.Pipeline()
				for i := lo; i < lo+chunk && i <= devices; i++ {
					d := stored(i)
					id := strconv.Itoa(i)
					at := d.lastSeen.Add(24 * time.Hour)
					pipe.SetArgs(ctx, prefix+"status:"+id, d.status, redis.SetArgs{ExpireAt: at})
					pipe.SetArgs(ctx, prefix+"lastseen:"+id, wire.FormatTime(d.lastSeen), redis.SetArgs{ExpireAt: at})
				}
				if _, err := pipe.Exec(ctx); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// hydrateTargetOn is what the daemon has built when it hydrates, on client
// c and prefix: an engine with its default configuration and two trackers
// (the Redis and Postgres sinks'), the Redis sink, the index with its
// timeouts hashes per partition, and recovery restoring at now.
func hydrateTargetOn(b *testing.B, c redis.UniversalClient, prefix string, now time.Time) (*engine.Engine, *recovery.Recovery) {
	ec := engine.DefaultConfig()
	ec.Logger = slog.New(slog.DiscardHandler)
	eng, err := engine.New(ec)
	if err != nil {
		b.Fatal(err)
	}
	tr, err := eng.NewTracker()
	if err != nil {
		b.Fatal(err)
	}
	if _, err := eng.NewTracker(); err != nil { // the Postgres sink's
		b.Fatal(err)
	}
	rc := recovery.DefaultConfig()
	rc.Index.KeyPrefix = prefix
	rc.Index.TimeoutsKey = wbredis.Config{KeyPrefix: prefix}.TimeoutsKey()
	rc.Clock = func() time.Time { return now }
	rc.Logger = slog.New(slog.DiscardHandler)
	index, err := recovery.NewIndex(c, rc.Index, nil)
	if err != nil {
		b.Fatal(err)
	}
	kc := wbredis.DefaultConfig()
	kc.KeyPrefix, kc.IndexKeyOf, kc.TimeoutsKeyOf = prefix, index.KeyOf, index.TimeoutsKeyOf
	sink, err := wbredis.New(c, tr, kc)
	if err != nil {
		b.Fatal(err)
	}
	rec, err := recovery.New(rc, index, sink, eng)
	if err != nil {
		b.Fatal(err)
	}
	return eng, rec
}
