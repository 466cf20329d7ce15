package recovery

import (
	"context"
	"fmt"
	"strings"
	"sync"

	goredis "github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/wire"
)

// A rebuild reads a million devices in seconds by overlapping the round
// trips: one goroutine walks the ids (SCAN of the keyspace, or SSCAN of the
// index's sets), readers read the states of the ids it found (one pipelined
// round trip per batch), and the caller's goroutine hands them to the
// engine, in order of arrival.
const (
	readBatch = 5000 // ids per SCAN/SSCAN hint and per read
	readers   = 4
	// setsPerTrip is how many index sets one round trip scans (SSCANs
	// pipelined): a set holds a partition's devices, ~1,000 of a million,
	// so one SSCAN a round trip left the readers waiting for ids.
	setsPerTrip = 32
)

// walk emits device ids in batches; key names where a batch came from (an
// index set), "" for the keyspace. emit returns false when the read ended;
// it is safe for concurrent use (walkKeyspace calls it from every master).
type walk func(ctx context.Context, emit func(key string, ids []string) bool) error

// readStored reads the states of the ids walk emits from store and calls
// fn with the stored ones, on the caller's goroutine. The ids whose keys are
// gone (expired since they were found) are left out, and handed to gone if
// it is not nil. fn's error, or the first failure, ends the read and is
// returned.
func readStored(ctx context.Context, store Store, w walk, gone func(ctx context.Context, key string, ids []any),
	fn func([]engine.DeviceState) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	type batch struct {
		key string
		ids []string
	}
	batches := make(chan batch, readers)
	results := make(chan []engine.DeviceState, readers)
	go func() {
		defer close(batches)
		err := w(ctx, func(key string, ids []string) bool {
			select {
			case batches <- batch{key, ids}:
				return true
			case <-ctx.Done():
				return false
			}
		})
		if err != nil {
			cancel(err)
		}
	}()
	var wg sync.WaitGroup
	for range readers {
		wg.Go(func() {
			for b := range batches {
				states, err := store.ReadStates(ctx, b.ids)
				if err != nil {
					cancel(err)
					return
				}
				stored, expired := states[:0], []any(nil)
				for _, s := range states {
					if s.Status == engine.StatusUnknown {
						expired = append(expired, s.ID)
						continue
					}
					stored = append(stored, s)
				}
				if len(expired) > 0 && gone != nil {
					gone(ctx, b.key, expired)
				}
				select {
				case results <- stored:
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

// walkKeyspace walks every device that has a status key, statusPrefix
// followed by its id (SCAN; on Redis Cluster every master at once, each
// emitting its own batches).
func walkKeyspace(client goredis.UniversalClient, statusPrefix string) walk {
	match := wire.RedisMatch(statusPrefix)
	one := func(ctx context.Context, c goredis.UniversalClient, emit func(string, []string) bool) error {
		it := c.Scan(ctx, 0, match, readBatch).Iterator()
		ids := make([]string, 0, readBatch)
		for it.Next(ctx) {
			ids = append(ids, strings.TrimPrefix(it.Val(), statusPrefix))
			if len(ids) == readBatch {
				if !emit("", ids) {
					return nil
				}
				ids = make([]string, 0, readBatch)
			}
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("redis scan: %w", err)
		}
		if len(ids) > 0 {
			emit("", ids)
		}
		return nil
	}
	return func(ctx context.Context, emit func(string, []string) bool) error {
		cc, ok := client.(*goredis.ClusterClient)
		if !ok {
			return one(ctx, client, emit)
		}
		// In parallel: emit is safe for concurrent use (a channel send). A
		// master that fails stops the others: the read has failed.
		ctx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		err := cc.ForEachMaster(ctx, func(ctx context.Context, c *goredis.Client) error {
			err := one(ctx, c, emit)
			if err != nil {
				cancel(err)
			}
			return err
		})
		if cause := context.Cause(ctx); err == nil && cause != nil && cause != context.Canceled {
			err = cause
		}
		return err
	}
}

// walkSets walks the index sets of the given partitions (SSCAN, up to
// setsPerTrip sets a round trip), in batches of readBatch ids from any of
// them (their key is "": prune finds each id's set).
func (x *Index) walkSets(partitions []int) walk {
	type cursor struct {
		key string
		at  uint64
	}
	return func(ctx context.Context, emit func(string, []string) bool) error {
		todo := make([]cursor, 0, len(partitions))
		for _, p := range partitions {
			todo = append(todo, cursor{key: x.Key(p)})
		}
		ids := make([]string, 0, readBatch)
		cmds := make([]*goredis.ScanCmd, 0, setsPerTrip)
		for len(todo) > 0 {
			trip := todo[:min(len(todo), setsPerTrip)]
			pipe := x.client.Pipeline()
			cmds = cmds[:0]
			for _, c := range trip {
				cmds = append(cmds, pipe.SScan(ctx, c.key, c.at, "", readBatch))
			}
			if _, err := pipe.Exec(ctx); err != nil {
				return fmt.Errorf("redis index: %w", err)
			}
			var more []cursor // sets with members left
			for i, cmd := range cmds {
				members, next, _ := cmd.Result()
				for _, id := range members {
					ids = append(ids, id)
					if len(ids) == readBatch {
						if !emit("", ids) {
							return nil
						}
						ids = make([]string, 0, readBatch)
					}
				}
				if next != 0 {
					more = append(more, cursor{trip[i].key, next})
				}
			}
			todo = append(more, todo[len(trip):]...)
		}
		if len(ids) > 0 {
			emit("", ids)
		}
		return nil
	}
}

// prune removes from their index sets the ids whose keys are gone (key
// is "": a batch of walkSets holds ids of several sets), and their own
// timeouts (Index.TimeoutsKeyOf). The read and the removal are not
// one step: an id whose keys were written meanwhile (the device is live
// again, and its writer, which does not know of the removal, adds no
// entry) is put back, and keeps its own timeout.
func (x *Index) prune(ctx context.Context, store Store, ids []any) {
	bySet := map[string][]any{}
	for _, id := range ids {
		s, _ := id.(string)
		bySet[x.KeyOf(s)] = append(bySet[x.KeyOf(s)], id)
	}
	pipe := x.client.Pipeline()
	for key, members := range bySet {
		pipe.SRem(ctx, key, members...)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		x.errs.Inc() // pruned next time
		return
	}
	pipe = x.client.Pipeline()
	exists := make([]*goredis.IntCmd, len(ids))
	for i, id := range ids {
		s, _ := id.(string)
		exists[i] = pipe.Exists(ctx, store.StatusKey(s))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		// Unknown which keys exist: put every entry back (pruned next time).
		x.errs.Inc()
		back := x.client.Pipeline()
		for key, members := range bySet {
			back.SAdd(ctx, key, members...)
		}
		_, _ = back.Exec(ctx)
		return
	}
	gone := make([]string, 0, len(ids))
	back := x.client.Pipeline()
	for i, id := range ids {
		s, _ := id.(string)
		if exists[i].Val() == 0 {
			gone = append(gone, s)
			continue
		}
		back.SAdd(ctx, x.KeyOf(s), s)
	}
	if len(gone) < len(ids) {
		if _, err := back.Exec(ctx); err != nil {
			x.errs.Inc()
		}
	}
	if x.cfg.TimeoutsKey == "" || len(gone) == 0 {
		return
	}
	pipe = x.client.Pipeline()
	for _, id := range gone {
		pipe.HDel(ctx, x.TimeoutsKeyOf(id), id)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		x.errs.Inc()
	}
}
