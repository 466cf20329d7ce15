package recovery

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	goredis "github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/cluster"
	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/queue"
)

// IndexConfig configures the device index.
type IndexConfig struct {
	// KeyPrefix is the Redis sink's (e.g. "device:"): partition p's set is
	// {KeyPrefix}index:{p}, the completeness marker {KeyPrefix}index:complete.
	KeyPrefix string
	// TimeoutsKey, when set, is the hash of the devices' own timeouts
	// (writeback/redis Config.TimeoutsKey): a recovery that finds a
	// device's keys gone drops its field there too, with its index entry.
	TimeoutsKey string
	// Partitions is the cluster's partition count (cluster.DefaultPartitions
	// on every node): the index is laid out by partition so that a node
	// rebuilding some partitions reads only theirs.
	Partitions int
	// PartitionOf maps a device to its partition. Nil: cluster.PartitionOf
	// with Partitions (tests use a smaller function).
	PartitionOf func(id string) int
	// MaxPending bounds the ids waiting to be written (one per device that
	// came online, about 100 bytes each). When it is full the oldest is
	// dropped, counted, and the index is no longer complete: the next
	// start walks the keyspace again. Default 1<<20.
	MaxPending int
	// Interval between two writes of the pending ids. Default 500 ms. The
	// Redis sink also writes them before every batch of keys (BeforeKeys).
	Interval time.Duration
	// MinBackoff and MaxBackoff bound the retries of a failed write.
	// Defaults 500 ms and 15 s.
	MinBackoff, MaxBackoff time.Duration
	// WriteTimeout bounds one write (one pipeline). Default 10 s.
	WriteTimeout time.Duration
}

// DefaultIndexConfig returns the defaults documented on IndexConfig.
func DefaultIndexConfig() IndexConfig {
	return IndexConfig{
		KeyPrefix:    "device:",
		Partitions:   cluster.DefaultPartitions,
		MaxPending:   1 << 20,
		Interval:     500 * time.Millisecond,
		MinBackoff:   500 * time.Millisecond,
		MaxBackoff:   15 * time.Second,
		WriteTimeout: 10 * time.Second,
	}
}

func (c IndexConfig) validate() error {
	switch {
	case c.Partitions < 1 || c.Partitions > cluster.MaxPartitions:
		return fmt.Errorf("%w: Index.Partitions must be in [1, %d], got %d", ErrInvalidConfig, cluster.MaxPartitions, c.Partitions)
	case c.MaxPending < 1:
		return fmt.Errorf("%w: Index.MaxPending must be > 0, got %d", ErrInvalidConfig, c.MaxPending)
	case c.Interval <= 0:
		return fmt.Errorf("%w: Index.Interval must be > 0, got %v", ErrInvalidConfig, c.Interval)
	case c.MinBackoff <= 0 || c.MaxBackoff < c.MinBackoff:
		return fmt.Errorf("%w: Index: need 0 < MinBackoff <= MaxBackoff, got %v, %v", ErrInvalidConfig, c.MinBackoff, c.MaxBackoff)
	case c.WriteTimeout <= 0:
		return fmt.Errorf("%w: Index.WriteTimeout must be > 0, got %v", ErrInvalidConfig, c.WriteTimeout)
	}
	return nil
}

// Index keeps, for each cluster partition, the set of device ids seen in
// it: {KeyPrefix}index:{partition} (a Redis SET). Restart recovery and a
// node that takes over a crashed node's partitions read their sets (SSCAN)
// and the devices' keys, instead of walking the whole keyspace.
//
// It is written when a device comes online (first seen, or back after
// going offline), not per message: an id whose keys expired is dropped
// from its set by a read, and added again when the device returns. It
// implements engine.Sink and never blocks: new ids wait in a bounded queue
// (internal/queue, one entry per device however often it comes online)
// written every Interval and before every batch of the Redis sink's keys
// (BeforeKeys), so that a complete index stays complete across a kill -9. The sets have no TTL: they hold every device seen,
// which is bounded by the fleet (about 10 bytes per id in Redis).
type Index struct {
	client      goredis.UniversalClient
	cfg         IndexConfig
	partitionOf func(string) int
	q           *queue.Queue[string]

	set                    *metrics.Set
	flushes, dropped, errs *metrics.Counter

	onlineSeen atomic.Uint64 // online transitions received (BeforeKeys)
}

var _ engine.Sink = (*Index)(nil)

// NewIndex builds an index over client. It does no I/O; Start starts
// writing. log and set may be nil (slog.Default(), a new set).
func NewIndex(client goredis.UniversalClient, cfg IndexConfig, log *slog.Logger, set *metrics.Set) (*Index, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if client == nil {
		return nil, fmt.Errorf("%w: nil Redis client", ErrInvalidConfig)
	}
	if log == nil {
		log = slog.Default()
	}
	if set == nil {
		set = metrics.NewSet()
	}
	x := &Index{client: client, cfg: cfg, partitionOf: cfg.PartitionOf, set: set,
		flushes: set.NewCounter("presence_index_flushes_total"),
		dropped: set.NewCounter("presence_index_ids_dropped_total"),
		errs:    set.NewCounter("presence_index_errors_total"),
	}
	if x.partitionOf == nil {
		parts := cfg.Partitions
		x.partitionOf = func(id string) int { return cluster.PartitionOf(id, parts) }
	}
	x.q = queue.NewCoalescing(queue.Config{
		Name:       "recovery: device index",
		Capacity:   cfg.MaxPending,
		BatchSize:  10_000,
		Interval:   cfg.Interval,
		MinBackoff: cfg.MinBackoff,
		MaxBackoff: cfg.MaxBackoff,
		Timeout:    cfg.WriteTimeout,
		LogEvery:   10 * time.Second,
		Logger:     log,
		Metrics: queue.Metrics{
			Sent:    set.NewCounter("presence_index_ids_written_total"),
			Dropped: x.dropped,
			Errors:  x.errs,
		},
	}, func(id string) string { return id }, x.write)
	set.NewGauge("presence_index_ids_pending", func() float64 { return float64(x.q.Len()) })
	return x, nil
}

// Metrics is the set the index's metrics are in (presence_index_*).
func (x *Index) Metrics() *metrics.Set { return x.set }

// Namespace is the prefix of every key of the index: {KeyPrefix}index:.
func (c IndexConfig) Namespace() string { return c.KeyPrefix + "index:" }

// Key is the set of partition p.
func (x *Index) Key(p int) string { return x.cfg.KeyPrefix + "index:" + strconv.Itoa(p) }

// KeyOf is the set of the partition of device id: the Redis sink's
// IndexKeyOf, so that a decommissioned device leaves the index.
func (x *Index) KeyOf(id string) string { return x.Key(x.partitionOf(id)) }

// HandleTransitions notes the devices that came online.
func (x *Index) HandleTransitions(batch []engine.Transition) {
	n := 0
	x.q.PushFunc(len(batch), func(i int) (string, bool) {
		online := batch[i].To == engine.StatusOnline
		if online {
			n++
		}
		return batch[i].ID, online
	})
	x.onlineSeen.Add(uint64(n))
}

// BeforeKeys is the Redis sink's BeforeWrite (writeback/redis
// Config.BeforeWrite) for an index that is eng's transition sink: it has
// eng deliver the transitions queued so far, then writes the index. A
// device is marked dirty and its online transition queued at the same
// moment, so by then the index has every device of the batch about to be
// written that came online, and writes it before the keys. Without it, a
// device drained within one engine tick of coming online could reach
// Redis before its index entry and, after a kill -9, be missed by a
// restart that reads the index. (Not covered: a device whose transition
// the engine is coalescing because the sinks fell a whole queue behind;
// the index is then rebuilt by the next full scan.)
//
// It has eng deliver only when an online transition queued so far has not
// reached the index yet (Engine.OnlineQueued against the ones the index
// counted): while a sink after the index makes the engine's delivery wait
// (an event destination pushing back), a flush of devices that went offline
// (a mass expiry) does not wait with it.
func (x *Index) BeforeKeys(eng interface {
	Deliver() int
	OnlineQueued() uint64
}) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		if x.onlineSeen.Load() < eng.OnlineQueued() {
			eng.Deliver()
		}
		return x.Flush(ctx)
	}
}

// Hold makes the index wait, once started, until ch is closed before it
// writes (Flush and Close do not wait). Call it before Start.
func (x *Index) Hold(ch <-chan struct{}) { x.q.Hold(ch) }

// Start starts writing the pending ids every Interval, retrying with
// backoff while Redis fails.
func (x *Index) Start(ctx context.Context) error { return x.q.Start(ctx) }

// Flush writes the pending ids now; on failure they stay pending. When it
// returns nil, every id pending when it was called is in Redis, whoever
// wrote it.
func (x *Index) Flush(ctx context.Context) error { return x.q.Flush(ctx) }

// Close stops accepting ids and writes what is pending within ctx.
func (x *Index) Close(ctx context.Context) error { return x.q.Close(ctx) }

// write adds one batch of ids (SADD per partition, one pipeline): the
// queue's send.
func (x *Index) write(ctx context.Context, ids []string) error {
	byPart := map[int][]any{}
	for _, id := range ids {
		p := x.partitionOf(id)
		byPart[p] = append(byPart[p], id)
	}
	pipe := x.client.Pipeline()
	for p, members := range byPart {
		pipe.SAdd(ctx, x.Key(p), members...)
	}
	x.flushes.Inc()
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("redis index: %w", err)
	}
	if x.dropped.Get() > 0 { // an id was lost: the next start must scan
		x.client.Del(ctx, x.completeKey())
	}
	return nil
}

// Devices calls fn with the stored state of every device indexed in the
// given partitions, in batches, read from store, and removes from the
// index the ids whose keys have expired. fn runs on the caller's
// goroutine.
func (x *Index) Devices(ctx context.Context, store Store, partitions []int, fn func([]engine.DeviceState) error) error {
	return readStored(ctx, store, x.walkSets(partitions), x.prune, fn)
}

// completeKey marks an index that holds every device with keys, so that
// restart recovery may read it instead of walking the keyspace.
func (x *Index) completeKey() string { return x.cfg.KeyPrefix + "index:complete" }

// Complete reports whether the index holds every stored device: it was
// filled from a full scan (Fill) and has dropped no id since.
func (x *Index) Complete(ctx context.Context) (bool, error) {
	if x.dropped.Get() > 0 {
		return false, nil
	}
	n, err := x.client.Exists(ctx, x.completeKey()).Result()
	return n == 1, err
}

// Fill adds ids (every device found by a full scan of the keyspace) to the
// index and marks it complete: later starts read the index. Called once
// after a start that had to scan (an index that was never filled, or that
// dropped ids).
func (x *Index) Fill(ctx context.Context, ids []string) error {
	const chunk = 10_000
	for lo := 0; lo < len(ids); lo += chunk {
		byPart := map[int][]any{}
		for _, id := range ids[lo:min(lo+chunk, len(ids))] {
			p := x.partitionOf(id)
			byPart[p] = append(byPart[p], id)
		}
		pipe := x.client.Pipeline()
		for p, members := range byPart {
			pipe.SAdd(ctx, x.Key(p), members...)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("redis index fill: %w", err)
		}
	}
	if x.dropped.Get() > 0 {
		return nil // ids were lost meanwhile: stay incomplete
	}
	return x.client.Set(ctx, x.completeKey(), "1", 0).Err()
}
