// Package writeback keeps Redis and PostgreSQL in step with the engine, at
// rates that per-message writes (the seed's design) cannot reach.
//
// # Sinks
//
// There are three, each with its own documented Config, DefaultXConfig and
// Validate; New builds without I/O, Run(ctx) runs the loop, Close(ctx) stops
// it and flushes what is pending within ctx:
//
//   - Redis (NewRedis) writes the key layout existing consumers read:
//     device:status:{id} = "online"/"offline" and device:lastseen:{id} =
//     "2025-12-14T10:30:45.123456+00:00" (FormatLastSeen, what Python's
//     datetime.fromisoformat reads), both SET with EX (24 h). Pipelines of
//     RedisConfig.Flush.BatchSize devices; any redis.UniversalClient
//     (single node, Sentinel, Cluster). RedisOptionsFromEnv reads the seed's
//     REDIS_HOST/PORT/DB or REDIS_URL. Scan reads everything back for
//     restart recovery. With RedisConfig.Guarded (cluster nodes) each device
//     is written by a script that keeps newer stored state (fencing).
//   - Postgres (NewPostgres) updates last_seen (and status, if the column
//     exists) of the user's devices table: per batch one COPY into a
//     temporary staging table and one UPDATE ... FROM, deduplicated and
//     sorted by id, guarded so last_seen never moves backwards. The table's
//     layout (id type, status column) is detected on the first flush; the
//     table is never created or altered.
//   - History (NewHistory) appends every transition to
//     device_status_history (device_id, status, changed_at, cause) with
//     COPY. It implements engine.Sink.
//
// RedisIndex (NewRedisIndex, an engine.Sink too) keeps, per cluster
// partition, the set of device ids in Redis ({prefix}index:{partition}),
// added when a device comes online and written before the device's keys
// (given a Source that has the engine deliver what it drained: see
// RedisConfig.Index).
// Once filled from a full scan it is complete, and restart recovery and a
// cluster node's rebuild read it (Devices) instead of walking the keyspace.
//
// # Coalescing
//
// The state sinks hold no queue of updates. They drain a Source, the
// engine's per-sink dirty set (engine.Tracker): a set of device ids whose
// state changed since the last write. A device that sends a thousand
// messages between two flushes is written once, with its state at flush
// time. So the work per flush, and the memory behind it, is bounded by the
// number of devices, never by the message rate or by time.
//
// # Failures
//
// A failed batch (store down, timeout, restart) puts its devices back into
// the Source with MarkDirty; the next attempt drains them again and so
// writes their then current state. Attempts back off exponentially with
// jitter (FlushConfig.MinBackoff..MaxBackoff); errors are logged at most
// once per 5 s per sink with the count of suppressed lines. While a store
// is away nothing accumulates here: the dirty set simply stays at most one
// entry per device, and when the store returns one flush converges it to
// the engine's state. Each sink is independent: Redis down does not slow
// Postgres, and neither ever blocks the engine.
//
// Writes are idempotent (SET; an UPDATE guarded by last_seen), so a batch
// that failed half-way is simply written again. Redis does not guard
// last_seen itself: it trusts the engine, whose last_seen is monotonic.
//
// # History queue
//
// History cannot coalesce: every change is a row. History.HandleTransitions
// copies each batch into a bounded in-memory queue and returns at once;
// Run writes it in COPY batches. The default capacity
// (HistoryConfig.QueueCapacity) is 1,048,576 transitions, about 32 MiB,
// enough for a mass offline of a million devices or ~17 minutes of outage at
// 1,000 transitions/s. Beyond it the oldest transitions are dropped and
// counted (presence_writeback_history_dropped_total, plus a log line). A
// batch whose COPY failed ambiguously (connection lost after the server
// applied it) is written again, so history is at-least-once.
//
// # Shutdown
//
// Close(ctx) is idempotent: it stops Run, waits for it, then flushes
// everything still dirty (or queued), retrying until ctx is done. What
// could not be written is logged with its count and returned as an
// *UnflushedError.
//
// # Metrics
//
// Per instance (FlushConfig.Metrics / HistoryConfig.Metrics, a
// metrics.Set), labelled by sink, never by device:
// presence_writeback_flush_duration_seconds, _devices_written_total,
// _keys_written_total (Redis), _rows_written_total (Postgres, history),
// _skipped_total (unknown status, ids the id column cannot hold),
// _retries_total, _errors_total, _dirty_devices, _history_queued,
// _history_dropped_total.
package writeback
