package engine

import (
	"fmt"

	"log/slog"
	"math/bits"
	"time"

	"github.com/presence-dev/presence/internal/envflag"
)

// Config configures an Engine. Start from DefaultConfig.
type Config struct {
	// Shards is the number of independently locked shards, a power of two in
	// [1, 65536]. More shards mean less lock contention and smaller pauses
	// during a mass expiry; each costs about 10 KiB of fixed memory. 256 keeps
	// contention negligible on 2..64 cores.
	Shards int

	// DefaultTimeout is how long a device may stay silent before it is
	// offline, unless it has its own (SetTimeout, Touch.Timeout). In
	// [MinTimeout, MaxTimeout]; the seed's 60 s by default.
	DefaultTimeout time.Duration

	// Tick bounds lateness: an offline transition is made no later than
	// deadline + Tick while the engine's clock runs (Start), plus the time
	// to process a mass expiry (see Advance). The wheel advances in Tick/4
	// steps, so a smaller Tick costs more wake-ups: 10 ms..10 s, default
	// 100 ms.
	Tick time.Duration

	// QueueCapacity bounds the transitions waiting for the Sink, over all
	// shards (16 bytes each). Beyond it transitions are coalesced per device
	// (see Sink). Default 1<<20 (16 MiB at most); minimum Shards. Timeouts
	// wait outside it (4 bytes a device, at most once each); a device back
	// before its timeout was delivered queues that timeout even past the
	// bound, so the queue holds at most QueueCapacity + one per device.
	QueueCapacity int

	// BatchSize is the largest batch handed to the Sink. Default 4096.
	BatchSize int

	// ChunkSize is how many wheel entries an expiry processes under one shard
	// lock before letting touches in. Default 1024: tens of microseconds.
	ChunkSize int

	// Sink receives transitions (may be nil: transitions are then only
	// counted).
	Sink Sink

	// Now is the clock Start runs on; nil means time.Now. Tests inject
	// their own and call Advance directly.
	Now func() time.Time

	// Logger receives rare operational messages (coalescing started). nil
	// means slog.Default().
	Logger *slog.Logger
}

// RegisterFlags registers the flags (and environment twins) of the fields
// an operator sets: -timeout (DEVICE_OFFLINE_TIMEOUT, the seed's) and
// -tick.
func (c *Config) RegisterFlags(s *envflag.Set) {
	s.Duration(&c.DefaultTimeout, "timeout", "DEVICE_OFFLINE_TIMEOUT", "silence after which a device is offline, 1s..168h; per-topic timeouts override it")
	s.Duration(&c.Tick, "tick", "PRESENCE_TICK", "bound on how late an offline transition may be, 10ms..10s")
}

// DefaultConfig returns the defaults described on each Config field.
func DefaultConfig() Config {
	return Config{
		Shards:         256,
		DefaultTimeout: 60 * time.Second,
		Tick:           100 * time.Millisecond,
		QueueCapacity:  1 << 20,
		BatchSize:      4096,
		ChunkSize:      1024,
	}
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	switch {
	case c.Shards < 1 || c.Shards > 1<<16 || bits.OnesCount(uint(c.Shards)) != 1:
		return fmt.Errorf("engine: Shards must be a power of two in [1, 65536], got %d", c.Shards)
	case c.DefaultTimeout < MinTimeout || c.DefaultTimeout > MaxTimeout:
		return fmt.Errorf("engine: DefaultTimeout (-timeout, DEVICE_OFFLINE_TIMEOUT) must be in [%v, %v], got %v", MinTimeout, MaxTimeout, c.DefaultTimeout)
	case c.Tick < 10*time.Millisecond || c.Tick > 10*time.Second:
		return fmt.Errorf("engine: Tick (-tick) must be in [10ms, 10s], got %v", c.Tick)
	case c.QueueCapacity < c.Shards:
		return fmt.Errorf("engine: QueueCapacity must be at least Shards (%d), got %d", c.Shards, c.QueueCapacity)
	case c.BatchSize < 1:
		return fmt.Errorf("engine: BatchSize must be positive, got %d", c.BatchSize)
	case c.ChunkSize < 1:
		return fmt.Errorf("engine: ChunkSize must be positive, got %d", c.ChunkSize)
	}
	return nil
}
