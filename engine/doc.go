// Package engine knows, for every device, whether it is online and when it
// was last seen, and turns devices offline on time. It does no I/O: ingest
// feeds it touches (TouchBatch, MarkOffline), write-behind sinks drain what
// changed (Tracker), a Sink receives the transitions, and Start runs its
// clock and its deliverer until Close.
//
// A device is online from its first message and goes offline when
// now >= last_seen + timeout (Config.DefaultTimeout, or its own): never
// before that deadline, and no later than deadline + Config.Tick while the
// clock runs. last_seen never moves backwards. MarkOffline (a Last Will)
// acts at once. Every Transition carries its cause and the moment it
// became true.
//
// # Layout
//
// Devices are spread over Config.Shards shards by a hash of the id. A shard
// is a mutex over pointer-free data, so the garbage collector has nothing
// to scan however many devices there are: pages of fixed-size records, an
// open-addressing index, an arena for long ids and a hierarchical timing
// wheel (wheel.go). A touch of an online device stores a timestamp and
// nothing else; when its wheel entry comes up, the engine checks the real
// deadline and either turns the device offline or arms it again (lazy
// re-arm): at most one wheel operation per device and timeout period.
//
// # Batches
//
// TouchBatch, what ingest calls, first loads the index cells and then the
// records of a whole batch from loops that take no lock, so that the CPU
// keeps many cache misses in flight at once, then takes each shard's lock
// once for all of that shard's touches. What the loads find is only a hint,
// checked under the lock.
//
// # Transitions and write-behind
//
// Transitions are queued per shard (Config.QueueCapacity in all) and handed
// to the Sink in batches by Deliver, in order per device. A timeout takes no
// queue entry: the wheel's bucket that fired becomes the list of the slots
// that timed out (4 bytes a device, memory the wheel held already), the
// transition being read from the record at delivery, and its id string
// points into the engine's own memory (see Sink). A cascade moves the
// entries bound for one lower bucket within its own array, and Deliver's
// buffers are one batch, the timeouts leaving their list a batch at a
// time. So a mass expiry of any size takes no transient memory and is
// never coalesced. A slow Sink never
// blocks touches and loses nothing silently: past the bound, the other
// transitions are coalesced per device (see Sink). A Sink that makes Deliver wait does
// not delay the clock either: Start runs them on goroutines of their own.
// A Tracker lists the devices changed
// since its sink last drained it, one entry per device however many touches
// it had, with what changed (DeviceState.StatusOnly: the status alone;
// DeviceState.New: a device new to the engine, which a sink keeping an
// index of devices adds); a sink that fails hands them back (MarkDirty).
// Memory stays bounded by the number of devices, not by messages or time.
//
// The wheel moves only when Advance is called with the current time: the
// clock does so every Tick/4 from Config.Now, tests with a manual clock.
// Measured costs: BENCHMARKS.md.
//
// The Engine's methods live by concern: engine.go (the type, New, Start,
// Close, Stats), touch.go (messages), control.go (Last Wills, explicit
// statuses, own timeouts, decommission), query.go (lookups, counts,
// Range), restore.go (Restore, Adopt, Remove), advance.go (the wheel and
// the timeouts), deliver.go (handing transitions to the Sink); the shard
// and its records in shard.go, the wheel in wheel.go, the Trackers in
// tracker.go.
package engine
