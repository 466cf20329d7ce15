package postgres

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/presence-dev/presence/internal/testsupport/testenv"
	"github.com/presence-dev/presence/writeback/writebacktest"
)

// Benchmarks against the real Redis and Postgres. Each flush benchmark runs
// beside its per-message baseline (the seed's way) in the same run; see
// BENCHMARKS.md ("Write-behind") for the commands and results.

const benchDevices = 1_000_000

// benchDevicesTable creates a devices table like the seed's (id bigint,
// last_seen timestamptz) plus a status column, with rows 1..n.
func benchDevicesTable(b *testing.B, n int) (*pgxpool.Pool, string) {
	pool := testenv.Pool(b, "")
	table := testenv.DevicesTable(b, pool, "bigint", ", status text")
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
		src := &writebacktest.SliceSource{States: writebacktest.BenchStates(benchDevices, base)}
		cfg := DefaultConfig()
		cfg.Table = table
		cfg.Flush.Logger = testenv.Logger(b)
		sink, err := New(pool, src, cfg)
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
			for j := range src.States {
				src.States[j].LastSeen = base.Add(time.Duration(i+1)*time.Second + time.Duration(j)*time.Microsecond)
			}
			src.Reset()
			b.StartTimer()
			start := time.Now()
			if err := sink.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			elapsed += time.Since(start)
			rows += benchDevices
		}
		b.StopTimer()
		if n := src.Redone(); n != 0 {
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
	states := writebacktest.BenchStates(messages, time.Now())
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
