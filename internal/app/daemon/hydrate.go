package daemon

import (
	"context"
	"time"

	"github.com/presence-dev/presence/cluster"
	"github.com/presence-dev/presence/engine"
)

const (
	// hydrateChunk is how many stored devices are restored at once.
	hydrateChunk = 10_000
	// hydrateAttempts bounds how often start-up retries a Redis that does
	// not answer before serving without the stored state.
	hydrateAttempts = 6
)

// hydrate rebuilds the engine from Redis (restart recovery; see
// hydrateOnce for how it reads Redis): devices whose
// deadline passed while presenced was down turn offline at once (cause
// restart: Redis status, history row, event); the others are armed for the
// time they have left. It runs before ingest starts, so that no message can
// make a known device look new. If Redis stays unreachable (about a minute
// of retries) presenced starts without it and says so: devices are then
// rediscovered by their next message, and those that died meanwhile are not
// reported offline.
func (d *Daemon) hydrate(ctx context.Context) {
	if d.redisSink == nil || d.cfg.NoHydrate {
		d.hydrated.Store(true)
		return
	}
	start := time.Now()
	backoff := time.Second
	for attempt := 1; ; attempt++ {
		n, err := d.hydrateOnce(ctx)
		if err == nil {
			c := d.eng.Counts()
			d.log.Info("state rebuilt from Redis", "devices", n, "online", c.Online, "offline", c.Offline,
				"took", time.Since(start).Round(time.Millisecond))
			break
		}
		d.hydrateErr.Store(&err)
		if ctx.Err() != nil {
			return
		}
		if attempt == hydrateAttempts {
			d.log.Error("could not rebuild state from Redis: starting without it; devices are rediscovered by their next message",
				"err", err, "attempts", attempt)
			break
		}
		d.log.Warn("rebuilding state from Redis failed, retrying", "err", err, "attempt", attempt, "backoff", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff *= 2
	}
	d.hydrated.Store(true)
}

// hydrateOnce rebuilds the engine from Redis and returns how many devices
// it restored. When the device index is complete it reads the index (only
// the partitions this node owns, when clustered); otherwise it walks the
// keyspace and then fills the index, so that the next start is faster. A
// retry after a partial read is safe: Restore merges devices it already has.
func (d *Daemon) hydrateOnce(ctx context.Context) (int, error) {
	now := time.Now()
	n := 0
	restore := func(states []engine.DeviceState) {
		owned := states[:0]
		for _, st := range states {
			if d.owns(st.ID) { // another node's, when clustered
				owned = append(owned, st)
			}
		}
		if err := d.eng.Restore(owned, now); err != nil {
			d.log.Warn("some stored devices were skipped", "err", err)
		}
		n += len(owned)
	}
	if complete, err := d.index.Complete(ctx); err != nil {
		return 0, err
	} else if complete {
		err := d.index.Devices(ctx, d.redisSink, d.hydrateParts(), func(states []engine.DeviceState) error {
			restore(states)
			return nil
		})
		return n, err
	}

	buf := make([]engine.DeviceState, 0, hydrateChunk)
	var all []string // every stored device, for the index
	err := d.redisSink.Scan(ctx, func(st engine.DeviceState) error {
		all = append(all, st.ID)
		buf = append(buf, st)
		if len(buf) == cap(buf) {
			restore(buf)
			buf = buf[:0]
		}
		return nil
	})
	if err != nil {
		return n, err
	}
	restore(buf)
	if err := d.index.Fill(ctx, all); err != nil {
		d.log.Warn("could not fill the device index: the next start scans again", "err", err)
	}
	return n, nil
}

// hydrateParts are the partitions whose devices this node restores.
func (d *Daemon) hydrateParts() []int {
	if d.node != nil {
		return d.node.Table().Owned(d.node.Name())
	}
	parts := make([]int, cluster.DefaultPartitions)
	for i := range parts {
		parts[i] = i
	}
	return parts
}
