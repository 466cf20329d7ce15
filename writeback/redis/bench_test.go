package redis

import (
	"context"
	"testing"
	"time"

	"github.com/presence-dev/presence/internal/testsupport/testenv"
	"github.com/presence-dev/presence/internal/wire"
	"github.com/presence-dev/presence/writeback/writebacktest"
)

// Benchmarks against the real Redis and Postgres. Each flush benchmark runs
// beside its per-message baseline (the seed's way) in the same run; see
// writeback/BENCHMARKS.fragment.md for the commands and results.

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
