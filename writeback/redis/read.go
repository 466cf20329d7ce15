package redis

import (
	"context"
	"errors"
	"fmt"

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
			out[i].Status = engine.ParseStatus(s)
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
