package redis

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	goredis "github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/wire"
)

// ReadStates reads the stored state of the given devices (MGETs in one
// pipeline). A device without a status key has Status StatusUnknown; one
// without a last-seen key a zero LastSeen. Restart recovery reads the
// devices its index names with it.
func (r *Sink) ReadStates(ctx context.Context, ids []string) ([]engine.DeviceState, error) {
	out := make([]engine.DeviceState, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	keys := make([]string, 0, 2*len(ids))
	for _, id := range ids {
		keys = append(keys, r.StatusKey(id))
	}
	for _, id := range ids {
		keys = append(keys, r.LastSeenKey(id))
	}
	// One MGET per kind and per chunk keeps each reply small; MGET across
	// slots fails on Cluster, so read key by key there.
	vals := make([]any, len(keys))
	if _, ok := r.client.(*goredis.ClusterClient); ok {
		pipe := r.client.Pipeline()
		cmds := make([]*goredis.StringCmd, len(keys))
		for i, k := range keys {
			cmds[i] = pipe.Get(ctx, k)
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
			return nil, fmt.Errorf("redis read: %w", err)
		}
		for i, c := range cmds {
			if v, err := c.Result(); err == nil {
				vals[i] = v
			}
		}
	} else {
		// One round trip: the MGETs of every chunk in one pipeline.
		const chunk = 1000
		pipe := r.client.Pipeline()
		cmds := make([]*goredis.SliceCmd, 0, (len(keys)+chunk-1)/chunk)
		for lo := 0; lo < len(keys); lo += chunk {
			cmds = append(cmds, pipe.MGet(ctx, keys[lo:min(lo+chunk, len(keys))]...))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, fmt.Errorf("redis read: %w", err)
		}
		for i, c := range cmds {
			copy(vals[i*chunk:], c.Val())
		}
	}
	for i, id := range ids {
		out[i].ID = id
		if s, ok := vals[i].(string); ok {
			out[i].Status = parseStatus(s)
		}
		if s, ok := vals[len(ids)+i].(string); ok {
			t, err := wire.ParseTime(s)
			if err != nil {
				return nil, fmt.Errorf("redis read %s: %w", keys[len(ids)+i], err)
			}
			out[i].LastSeen = t
		}
	}
	return out, nil
}

// Scan calls fn with the stored state of every device that has a status
// key under KeyPrefix, in no particular order, for restart recovery. It
// walks the keyspace with SCAN (on Cluster: every master). fn's error stops
// the scan and is returned.
func (r *Sink) Scan(ctx context.Context, fn func(engine.DeviceState) error) error {
	statusPrefix := r.cfg.KeyPrefix + "status:"
	match := wire.RedisMatch(statusPrefix)
	scanOne := func(ctx context.Context, c goredis.UniversalClient) error {
		return r.scanNode(ctx, c, match, statusPrefix, fn)
	}
	if cc, ok := r.client.(*goredis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, c *goredis.Client) error {
			return scanOne(ctx, c)
		})
	}
	return scanOne(ctx, r.client)
}

// Restart recovery reads a million devices in seconds by overlapping the
// round trips: one goroutine walks the keyspace, scanReaders read the
// states of the ids it found (one pipelined round trip per batch), and the
// caller's goroutine hands them to fn, in order of arrival.
const (
	scanBatch   = 5000 // ids per SCAN hint and per read
	scanReaders = 2
)

// scanNode is Scan on one node.
func (r *Sink) scanNode(ctx context.Context, c goredis.UniversalClient, match, statusPrefix string, fn func(engine.DeviceState) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	batches := make(chan []string, scanReaders)
	results := make(chan []engine.DeviceState, scanReaders)

	go func() {
		defer close(batches)
		it := c.Scan(ctx, 0, match, scanBatch).Iterator()
		ids := make([]string, 0, scanBatch)
		for it.Next(ctx) {
			ids = append(ids, strings.TrimPrefix(it.Val(), statusPrefix))
			if len(ids) == scanBatch {
				select {
				case batches <- ids:
				case <-ctx.Done():
					return
				}
				ids = make([]string, 0, scanBatch)
			}
		}
		if err := it.Err(); err != nil {
			cancel(fmt.Errorf("redis scan: %w", err))
			return
		}
		if len(ids) > 0 {
			select {
			case batches <- ids:
			case <-ctx.Done():
			}
		}
	}()
	var wg sync.WaitGroup
	for range scanReaders {
		wg.Go(func() {
			for ids := range batches {
				states, err := r.ReadStates(ctx, ids)
				if err != nil {
					cancel(err)
					return
				}
				select {
				case results <- states:
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
		for _, s := range states {
			if s.Status == engine.StatusUnknown {
				continue // expired between SCAN and MGET
			}
			if err := fn(s); err != nil {
				cancel(err)
				for range results { // let the readers finish
				}
				return err
			}
		}
	}
	return context.Cause(ctx)
}
