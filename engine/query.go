package engine

import "time"

// state builds the public state of slot; the shard lock is held.
func (e *Engine) state(sh *shard, slot uint32) DeviceState {
	r := sh.rec(slot)
	return DeviceState{
		ID:       sh.id(slot),
		Status:   r.status(),
		LastSeen: fromNanos(r.lastSeen),
		Since:    fromNanos(r.since),
		Timeout:  time.Duration(e.timeouts.ns(r.tmo)),

		TimeoutSource: tmoSource(r.tmo),
	}
}

// Device returns the state of one device: ErrInvalidID or ErrNotFound if it
// has none.
func (e *Engine) Device(id string) (DeviceState, error) {
	sh, slot, err := e.lockDevice(id)
	if err != nil {
		return DeviceState{ID: id}, err
	}
	defer sh.mu.Unlock()
	return e.state(sh, slot), nil
}

// Devices appends to dst the state of each id, in order; an unknown or
// invalid id gets a state with only ID set (Status StatusUnknown).
func (e *Engine) Devices(ids []string, dst []DeviceState) []DeviceState {
	for _, id := range ids {
		st, _ := e.Device(id)
		dst = append(dst, st)
	}
	return dst
}

// Counts returns fleet totals. Each shard is counted under its lock; the
// shards are not frozen together, so under load the figures are a close
// approximation of one instant.
func (e *Engine) Counts() Counts {
	var c Counts
	for i := range e.shards {
		sh := &e.shards[i]
		sh.mu.Lock()
		c.Total += sh.n - sh.nDetached
		c.Online += sh.nOnline
		sh.mu.Unlock()
	}
	c.Offline = c.Total - c.Online
	return c
}

// rangeChunk is how many devices Range copies under one shard lock.
const rangeChunk = 1024

// Range calls fn with the state of every device until fn returns false. It
// copies devices out in chunks and calls fn without holding any lock, so fn
// may call the engine; devices added meanwhile may or may not be seen.
func (e *Engine) Range(fn func(DeviceState) bool) {
	buf := make([]DeviceState, 0, rangeChunk)
	for i := range e.shards {
		sh := &e.shards[i]
		for next := 0; ; {
			buf = buf[:0]
			sh.mu.Lock()
			for ; next < sh.n && len(buf) < rangeChunk; next++ {
				if sh.rec(uint32(next)).flags&flagDetached == 0 {
					buf = append(buf, e.state(sh, uint32(next)))
				}
			}
			done := next >= sh.n
			sh.mu.Unlock()
			for _, st := range buf {
				if !fn(st) {
					return
				}
			}
			if done {
				break
			}
		}
	}
}
