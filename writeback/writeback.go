package writeback

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/presence-dev/presence/engine"
)

// Source is the engine side of a state sink: the dirty set of one
// write-behind consumer. The engine's *Tracker implements it; tests use a
// small in-memory fake.
//
// The dirty set holds device ids, not states: a device that changes a
// thousand times between two flushes is drained once, with its current
// state. Its size is bounded by the number of devices, never by time or by
// the message rate, which is what keeps memory flat while a store is down.
type Source interface {
	// Drain appends the current state of up to max dirty devices to dst,
	// clears their dirty mark and returns the extended slice.
	Drain(dst []engine.DeviceState, max int) []engine.DeviceState
	// MarkDirty puts devices back into the dirty set (after a failed
	// write); the next Drain re-reads their then current state.
	MarkDirty(ids ...string)
	// Len is the number of dirty devices.
	Len() int
}

// Errors of this package. Compare with errors.Is.
var (
	// ErrClosed: the sink was closed.
	ErrClosed = errors.New("writeback: sink closed")
	// ErrInvalidConfig wraps every Validate failure.
	ErrInvalidConfig = errors.New("writeback: invalid config")
)

// UnflushedError is returned by a sink's Close when the deadline passed
// (or the store kept failing) before everything pending was written.
// Pending is the number of devices (state sinks) or transitions (history)
// left unwritten.
type UnflushedError struct {
	Sink    string
	Pending int
	Err     error
}

func (e *UnflushedError) Error() string {
	return fmt.Sprintf("writeback: %s: %d pending not written at close: %v", e.Sink, e.Pending, e.Err)
}

func (e *UnflushedError) Unwrap() error { return e.Err }

// FlushConfig is the write-behind loop of a state sink (Flusher). Each
// sink's config embeds one with its own defaults.
type FlushConfig struct {
	// Interval between two flushes. Shorter: stores lag the engine less but
	// each flush carries fewer devices (more round trips per device).
	// Redis default 250 ms, Postgres 1 s.
	Interval time.Duration
	// FlushAt: a flush starts early, before Interval has passed, as soon as
	// this many devices are dirty (0: only on Interval). Bounds the size
	// of a flush under a burst (mass offline, restart).
	FlushAt int
	// BatchSize is the most devices written by one store call (one Redis
	// pipeline, one Postgres COPY+UPDATE transaction). Larger: fewer round
	// trips and higher throughput, but more memory and longer transactions,
	// and a failure re-marks more devices.
	BatchSize int
	// Concurrency is how many batches are written at the same time, each
	// by its own worker on its own connection. Devices are routed to
	// workers by a hash of their id, so the writes of one device stay in
	// order. 2 keeps the store busy while the next batch is encoded; more
	// only helps when the store has idle cores. Costs up to 3*Concurrency
	// batch buffers.
	Concurrency int
	// MinBackoff and MaxBackoff bound the exponential backoff (with full
	// jitter) after a failed flush. Short: faster recovery, more load on a
	// struggling store. While backing off, failed devices stay in the
	// engine's dirty set (coalesced), not in a queue here.
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// WriteTimeout bounds one store call (one batch). Too short fails big
	// batches on a slow store; too long delays noticing a dead one.
	WriteTimeout time.Duration
	// Yield, when set, lets more urgent writers go first: while it reports
	// true the loop puts its flushes off, for at most MaxYield in a row
	// (then it flushes as usual until Yield turns false: it is never
	// starved); the devices wait in the dirty set meanwhile, coalesced.
	// The daemon has PostgreSQL yield to the Redis writers during a burst
	// (a mass expiry, a mass reconnect): on two cores they would share the
	// CPU and Redis, the consumers' contract, would lag. Flush and Close
	// do not yield.
	Yield func() bool
	// MaxYield bounds how long Yield may put flushes off in a row; 0 never
	// puts them off.
	MaxYield time.Duration
	// Logger receives errors (rate-limited in retry loops) and the close
	// summary. Nil: slog.Default().
	Logger *slog.Logger
	// Metrics is the set this instance registers its metrics in. Nil: a
	// new private set (see the sink's Metrics method). Metric names carry
	// a sink label but no instance label: two sinks of the same kind need
	// two sets.
	Metrics *metrics.Set
}

// Validate reports the first invalid field of the loop of sink name,
// wrapping ErrInvalidConfig.
func (c FlushConfig) Validate(name string) error {
	switch {
	case c.Interval <= 0:
		return fmt.Errorf("%w: %s: Interval must be > 0, got %v", ErrInvalidConfig, name, c.Interval)
	case c.FlushAt < 0:
		return fmt.Errorf("%w: %s: FlushAt must be >= 0, got %d", ErrInvalidConfig, name, c.FlushAt)
	case c.BatchSize <= 0:
		return fmt.Errorf("%w: %s: BatchSize must be > 0, got %d", ErrInvalidConfig, name, c.BatchSize)
	case c.Concurrency <= 0 || c.Concurrency > 64:
		return fmt.Errorf("%w: %s: Concurrency must be in [1, 64], got %d", ErrInvalidConfig, name, c.Concurrency)
	case c.MinBackoff <= 0 || c.MaxBackoff < c.MinBackoff:
		return fmt.Errorf("%w: %s: need 0 < MinBackoff <= MaxBackoff, got %v, %v", ErrInvalidConfig, name, c.MinBackoff, c.MaxBackoff)
	case c.WriteTimeout <= 0:
		return fmt.Errorf("%w: %s: WriteTimeout must be > 0, got %v", ErrInvalidConfig, name, c.WriteTimeout)
	case c.MaxYield < 0:
		return fmt.Errorf("%w: %s: MaxYield must be >= 0, got %v", ErrInvalidConfig, name, c.MaxYield)
	}
	return nil
}
