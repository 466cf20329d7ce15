// Package writeback is what a write-behind sink of device state is: the
// Source it drains (the engine's per-sink dirty set, engine.Tracker), the
// Flusher loop that drains it in batches, writes them and retries with
// backoff, its FlushConfig, and the UnflushedError a Close reports when
// something could not be written.
//
// The sinks are its sub-packages, one per backend: writeback/redis (the
// seed's device:status:{id} and device:lastseen:{id} keys) and
// writeback/postgres (the devices table, and the status history).
// writebacktest runs the same conformance suite against each. What the
// stores hold, and what consumers may rely on, is docs/STORAGE.md.
package writeback
