package writeback_test

import (
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5/pgxpool"
	goredis "github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/writeback"
	"github.com/presence-dev/presence/writeback/postgres"
	"github.com/presence-dev/presence/writeback/redis"
)

// How the daemon wires the sinks: one engine tracker per state sink, the
// history writer as (part of) the engine's Sink, every sink started, and
// closed with a deadline at shutdown.
func Example() {
	ctx := context.Background()
	log := slog.Default()

	rdb := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379"})
	defer rdb.Close()

	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Error("postgres config", "err", err)
		return
	}
	defer pool.Close()

	var redisDirty, pgDirty writeback.Source // eng.NewTracker(), one each

	set := metrics.NewSet() // metrics.RegisterSet(set) exposes it
	rcfg := redis.DefaultConfig()
	rcfg.Flush.Logger, rcfg.Flush.Metrics = log, set
	rs, err := redis.New(rdb, redisDirty, rcfg)
	if err != nil {
		log.Error("redis sink", "err", err)
		return
	}
	pcfg := postgres.DefaultConfig()
	pcfg.Flush.Logger, pcfg.Flush.Metrics = log, set
	ps, err := postgres.New(pool, pgDirty, pcfg)
	if err != nil {
		log.Error("postgres sink", "err", err)
		return
	}
	hcfg := postgres.DefaultHistoryConfig()
	hcfg.Logger, hcfg.Metrics = log, set
	hist, err := postgres.NewHistory(pool, hcfg)
	if err != nil {
		log.Error("history", "err", err)
		return
	}
	var _ engine.Sink = hist // engine.Config.Sink

	for _, c := range []interface{ Start(context.Context) error }{rs, ps, hist} {
		if err := c.Start(ctx); err != nil {
			log.Error("writeback start", "err", err)
			return
		}
	}

	// ... at shutdown, after the engine stopped producing:
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, c := range []interface{ Close(context.Context) error }{rs, ps, hist} {
		if err := c.Close(sctx); err != nil {
			log.Error("writeback close", "err", err)
		}
	}
}
