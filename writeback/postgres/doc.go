// Package postgres holds the PostgreSQL side of write-behind: Sink keeps
// the user's devices table in step with the engine, and History appends
// every transition to a history table.
//
// Sink drains the engine's dirty set (a writeback.Source) on the embedded
// writeback.Flusher's loop: per batch one COPY into a temporary staging
// table and one UPDATE ... FROM (or INSERT ... ON CONFLICT with
// Config.InsertUnknown), deduplicated, sorted by id and guarded so that
// last_seen never moves backwards. The table's layout (id and status column
// types) is detected on the first flush; the table is never created or
// altered. History is an engine.Sink: it queues transitions in a bounded
// queue and writes them with COPY, creating its table if missing.
// PoolConfig is the connection (DATABASE_URL), shared with the reports.
//
//	pool, err := pcfg.Open(ctx) // connects on first use
//	sink, err := postgres.New(pool, tracker, postgres.DefaultConfig())
//	hist, err := postgres.NewHistory(pool, postgres.DefaultHistoryConfig())
//	// Start each; Close flushes what is pending within its ctx.
//
// The column types, update rules, history schema and outage behaviour:
// docs/STORAGE.md.
package postgres
