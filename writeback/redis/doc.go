// Package redis is the Redis state sink: it keeps the seed's keys in step
// with the engine, {prefix}status:{id} ("online" or "offline") and
// {prefix}lastseen:{id} (wire.TimeLayout, what Python's
// datetime.fromisoformat reads), both with a TTL.
//
// Sink drains the engine's dirty set (a writeback.Source) on the embedded
// writeback.Flusher's loop and writes each changed device once per flush,
// in pipelines; with Config.Guarded (cluster nodes) each device is written
// by a Lua script that never moves a stored device back. ReadStates reads
// devices back, for restart recovery. ClientConfig is the connection (the
// seed's REDIS_URL, REDIS_HOST, REDIS_PORT, REDIS_DB, and REDIS_ADDRS for
// Cluster or Sentinel) and builds the client the daemon shares.
//
//	client, err := ccfg.NewClient()        // connects on first use
//	sink, err := redis.New(client, tracker, redis.DefaultConfig())
//	err = sink.Start(ctx)                  // flush every Interval
//	...
//	err = sink.Close(shutdownCtx)          // flushes what is pending
//
// The key contract, coalescing, guarded writes and outage behaviour:
// docs/STORAGE.md.
package redis
