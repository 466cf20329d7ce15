package recovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/presence-dev/presence/cluster"
	"github.com/presence-dev/presence/engine"
)

// ErrInvalidConfig wraps every configuration error of this package.
var ErrInvalidConfig = errors.New("recovery: invalid config")

// Store reads device states back from where the Redis sink wrote them:
// *writeback/redis.Sink.
type Store interface {
	// ReadStates reads the given devices; one that is not stored has
	// Status engine.StatusUnknown.
	ReadStates(ctx context.Context, ids []string) ([]engine.DeviceState, error)
	// StatusKey is the key of a device's status (the keyspace walk looks
	// for StatusKey("") followed by an id).
	StatusKey(id string) string
}

// Engine is what recovery restores into: *engine.Engine.
type Engine interface {
	Restore(states []engine.DeviceState, now time.Time) error
	Adopt(states []engine.DeviceState, now time.Time) error
	Counts() engine.Counts
}

// Cluster is this node's membership, when clustered: *cluster.Node.
type Cluster interface {
	// Owns reports whether this node times device id now.
	Owns(id string) bool
	// Owned returns the partitions this node owns now.
	Owned() []int
	// RebuildDone releases the messages held for c's rebuild.
	RebuildDone(c cluster.Change)
}

// Config configures restart recovery and the cluster's partition rebuilds.
type Config struct {
	// NoHydrate skips the rebuild at start-up (PRESENCE_NO_HYDRATE): devices
	// are then rediscovered by their next message, and those that died
	// while presenced was down are not reported offline.
	NoHydrate bool
	// Attempts bounds how often start-up tries a Redis that does not
	// answer before serving without the stored state. Default 6.
	Attempts int
	// RetryBackoff is the first wait between two attempts, doubled after
	// each (default 1 s: six attempts span about half a minute plus their
	// timeouts).
	RetryBackoff time.Duration
	// RebuildTimeout bounds the rebuild of the partitions gained from a
	// crashed node. Keep it below the cluster's RebuildHold, which holds
	// their messages until the rebuild is done. Default 25 s.
	RebuildTimeout time.Duration
	// Index is the per-partition device index.
	Index IndexConfig
	// Clock is the time devices are restored at; nil is time.Now.
	Clock func() time.Time
	// Logger: nil is slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns the defaults documented on Config.
func DefaultConfig() Config {
	return Config{
		Attempts:       6,
		RetryBackoff:   time.Second,
		RebuildTimeout: 25 * time.Second,
		Index:          DefaultIndexConfig(),
	}
}

// Validate reports the first invalid field, wrapping ErrInvalidConfig.
func (c Config) Validate() error {
	switch {
	case c.Attempts < 1:
		return fmt.Errorf("%w: Attempts must be > 0, got %d", ErrInvalidConfig, c.Attempts)
	case c.RetryBackoff <= 0:
		return fmt.Errorf("%w: RetryBackoff must be > 0, got %v", ErrInvalidConfig, c.RetryBackoff)
	case c.RebuildTimeout <= 0:
		return fmt.Errorf("%w: RebuildTimeout must be > 0, got %v", ErrInvalidConfig, c.RebuildTimeout)
	}
	return c.Index.validate()
}

// Recovery rebuilds the engine from Redis: at start-up (Start) and, in a
// cluster, for the partitions this node gains from a member that is gone
// (OnChange). Both read the device index when it is complete and walk the
// keyspace otherwise, and fill the index after a walk. (The Redis sink
// writes the index as devices appear: writeback/redis Config.IndexKeyOf.)
type Recovery struct {
	cfg   Config
	store Store
	eng   Engine
	cl    Cluster // nil when not clustered
	index *Index
	log   *slog.Logger

	mu       sync.Mutex // guards closed and rebuilds.Add
	closed   bool
	rebuilds sync.WaitGroup
	stop     context.Context // cancelled by Close: rebuilds in flight end
	cancel   context.CancelFunc

	hydrated   atomic.Bool
	hydrateErr atomic.Pointer[error]
}

// New builds recovery over index (built with NewIndex, and a transition
// sink of eng; its configuration, not cfg.Index, is the one used), store
// (the Redis sink, reading the devices' keys) and eng. It does no I/O.
func New(cfg Config, index *Index, store Store, eng Engine) (*Recovery, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if index == nil || store == nil || eng == nil {
		return nil, fmt.Errorf("%w: nil index, store or engine", ErrInvalidConfig)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	r := &Recovery{cfg: cfg, store: store, eng: eng, index: index, log: log}
	r.stop, r.cancel = context.WithCancel(context.Background())
	return r, nil
}

// SetCluster makes recovery restore only what cl owns and rebuild what it
// gains (cl is nil unless clustered). Call it before Start.
func (r *Recovery) SetCluster(cl Cluster) { r.cl = cl }

// Index is the device index: an engine.Sink and a component of its own,
// to be closed after the engine, with the other sinks.
func (r *Recovery) Index() *Index { return r.index }

// Ready is nil once the start-up rebuild is done (or skipped, or given
// up), and says what it is doing otherwise.
func (r *Recovery) Ready() error {
	if r.hydrated.Load() {
		return nil
	}
	if p := r.hydrateErr.Load(); p != nil {
		return fmt.Errorf("rebuilding state from Redis: %w", *p)
	}
	return errors.New("rebuilding state from Redis")
}

// Start rebuilds the engine from Redis before it returns (restart
// recovery; start ingest after it): a cluster node (whose membership has
// settled: cluster.Node.Settle) restores only the partitions it owns. Devices
// whose deadline passed while presenced was down turn offline at once
// (cause restart: Redis status, history row, event); the others are armed
// for the time they have left. If Redis stays unreachable (Attempts) it
// gives up and says so: devices are then rediscovered by their next
// message. It returns ctx's error if ctx ends first.
func (r *Recovery) Start(ctx context.Context) error {
	if r.cfg.NoHydrate {
		r.hydrated.Store(true)
		return nil
	}
	start := time.Now()
	backoff := r.cfg.RetryBackoff
	for attempt := 1; ; attempt++ {
		n, err := r.hydrate(ctx)
		if err == nil {
			c := r.eng.Counts()
			r.log.Info("state rebuilt from Redis", "devices", n, "online", c.Online, "offline", c.Offline,
				"took", time.Since(start).Round(time.Millisecond))
			break
		}
		r.hydrateErr.Store(&err)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if attempt == r.cfg.Attempts {
			r.log.Error("could not rebuild state from Redis: starting without it; devices are rediscovered by their next message",
				"err", err, "attempts", attempt)
			break
		}
		r.log.Warn("rebuilding state from Redis failed, retrying", "err", err, "attempt", attempt, "backoff", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff *= 2
	}
	r.hydrated.Store(true)
	return nil
}

// Close ends the rebuilds in flight (their held messages are released)
// and waits for them. Idempotent.
func (r *Recovery) Close(ctx context.Context) error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.cancel()
	done := make(chan struct{})
	go func() { r.rebuilds.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("recovery: rebuilds still running: %w", ctx.Err())
	}
}

// owns reports whether this node times the device (always, unclustered).
func (r *Recovery) owns(id string) bool { return r.cl == nil || r.cl.Owns(id) }

// parts are the partitions whose devices this node restores.
func (r *Recovery) parts() []int {
	if r.cl != nil {
		return r.cl.Owned()
	}
	parts := make([]int, r.index.cfg.Partitions)
	for i := range parts {
		parts[i] = i
	}
	return parts
}

// hydrate rebuilds the engine from Redis once and returns how many devices
// it restored. When the device index is complete it reads the index (only
// the partitions this node owns); otherwise it walks the keyspace and then
// fills the index, so that the next start is faster. A retry after a
// partial read is safe: Restore merges devices it already has.
func (r *Recovery) hydrate(ctx context.Context) (int, error) {
	now := r.cfg.Clock()
	n := 0
	restore := func(states []engine.DeviceState) error {
		states = r.keepOwned(states)
		if err := r.eng.Restore(states, now); err != nil {
			r.log.Warn("some stored devices were skipped", "err", err)
		}
		n += len(states)
		return nil
	}
	if moved, err := r.index.MoveTimeouts(ctx); err != nil {
		return 0, err
	} else if moved > 0 {
		r.log.Info("moved the devices' own timeouts into one hash per partition", "timeouts", moved)
	}
	if complete, err := r.index.Complete(ctx); err != nil {
		return 0, err
	} else if complete {
		return n, r.index.Devices(ctx, r.store, r.parts(), restore)
	}
	var all []string // every stored device, for the index
	err := r.scan(ctx, func(states []engine.DeviceState) error {
		for _, st := range states {
			all = append(all, st.ID)
		}
		return restore(states)
	}, nil)
	if err != nil {
		return n, err
	}
	if err := r.index.Fill(ctx, all); err != nil {
		r.log.Warn("could not fill the device index: the next start scans again", "err", err)
	}
	return n, nil
}

// keepOwned filters states in place to the devices this node owns (the
// table may move on while a rebuild reads).
func (r *Recovery) keepOwned(states []engine.DeviceState) []engine.DeviceState {
	if r.cl == nil {
		return states
	}
	owned := states[:0]
	for _, st := range states {
		if r.cl.Owns(st.ID) {
			owned = append(owned, st)
		}
	}
	return owned
}

// scan walks every stored device (the keyspace) and hands them to fn in
// batches; keep, if not nil, selects the devices to hand over.
func (r *Recovery) scan(ctx context.Context, fn func([]engine.DeviceState) error, keep func(id string) bool) error {
	w := walkKeyspace(r.index.client, r.store.StatusKey(""))
	return readStored(ctx, r.store, w, nil, func(states []engine.DeviceState) error {
		if keep != nil {
			states = slices.DeleteFunc(states, func(st engine.DeviceState) bool { return !keep(st.ID) })
		}
		return fn(states)
	})
}

// OnChange is the cluster's Config.OnChange: it rebuilds, from Redis, the
// partitions this node gained from a member that crashed (or whose
// graceful handoff may not have got through), in the background. Devices
// whose deadline passed in the gap turn offline at once, cause handoff.
// Their messages, held by the cluster meanwhile, are released when the
// rebuild is done or gives up (RebuildTimeout).
func (r *Recovery) OnChange(c cluster.Change) {
	parts := c.Rebuild()
	if len(parts) == 0 || r.cl == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		r.cl.RebuildDone(c)
		return
	}
	r.rebuilds.Add(1)
	go func() { // the callback must not block membership
		defer r.rebuilds.Done()
		r.rebuild(c, parts)
	}()
}

// rebuild rebuilds parts, c.Rebuild(), from Redis.
func (r *Recovery) rebuild(c cluster.Change, parts []int) {
	start := time.Now()
	// Then the messages held meanwhile are applied: after the devices'
	// state, so that a device that was online is not reported online again.
	defer r.cl.RebuildDone(c)
	ctx, cancel := context.WithTimeout(r.stop, r.cfg.RebuildTimeout)
	defer cancel()
	n := 0
	adopt := func(states []engine.DeviceState) error {
		states = r.keepOwned(states)
		if err := r.eng.Adopt(states, r.cfg.Clock()); err != nil {
			r.log.Warn("cluster rebuild skipped some devices", "err", err)
		}
		n += len(states)
		return nil
	}
	// The per-partition index names the devices; without one (data written
	// before it existed, or no cluster history) walk the keyspace.
	how := "index"
	err := r.index.Devices(ctx, r.store, parts, adopt)
	if err == nil && n == 0 {
		how = "scan"
		want := make(map[int]bool, len(parts))
		for _, p := range parts {
			want[p] = true
		}
		partitionOf := r.index.partitionOf
		err = r.scan(ctx, adopt, func(id string) bool { return want[partitionOf(id)] })
	}
	if err != nil {
		r.log.Error("cluster rebuild from Redis failed", "err", err, "rebuilt", n, "via", how)
		return
	}
	r.log.Info("partitions rebuilt from Redis", "partitions", len(parts), "devices", n, "via", how,
		"took", time.Since(start).Round(time.Millisecond))
}
