package recovery

import (
	"context"
	"fmt"
	"strconv"

	"github.com/VictoriaMetrics/metrics"
	goredis "github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/cluster"
	"github.com/presence-dev/presence/engine"
)

// IndexConfig configures the device index.
type IndexConfig struct {
	// KeyPrefix is the Redis sink's (e.g. "device:"): partition p's set is
	// {KeyPrefix}index:{p}, the completeness marker {KeyPrefix}index:complete.
	KeyPrefix string
	// TimeoutsKey, when set, names the hashes of the devices' own timeouts
	// (writeback/redis Config.TimeoutsKey): one per partition,
	// {TimeoutsKey}:{partition} (TimeoutsKeyOf, the Redis sink's
	// Config.TimeoutsKeyOf), so that Redis Cluster spreads them over its
	// slots like the index. A recovery that finds a device's keys gone
	// drops its field there too, with its index entry, and the first start
	// moves the fields of the one hash of earlier versions, TimeoutsKey
	// itself, into them (MoveTimeouts).
	TimeoutsKey string
	// Partitions is the cluster's partition count (cluster.DefaultPartitions
	// on every node): the index is laid out by partition so that a node
	// rebuilding some partitions reads only theirs.
	Partitions int
	// PartitionOf maps a device to its partition. Nil: cluster.PartitionOf
	// with Partitions (tests use a smaller function).
	PartitionOf func(id string) int
}

// DefaultIndexConfig returns the defaults documented on IndexConfig.
func DefaultIndexConfig() IndexConfig {
	return IndexConfig{
		KeyPrefix:  "device:",
		Partitions: cluster.DefaultPartitions,
	}
}

func (c IndexConfig) validate() error {
	if c.Partitions < 1 || c.Partitions > cluster.MaxPartitions {
		return fmt.Errorf("%w: Index.Partitions must be in [1, %d], got %d", ErrInvalidConfig, cluster.MaxPartitions, c.Partitions)
	}
	return nil
}

// Index names, for each cluster partition, the set of device ids stored
// in it: {KeyPrefix}index:{partition} (a Redis SET). Restart recovery and a
// node that takes over a crashed node's partitions read their sets (SSCAN)
// and the devices' keys, instead of walking the whole keyspace.
//
// The Redis sink writes it (writeback/redis Config.IndexKeyOf): a device
// new to the engine (engine.DeviceState.New) is added in the same pipeline
// as its keys, before them, so the index has every device whose keys
// are in Redis without the key writer waiting for anything else, and a
// decommissioned one leaves it with its keys. An id whose keys expired is
// dropped from its set by a read. The sets have no TTL: they hold every
// device seen, which is bounded by the fleet (about 10 bytes per id in
// Redis).
type Index struct {
	client      goredis.UniversalClient
	cfg         IndexConfig
	partitionOf func(string) int

	set  *metrics.Set
	errs *metrics.Counter // failed prunes (retried by the next read)
}

// NewIndex builds an index over client. It does no I/O. set may be nil (a
// new set).
func NewIndex(client goredis.UniversalClient, cfg IndexConfig, set *metrics.Set) (*Index, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if client == nil {
		return nil, fmt.Errorf("%w: nil Redis client", ErrInvalidConfig)
	}
	if set == nil {
		set = metrics.NewSet()
	}
	x := &Index{client: client, cfg: cfg, partitionOf: cfg.PartitionOf, set: set,
		errs: set.NewCounter("presence_index_errors_total")}
	if x.partitionOf == nil {
		parts := cfg.Partitions
		x.partitionOf = func(id string) int { return cluster.PartitionOf(id, parts) }
	}
	return x, nil
}

// Metrics is the set the index's metrics are in (presence_index_*).
func (x *Index) Metrics() *metrics.Set { return x.set }

// Namespace is the prefix of every key of the index: {KeyPrefix}index:.
func (c IndexConfig) Namespace() string { return c.KeyPrefix + "index:" }

// Key is the set of partition p.
func (x *Index) Key(p int) string { return x.cfg.KeyPrefix + "index:" + strconv.Itoa(p) }

// TimeoutsKeyOf is the hash holding device id's own timeout, that of its
// partition: {TimeoutsKey}:{partition}, {KeyPrefix}timeouts:{partition}
// without TimeoutsKey (whose fields a recovery then leaves alone).
func (x *Index) TimeoutsKeyOf(id string) string {
	base := x.cfg.TimeoutsKey
	if base == "" {
		base = x.cfg.KeyPrefix + "timeouts"
	}
	return base + ":" + strconv.Itoa(x.partitionOf(id))
}

// MoveTimeouts moves the devices' own timeouts from the one hash of
// earlier versions (IndexConfig.TimeoutsKey itself) into the hash of each
// device's partition, and deletes it. A field already in its partition's
// hash (written since) is kept. Safe to run on several nodes at once.
func (x *Index) MoveTimeouts(ctx context.Context) (int, error) {
	old := x.cfg.TimeoutsKey
	if old == "" {
		return 0, nil
	}
	moved := 0
	it := x.client.HScan(ctx, old, 0, "", 1000).Iterator()
	var kv []string
	flush := func() error {
		pipe := x.client.Pipeline()
		for i := 0; i+1 < len(kv); i += 2 {
			pipe.HSetNX(ctx, x.TimeoutsKeyOf(kv[i]), kv[i], kv[i+1])
		}
		_, err := pipe.Exec(ctx)
		moved += len(kv) / 2
		kv = kv[:0]
		return err
	}
	for it.Next(ctx) {
		kv = append(kv, it.Val())
		if len(kv) >= 2000 && len(kv)%2 == 0 {
			if err := flush(); err != nil {
				return moved, fmt.Errorf("redis: moving the timeouts of %s: %w", old, err)
			}
		}
	}
	if err := it.Err(); err != nil {
		return moved, fmt.Errorf("redis: reading the timeouts of %s: %w", old, err)
	}
	if err := flush(); err != nil {
		return moved, fmt.Errorf("redis: moving the timeouts of %s: %w", old, err)
	}
	if moved > 0 {
		if err := x.client.Del(ctx, old).Err(); err != nil {
			return moved, fmt.Errorf("redis: deleting %s: %w", old, err)
		}
	}
	return moved, nil
}

// KeyOf is the set of the partition of device id: the Redis sink's
// IndexKeyOf, which adds a new device there with its keys and takes a
// decommissioned one out.
func (x *Index) KeyOf(id string) string { return x.Key(x.partitionOf(id)) }

// Devices calls fn with the stored state of every device indexed in the
// given partitions, in batches, read from store, and removes from the
// index the ids whose keys have expired. fn runs on the caller's
// goroutine.
func (x *Index) Devices(ctx context.Context, store Store, partitions []int, fn func([]engine.DeviceState) error) error {
	prune := func(ctx context.Context, _ string, ids []any) { x.prune(ctx, store, ids) }
	return readStored(ctx, store, x.walkSets(partitions), prune, fn)
}

// completeKey marks an index that holds every device with keys, so that
// restart recovery may read it instead of walking the keyspace.
func (x *Index) completeKey() string { return x.cfg.KeyPrefix + "index:complete" }

// Complete reports whether the index holds every stored device: it was
// filled from a full scan (Fill), and the Redis sink has added every
// device since with its keys.
func (x *Index) Complete(ctx context.Context) (bool, error) {
	n, err := x.client.Exists(ctx, x.completeKey()).Result()
	return n == 1, err
}

// Fill adds ids (every device found by a full scan of the keyspace) to the
// index and marks it complete: later starts read the index. Called once
// after a start that had to scan (an index that was never filled).
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
	return x.client.Set(ctx, x.completeKey(), "1", 0).Err()
}
