package redis

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/internal/testsupport/testenv"
	"github.com/presence-dev/presence/internal/wire"
	"github.com/presence-dev/presence/writeback/writebacktest"
)

// Benchmarks against the real Redis and Postgres. Each flush benchmark runs
// beside its per-message baseline (the seed's way) in the same run; see
// BENCHMARKS.md ("Write-behind") for the commands and results.

const benchDevices = 1_000_000

func BenchmarkRedisFlush(b *testing.B) {
	b.Run("devices=1M", func(b *testing.B) {
		client := testenv.RedisClient(b, "")
		prefix := testenv.Name(b) + ":"
		testenv.CleanupRedisPrefix(b, client, prefix)
		src := &writebacktest.SliceSource{States: writebacktest.BenchStates(benchDevices, time.Now())}
		cfg := DefaultConfig()
		cfg.KeyPrefix = prefix
		cfg.TTL = 10 * time.Minute // safety net if cleanup is interrupted
		cfg.Flush.Logger = testenv.Logger(b)
		sink, err := New(client, src, cfg)
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		b.ResetTimer()
		start := time.Now()
		for range b.N {
			src.Reset()
			if err := sink.Flush(ctx); err != nil {
				b.Fatal(err)
			}
		}
		elapsed := time.Since(start)
		b.StopTimer()
		if n := src.Redone(); n != 0 {
			b.Fatalf("%d devices failed", n)
		}
		b.ReportMetric(float64(benchDevices*b.N)/elapsed.Seconds(), "devices/s")
		_ = sink.Close(ctx)
	})
}

// BenchmarkRedisPerMessage is the seed's way: for every message two SETs
// with EX, one round trip each, one after the other.
func BenchmarkRedisPerMessage(b *testing.B) {
	const messages = 20_000
	client := testenv.RedisClient(b, "")
	prefix := testenv.Name(b) + ":"
	testenv.CleanupRedisPrefix(b, client, prefix)
	states := writebacktest.BenchStates(messages, time.Now())
	ctx := context.Background()
	ttl := 10 * time.Minute
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		for i := range states {
			s := &states[i]
			if err := client.Set(ctx, prefix+"status:"+s.ID, s.Status.String(), ttl).Err(); err != nil {
				b.Fatal(err)
			}
			if err := client.Set(ctx, prefix+"lastseen:"+s.ID, wire.FormatTime(s.LastSeen), ttl).Err(); err != nil {
				b.Fatal(err)
			}
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(messages*b.N)/elapsed.Seconds(), "devices/s")
}

// pairScript is the guarded write before issue 24, the baseline of
// BenchmarkGuardedWrites: one script call per device over both of its
// keys, which Redis Cluster cannot hold in one slot.
var pairScript = goredis.NewScript(`
local old = redis.call('GET', KEYS[2])
if old then
  if old > ARGV[2] then return 0 end
  if old == ARGV[2] and ARGV[1] == 'online' and redis.call('GET', KEYS[1]) == 'offline' then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 1`)

// BenchmarkGuardedWrites is what issue 24's guard costs: each op writes
// 200,000 devices (status and last-seen, as a message leaves them) three
// ways, in the same run, on the machine's Redis, each into keys of its own
// that do not exist yet:
//
//   - plain: the sink unguarded (two SETs per device);
//   - fenced: the sink guarded (fencedSet, comparing each key's own
//     expiry: on one server a call per device, on a Cluster a call per
//     key, which fenced-per-key measures on this server), what a cluster
//     node writes now;
//   - pair: the guard before it, one script call per device over both
//     keys (pairScript), in pipelines of 1,000 over 4 connections, as the
//     sink sends.
//
// It reports each way's devices/s, fenced-x-pair and fenced-x-plain (time
// ratios), and the Redis memory each way's keys take per device
// (used_memory before and after).
//
//	go test ./writeback/redis -run '^$' -bench GuardedWrites -count 5
func BenchmarkGuardedWrites(b *testing.B) {
	const devices = 200_000
	client := testenv.RedisClient(b, "")
	prefix := testenv.Name(b) + ":"
	testenv.CleanupRedisPrefix(b, client, prefix)
	ctx := context.Background()
	if err := pairScript.Load(ctx, client).Err(); err != nil {
		b.Fatal(err)
	}
	used := func() int64 {
		info := client.Info(ctx, "memory").Val()
		for line := range strings.SplitSeq(info, "\n") {
			if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				return n
			}
		}
		b.Fatal("no used_memory")
		return 0
	}
	sinkWrite := func(p string, guarded, perKey bool) func() {
		return func() {
			src := &writebacktest.SliceSource{States: writebacktest.BenchStates(devices, time.Now())}
			cfg := DefaultConfig()
			cfg.KeyPrefix, cfg.Guarded, cfg.TTL = p, guarded, 10*time.Minute
			cfg.Flush.Logger = testenv.Logger(b)
			sink, err := New(client, src, cfg)
			if err != nil {
				b.Fatal(err)
			}
			sink.cluster = perKey // writes as on a Cluster
			if err := sink.Flush(ctx); err != nil || src.Redone() != 0 {
				b.Fatalf("flush: %v, %d redone", err, src.Redone())
			}
		}
	}
	pairWrite := func(p string) func() {
		return func() {
			states := writebacktest.BenchStates(devices, time.Now())
			const conns, pipeline = 4, 1000
			var wg sync.WaitGroup
			for c := range conns {
				wg.Go(func() {
					for lo := c * pipeline; lo < devices; lo += conns * pipeline {
						pipe := client.Pipeline()
						for i := lo; i < lo+pipeline && i < devices; i++ {
							s := &states[i]
							pairScript.EvalSha(ctx, pipe, []string{p + statusNS + s.ID, p + lastSeenNS + s.ID},
								s.Status.String(), wire.FormatTime(s.LastSeen), 600)
						}
						if _, err := pipe.Exec(ctx); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
		}
	}
	ways := []string{"plain", "fenced", "fenced-per-key", "pair"}
	took := map[string]time.Duration{}
	mem := map[string]int64{}
	b.ResetTimer()
	for n := range b.N {
		for _, way := range ways {
			b.StopTimer()
			p := fmt.Sprint(prefix, way, n, ":")
			write := map[string]func(){"plain": sinkWrite(p, false, false), "fenced": sinkWrite(p, true, false),
				"fenced-per-key": sinkWrite(p, true, true), "pair": pairWrite(p)}[way]
			before := used()
			b.StartTimer()
			start := time.Now()
			write()
			took[way] += time.Since(start)
			b.StopTimer()
			mem[way] += used() - before
			testenv.DeleteRedisPrefix(b, client, p)
			b.StartTimer()
		}
	}
	b.StopTimer()
	for _, way := range ways {
		b.ReportMetric(float64(devices*b.N)/took[way].Seconds(), way+"-devices/s")
		b.ReportMetric(float64(mem[way])/float64(devices*b.N), way+"-bytes/device")
	}
	b.ReportMetric(float64(took["fenced"])/float64(took["pair"]), "fenced-x-pair")
	b.ReportMetric(float64(took["fenced"])/float64(took["plain"]), "fenced-x-plain")
	b.ReportMetric(float64(took["fenced-per-key"])/float64(took["pair"]), "fenced-per-key-x-pair")
	b.ReportMetric(float64(took["fenced-per-key"])/float64(took["plain"]), "fenced-per-key-x-plain")
}
