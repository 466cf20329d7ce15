package writeback

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/backoff"
	"github.com/presence-dev/presence/internal/ratelog"
)

// RedisIndex keeps, for each cluster partition, the set of device ids seen
// in it: {KeyPrefix}index:{partition} (a Redis SET). A node that takes over
// a crashed node's partitions reads their sets (SSCAN) and the devices'
// keys, instead of walking the whole keyspace.
//
// It is written when a device comes online (first seen, or back after
// going offline), not per message: an id whose keys expired is dropped from
// its set by a rebuild, and must be added again when the device returns. It implements engine.Sink and never blocks: new ids wait in a set
// bounded by MaxPending (one entry per device, so a burst of a million new
// devices costs about 100 MB at most) and are flushed by Run in pipelines.
// Ids whose status key has expired are removed when a rebuild reads them.
// The sets have no TTL: they hold every device seen, which is bounded by the
// fleet (about 10 bytes per id in Redis).
type RedisIndex struct {
	client      redis.UniversalClient
	prefix      string
	partitionOf func(id string) int
	maxPending  int
	log         *slog.Logger
	lim         *ratelog.Limiter[string]

	// flushMu makes a Flush wait for one in flight: "the index is written"
	// must not be answered while another caller's SADD of the same ids is
	// still on its way (or about to fail and put them back).
	flushMu sync.Mutex
	mu      sync.Mutex
	pending map[string]struct{}
	closed  bool

	set                           *metrics.Set
	flushes, added, dropped, errs *metrics.Counter
}

// NewRedisIndex builds an index under keyPrefix (the sink's, e.g.
// "device:") with the cluster's partition function. maxPending <= 0 means
// 1<<20.
func NewRedisIndex(client redis.UniversalClient, keyPrefix string, partitionOf func(string) int, maxPending int, log *slog.Logger, set *metrics.Set) *RedisIndex {
	if maxPending <= 0 {
		maxPending = 1 << 20
	}
	if log == nil {
		log = slog.Default()
	}
	if set == nil {
		set = metrics.NewSet()
	}
	x := &RedisIndex{
		client: client, prefix: keyPrefix, partitionOf: partitionOf, maxPending: maxPending,
		log: log, lim: ratelog.New[string](10*time.Second, nil), pending: map[string]struct{}{}, set: set,
		flushes: set.NewCounter("presence_index_flushes_total"),
		added:   set.NewCounter("presence_index_ids_written_total"),
		dropped: set.NewCounter("presence_index_ids_dropped_total"),
		errs:    set.NewCounter("presence_index_errors_total"),
	}
	set.NewGauge("presence_index_ids_pending", func() float64 {
		x.mu.Lock()
		defer x.mu.Unlock()
		return float64(len(x.pending))
	})
	return x
}

// Metrics is the set the index's metrics are in (presence_index_*).
func (x *RedisIndex) Metrics() *metrics.Set { return x.set }

// Key is the set of partition p.
func (x *RedisIndex) Key(p int) string { return x.prefix + "index:" + strconv.Itoa(p) }

// HandleTransitions notes the devices that came online.
func (x *RedisIndex) HandleTransitions(batch []engine.Transition) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for i := range batch {
		if batch[i].To != engine.StatusOnline || x.closed {
			continue
		}
		if len(x.pending) >= x.maxPending {
			x.dropped.Inc()
			continue
		}
		x.pending[batch[i].ID] = struct{}{}
	}
}

// Run writes pending ids every interval until ctx is done, retrying with
// backoff while Redis fails.
func (x *RedisIndex) Run(ctx context.Context) error {
	const interval = 500 * time.Millisecond
	failures := 0
	for {
		wait := interval
		if failures > 0 {
			wait = backoff.Delay(interval, 15*time.Second, failures)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		if err := x.Flush(ctx); err != nil {
			failures++
			if ok, n := x.lim.Allow("flush"); ok {
				x.log.Warn("writeback: device index flush failed, retrying", "err", err, "suppressed", n)
			}
			continue
		}
		failures = 0
	}
}

// Flush writes the pending ids (SADD per partition, one pipeline); on
// failure they stay pending. When it returns nil, every id pending when it
// was called is in Redis, whoever wrote it.
func (x *RedisIndex) Flush(ctx context.Context) error {
	x.flushMu.Lock()
	defer x.flushMu.Unlock()
	x.mu.Lock()
	ids := make([]string, 0, len(x.pending))
	for id := range x.pending {
		ids = append(ids, id)
	}
	clear(x.pending)
	x.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
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
		x.errs.Inc()
		x.mu.Lock()
		for _, id := range ids {
			if len(x.pending) < x.maxPending {
				x.pending[id] = struct{}{}
			}
		}
		x.mu.Unlock()
		return fmt.Errorf("redis index: %w", err)
	}
	x.added.Add(len(ids))
	if x.dropped.Get() > 0 { // an id was lost: the next start must scan
		x.client.Del(ctx, x.completeKey())
	}
	return nil
}

// Close stops accepting ids and writes what is pending within ctx.
func (x *RedisIndex) Close(ctx context.Context) error {
	x.mu.Lock()
	x.closed = true
	x.mu.Unlock()
	var err error
	for {
		if err = x.Flush(ctx); err == nil || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Devices calls fn with the stored state of every device indexed in the
// given partitions, in batches, and removes from the index the ids whose
// keys have expired. It reads the devices through sink (same key prefix),
// overlapping the round trips as Redis.Scan does: one goroutine walks the
// sets (SSCAN), scanReaders read the states, and fn runs on the caller's
// goroutine.
func (x *RedisIndex) Devices(ctx context.Context, sink *Redis, partitions []int, fn func([]engine.DeviceState) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	type batch struct {
		key string
		ids []string
	}
	batches := make(chan batch, scanReaders)
	results := make(chan []engine.DeviceState, scanReaders)
	go func() {
		defer close(batches)
		for _, p := range partitions {
			key := x.Key(p)
			var cursor uint64
			for {
				ids, next, err := x.client.SScan(ctx, key, cursor, "", scanBatch).Result()
				if err != nil {
					cancel(fmt.Errorf("redis index %s: %w", key, err))
					return
				}
				if len(ids) > 0 {
					select {
					case batches <- batch{key, ids}:
					case <-ctx.Done():
						return
					}
				}
				if cursor = next; cursor == 0 {
					break
				}
			}
		}
	}()
	var wg sync.WaitGroup
	for range scanReaders {
		wg.Go(func() {
			for b := range batches {
				states, err := sink.ReadStates(ctx, b.ids)
				if err != nil {
					cancel(err)
					return
				}
				live, gone := states[:0], []any{}
				for _, s := range states {
					if s.Status == engine.StatusUnknown {
						gone = append(gone, s.ID)
						continue
					}
					live = append(live, s)
				}
				if len(gone) > 0 && x.client.SRem(ctx, b.key, gone...).Err() != nil {
					x.errs.Inc() // pruned next time
				}
				select {
				case results <- live:
				case <-ctx.Done():
					return
				}
			}
		})
	}
	go func() {
		wg.Wait()
		close(results)
	}()
	for states := range results {
		if err := fn(states); err != nil {
			cancel(err)
			for range results { // let the readers finish
			}
			return err
		}
	}
	return context.Cause(ctx)
}

// completeKey marks an index that holds every device with keys, so that
// restart recovery may read it instead of walking the keyspace.
func (x *RedisIndex) completeKey() string { return x.prefix + "index:complete" }

// Complete reports whether the index holds every stored device: it was
// filled from a full scan (Fill) and has dropped no id since.
func (x *RedisIndex) Complete(ctx context.Context) (bool, error) {
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
func (x *RedisIndex) Fill(ctx context.Context, ids []string) error {
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
