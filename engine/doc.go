// Package engine knows, for every device, whether it is online and when it
// was last seen, and turns devices offline on time. It does no I/O: ingest
// feeds it touches, write-behind drains what changed, a Sink receives the
// transitions, and Run drives its clock.
//
// # Semantics
//
// A device is online from its first message and goes offline when
// now >= last_seen + timeout (default 60 s; per device from 1 s to 7 days).
// The offline transition is made never before that deadline and no later
// than deadline + Config.Tick (100 ms by default) when Run drives the engine.
// last_seen is monotonic: late input never moves it back. MarkOffline (a
// device's Last Will) acts at once. Every transition carries its cause and
// the moment it became true.
//
// # Layout
//
// Devices are spread over Config.Shards shards by a hash of the id. A shard
// is a plain mutex over pointer-free data, so the garbage collector has
// nothing to scan however many devices there are (a forced GC with 10M
// devices takes milliseconds):
//
//   - records of 32 bytes in fixed-size pages (last seen, status since,
//     the id itself when it fits 8 bytes, wheel tick, timeout index, flags);
//   - an open-addressing index of 4-byte cells (8-bit tag, 24-bit slot);
//   - an append-only arena for ids longer than 8 bytes;
//   - a hierarchical timing wheel of 4-byte entries (see wheel.go).
//
// That is about 55 bytes per device at 10M devices, everything included.
//
// # Lazy re-arm
//
// A touch of an online device stores a timestamp and nothing else: no wheel
// operation, no allocation. When a device's wheel entry comes up, the engine
// compares its real deadline with the clock and either turns it offline or
// arms it again for the remainder (Netty's IdleStateHandler does the same).
// A device costs at most one wheel operation per timeout period, however
// often it talks.
//
// # Batches
//
// With a million devices and more, finding a device is two cache (and TLB)
// misses, its index cell and its record, and a touch one at a time pays
// them in turn: a lock is a full memory fence, so the misses of consecutive
// touches cannot overlap. TouchBatch, what ingest calls, first loads (for a
// batch of 32 touches or more) the index cells of the whole batch, then its
// records, from loops that take no lock and do little else, so the CPU keeps many misses in flight at once;
// then it takes each shard's lock once for all of that shard's touches,
// which now hit the cache. The loads read a view of each shard's index and
// pages published atomically (cells and ids are stored atomically, the
// rest of a record is not read), and what they find is only a hint: under
// the lock a touch checks that the hinted record holds its id, else it
// looks the device up. On the 2-core test VM a batched touch is 2.5-4
// times as fast as one at a time (BENCHMARKS.md).
//
// # Transitions and a slow consumer
//
// Transitions are queued per shard (16 bytes each, bounded by
// Config.QueueCapacity) and handed to the Sink in batches by Deliver, in
// order per device. If the Sink falls behind, touches are never blocked and
// nothing is dropped silently: transitions are coalesced per device and the
// Sink receives one catch-up transition per device when it is back (see
// Sink). Memory stays bounded by the number of devices.
//
// # Write-behind
//
// A Tracker lists the devices changed since a sink last drained them, one
// entry per device however many touches it had. A sink that fails to write
// hands the devices back with MarkDirty and reads their then-current state
// on the next Drain, so an outage costs memory proportional to the devices
// that changed, not to the messages received.
//
// # Time
//
// Touches carry their own time. The wheel moves only when Advance is called
// with the current time: Run does so every Tick/4 from Config.Now, tests
// call it with a manual clock, so every test is exact and fast.
package engine
