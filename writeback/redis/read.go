package redis

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/wire"
)

// ReadStates reads the stored state of the given devices (MGETs, or GETs
// on a Cluster, and an HMGET per timeouts hash, in one pipeline). A device without a status key has
// Status StatusUnknown; one without a last-seen key a zero LastSeen; one
// with its own timeout has it as Timeout, with TimeoutSource
// TimeoutDevice (a stored timeout outside the engine's range is ignored).
// Restart recovery reads the devices its index names with it.
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
	pipe := r.client.Pipeline()
	tmos := r.queueTimeouts(ctx, pipe, ids)
	if r.cluster {
		cmds := make([]*goredis.StringCmd, len(keys))
		for i, k := range keys {
			cmds[i] = pipe.Get(ctx, k)
		}
		_, _ = pipe.Exec(ctx) // the first error of any command: each is checked below
		for i, c := range cmds {
			v, err := c.Result()
			switch {
			case err == nil:
				vals[i] = v
			case !errors.Is(err, goredis.Nil): // a missing key is Nil; anything else fails the read
				return nil, fmt.Errorf("redis read: %w", err)
			}
		}
		for _, t := range tmos {
			if err := t.cmd.Err(); err != nil {
				return nil, fmt.Errorf("redis read: %w", err)
			}
		}
	} else {
		// One round trip: the MGETs of every chunk in one pipeline.
		const chunk = 1000
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
	for _, t := range tmos {
		for j, v := range t.cmd.Val() {
			if d, ok := parseOverride(v); ok && j < len(t.at) {
				out[t.at[j]].Timeout, out[t.at[j]].TimeoutSource = d, engine.TimeoutDevice
			}
		}
	}
	return out, nil
}

// timeoutsRead is the HMGET of one timeouts hash, and where in the ids of
// ReadStates each of its fields is.
type timeoutsRead struct {
	cmd *goredis.SliceCmd
	at  []int
}

// queueTimeouts adds to pipe an HMGET of ids' own timeouts per hash
// holding them: with the hashes per partition (the daemon's), a batch of
// restart recovery, whose ids come from up to 32 index sets, takes up to
// 32; a batch of a keyspace walk up to one per partition, 1,024.
func (r *Sink) queueTimeouts(ctx context.Context, pipe goredis.Pipeliner, ids []string) []timeoutsRead {
	byKey := map[string]int{} // hash -> its index in reads
	var reads []timeoutsRead
	var fields [][]any
	for i, id := range ids {
		key := r.TimeoutsKeyOf(id)
		k, ok := byKey[key]
		if !ok {
			k = len(reads)
			byKey[key] = k
			reads = append(reads, timeoutsRead{})
			fields = append(fields, nil)
		}
		reads[k].at = append(reads[k].at, i)
		fields[k] = append(fields[k], id)
	}
	for key, k := range byKey {
		reads[k].cmd = goredis.NewSliceCmd(ctx, append([]any{"hmget", key}, fields[k]...)...)
		_ = pipe.Process(ctx, reads[k].cmd)
	}
	return reads
}

// parseOverride reads a TimeoutsKey value: seconds within the engine's
// range.
func parseOverride(v any) (time.Duration, bool) {
	s, ok := v.(string)
	if !ok {
		return 0, false
	}
	sec, err := strconv.ParseFloat(s, 64)
	if err != nil || !(sec >= engine.MinTimeout.Seconds() && sec <= engine.MaxTimeout.Seconds()) {
		return 0, false
	}
	return time.Duration(sec * float64(time.Second)), true
}
