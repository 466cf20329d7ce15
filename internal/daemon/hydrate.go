package daemon

import (
	"context"
	"errors"
	"time"

	"github.com/presence-dev/presence/engine"
)

const (
	// hydrateChunk is how many stored devices are restored at once.
	hydrateChunk = 10_000
	// hydrateAttempts bounds how often start-up retries a Redis that does
	// not answer before serving without the stored state.
	hydrateAttempts = 6
)

// hydrate rebuilds the engine from Redis (restart recovery): devices whose
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

// hydrateOnce scans Redis into the engine and returns how many devices it
// restored. A retry after a partial scan is safe: Restore merges devices it
// already has.
func (d *Daemon) hydrateOnce(ctx context.Context) (int, error) {
	now := time.Now()
	buf := make([]engine.DeviceState, 0, hydrateChunk)
	n := 0
	restore := func() {
		if err := d.eng.Restore(buf, now); err != nil {
			d.log.Warn("some stored devices were skipped", "err", err)
		}
		n += len(buf)
		buf = buf[:0]
	}
	err := d.redisSink.Scan(ctx, func(st engine.DeviceState) error {
		if !d.owns(st.ID) {
			return nil // another node's (clustered)
		}
		buf = append(buf, st)
		if len(buf) == cap(buf) {
			restore()
		}
		return nil
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		return n, err
	}
	restore()
	return n, err
}
