package writeback

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
	"github.com/presence-dev/presence/internal/wire"
)

// Benchmarks against the real Redis and Postgres. Each flush benchmark runs
// beside its per-message baseline (the seed's way) in the same run; see
// BENCHMARKS.fragment.md for the commands and results.

const benchDevices = 1_000_000

// sliceSource is a Source over a fixed slice of states, every one dirty
// after reset: the cheapest possible engine side, so the benchmark measures
// the sink and the store.
type sliceSource struct {
	states []engine.DeviceState
	pos    int
	redo   atomic.Int64
}

func (s *sliceSource) Drain(dst []engine.DeviceState, limit int) []engine.DeviceState {
	n := min(limit, len(s.states)-s.pos)
	dst = append(dst, s.states[s.pos:s.pos+n]...)
	s.pos += n
	return dst
}

func (s *sliceSource) MarkDirty(ids ...string) { s.redo.Add(int64(len(ids))) }
func (s *sliceSource) Len() int                { return len(s.states) - s.pos }
func (s *sliceSource) reset()                  { s.pos = 0 }

func benchStates(n int, at time.Time) []engine.DeviceState {
	states := make([]engine.DeviceState, n)
	for i := range states {
		st := engine.StatusOnline
		if i%3 == 0 {
			st = engine.StatusOffline
		}
		states[i] = engine.DeviceState{
			ID:       strconv.Itoa(i + 1),
			Status:   st,
			LastSeen: at.Add(time.Duration(i) * time.Microsecond),
		}
	}
	return states
}

func BenchmarkRedisFlush(b *testing.B) {
	b.Run("devices=1M", func(b *testing.B) {
		client := newRedisClient(b, "")
		prefix := testenv.Name(b) + ":"
		cleanupRedisPrefix(b, client, prefix)
		src := &sliceSource{states: benchStates(benchDevices, time.Now())}
		cfg := DefaultRedisConfig()
		cfg.KeyPrefix = prefix
		cfg.TTL = 10 * time.Minute // safety net if cleanup is interrupted
		cfg.Flush.Logger = testLogger(b)
		sink, err := NewRedis(client, src, cfg)
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		b.ResetTimer()
		start := time.Now()
		for range b.N {
			src.reset()
			if err := sink.Flush(ctx); err != nil {
				b.Fatal(err)
			}
		}
		elapsed := time.Since(start)
		b.StopTimer()
		if n := src.redo.Load(); n != 0 {
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
	client := newRedisClient(b, "")
	prefix := testenv.Name(b) + ":"
	cleanupRedisPrefix(b, client, prefix)
	states := benchStates(messages, time.Now())
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

// benchDevicesTable creates a devices table like the seed's (id bigint,
// last_seen timestamptz) plus a status column, with rows 1..n.
func benchDevicesTable(b *testing.B, n int) (*pgxpool.Pool, string) {
	pool := newPool(b, "")
	table := createDevicesTable(b, pool, "bigint", ", status text")
	ctx := context.Background()
	if _, err := pool.Exec(ctx, "INSERT INTO "+table+" (id) SELECT generate_series(1, $1::bigint)", n); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "VACUUM ANALYZE "+table); err != nil {
		b.Fatal(err)
	}
	return pool, table
}

func BenchmarkPostgresFlush(b *testing.B) {
	b.Run("devices=1M", func(b *testing.B) {
		pool, table := benchDevicesTable(b, benchDevices)
		base := time.Now()
		src := &sliceSource{states: benchStates(benchDevices, base)}
		cfg := DefaultPostgresConfig()
		cfg.Table = table
		cfg.Flush.Logger = testLogger(b)
		sink, err := NewPostgres(pool, src, cfg)
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		var rows int64
		b.ResetTimer()
		var elapsed time.Duration
		for i := range b.N {
			b.StopTimer()
			// Every round moves last_seen forward, so every row is written.
			for j := range src.states {
				src.states[j].LastSeen = base.Add(time.Duration(i+1)*time.Second + time.Duration(j)*time.Microsecond)
			}
			src.reset()
			b.StartTimer()
			start := time.Now()
			if err := sink.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			elapsed += time.Since(start)
			rows += benchDevices
		}
		b.StopTimer()
		if n := src.redo.Load(); n != 0 {
			b.Fatalf("%d devices failed", n)
		}
		b.ReportMetric(float64(rows)/elapsed.Seconds(), "rows/s")
		_ = sink.Close(ctx)
	})
}

// BenchmarkPostgresPerRow is the seed's way: one UPDATE (and commit) per
// message.
func BenchmarkPostgresPerRow(b *testing.B) {
	const messages = 3000
	pool, table := benchDevicesTable(b, messages)
	states := benchStates(messages, time.Now())
	ctx := context.Background()
	q := "UPDATE " + table + " SET last_seen = $1, status = $2 WHERE id = $3 AND (last_seen IS NULL OR last_seen < $1)"
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		for j := range states {
			s := &states[j]
			at := s.LastSeen.Add(time.Duration(i+1) * time.Second)
			if _, err := pool.Exec(ctx, q, at, s.Status.String(), int64(j+1)); err != nil {
				b.Fatal(err)
			}
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(messages*b.N)/elapsed.Seconds(), "rows/s")
}
