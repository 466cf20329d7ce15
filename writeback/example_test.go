package writeback_test

import (
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/writeback"
)

// How the daemon wires the sinks: one engine tracker per state sink, the
// history writer as (part of) the engine's Sink, every sink's Run in its
// own goroutine, and Close with a deadline at shutdown.
func Example() {
	ctx := context.Background()
	log := slog.Default()

	// Redis from the seed's environment (REDIS_URL wins).
	opts, err := writeback.RedisOptionsFromEnv(os.Getenv)
	if err != nil {
		log.Error("redis config", "err", err)
		return
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()

	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Error("postgres config", "err", err)
		return
	}
	defer pool.Close()

	var redisDirty, pgDirty writeback.Source // eng.NewTracker(), one each

	set := metrics.NewSet() // metrics.RegisterSet(set) exposes it
	rcfg := writeback.DefaultRedisConfig()
	rcfg.Flush.Logger, rcfg.Flush.Metrics = log, set
	rs, err := writeback.NewRedis(rdb, redisDirty, rcfg)
	if err != nil {
		log.Error("redis sink", "err", err)
		return
	}
	pcfg := writeback.DefaultPostgresConfig()
	pcfg.Flush.Logger, pcfg.Flush.Metrics = log, set
	ps, err := writeback.NewPostgres(pool, pgDirty, pcfg)
	if err != nil {
		log.Error("postgres sink", "err", err)
		return
	}
	hcfg := writeback.DefaultHistoryConfig()
	hcfg.Logger, hcfg.Metrics = log, set
	hist, err := writeback.NewHistory(pool, hcfg)
	if err != nil {
		log.Error("history", "err", err)
		return
	}
	var _ engine.Sink = hist // engine.Config.Sink

	go rs.Run(ctx)
	go ps.Run(ctx)
	go hist.Run(ctx)

	// ... at shutdown, after the engine stopped producing:
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, c := range []interface{ Close(context.Context) error }{rs, ps, hist} {
		if err := c.Close(sctx); err != nil {
			log.Error("writeback close", "err", err)
		}
	}
}
