package engine

import "time"

// noTimeout asks touch to keep the device's timeout.
const noTimeout = -1

// Touch records a message from device id received at at. The first message
// of an unknown device, or a message newer than the moment an offline device
// went offline, is an online transition. last_seen never moves backwards.
//
// A message older than the moment its offline device went offline (reordered
// or delayed input) advances last_seen but does not bring the device back:
// doing so would invent a flap. Likewise a message so old that its deadline
// has already passed does not bring an offline device back.
func (e *Engine) Touch(id string, at time.Time) error {
	return e.touch(id, at.UnixNano(), noTimeout, CauseTelemetry)
}

// touch is Touch with tmo the index of a new timeout, or noTimeout, and
// the cause of an online transition it makes.
func (e *Engine) touch(id string, at int64, tmo int, cause Cause) error {
	if !ValidID(id) {
		e.rejected.Add(1)
		return ErrInvalidID
	}
	h := e.hash(id)
	sh := e.shardOf(h)
	sh.mu.Lock()
	err := e.touchLocked(sh, id, h, 0, at, tmo, cause)
	sh.mu.Unlock()
	return err
}

// touchLocked applies one touch to a device of sh, whose lock is held; hint
// is where warm found it, if it did (see shard.find); cause is that of an
// online transition it makes.
func (e *Engine) touchLocked(sh *shard, id string, h uint64, hint uint32, at int64, tmo int, cause Cause) error {
	slot, ok := sh.find(id, h, hint)
	if ok && sh.rec(slot).flags&flagDetached != 0 {
		sh.reattach(slot)
		ok = false // from here on, a new device in its old slot
	} else if !ok {
		if sh.n >= MaxDevicesPerShard {
			return ErrFull
		}
		slot = sh.add(id, h, e.hash)
	}
	if !ok {
		r := sh.rec(slot)
		r.lastSeen, r.since, r.flags = at, at, flagOnline|r.flags&flagExpiredListed
		if tmo != noTimeout {
			r.tmo = uint16(tmo) | tmoPattern
		}
		sh.nOnline++
		sh.st.touches++
		e.noteCoalescing(sh.transition(slot, StatusUnknown, StatusOnline, at, 0, cause))
		e.arm(sh, slot)
		sh.markDirty(slot, changedNew)
		return nil
	}
	sh.st.touches++
	r := sh.rec(slot)
	pattern := uint16(tmo) | tmoPattern
	newTmo := tmo != noTimeout && r.tmo != pattern
	if r.flags&flagOnline != 0 && at <= r.lastSeen && !newTmo {
		return nil // the common case of reordered input: nothing to do
	}
	changed, what := false, uint8(changedStatus)
	if at > r.lastSeen {
		r.lastSeen = at
		changed, what = true, changedSeen
	}
	switch {
	case newTmo && r.tmo&tmoDevice != 0:
		if sh.patterns[slot] != pattern { // the override stays in force
			sh.patterns[slot] = pattern
		}
	case newTmo:
		r.tmo = pattern
		changed = true
		if r.flags&flagOnline != 0 {
			e.arm(sh, slot) // an earlier deadline needs an earlier entry
		}
	}
	if r.flags&flagOnline == 0 && at > r.since &&
		e.tickCeil(e.deadline(r)) >= sh.wheel.cur {
		sh.unexpire(slot)
		prev := r.since
		r.flags |= flagOnline
		r.since = at
		sh.nOnline++
		e.noteCoalescing(sh.transition(slot, StatusOffline, StatusOnline, at, prev, cause))
		e.arm(sh, slot)
		changed = true
	}
	if changed {
		sh.markDirty(slot, what)
	}
	return nil
}

// arm makes sure an online device has a wheel entry at or before its
// deadline. An entry already armed early enough is left alone (lazy re-arm:
// when it fires the real deadline is checked again).
func (e *Engine) arm(sh *shard, slot uint32) {
	r := sh.rec(slot)
	due := e.tickCeil(e.deadline(r))
	if r.flags&flagArmed != 0 {
		armed := sh.wheel.cur + uint64(r.armed-uint32(sh.wheel.cur))
		if armed <= due {
			return
		}
	}
	r.armed = uint32(sh.wheel.insert(slot, due))
	r.flags |= flagArmed
}

func (e *Engine) noteCoalescing(started bool) {
	if started && e.coalescing.CompareAndSwap(false, true) {
		e.log.Warn("engine: transition queue full, coalescing transitions per device until the sink catches up",
			"queue_capacity", e.cfg.QueueCapacity)
	}
}

// lockDevice validates id and returns its shard, locked, and its slot.
func (e *Engine) lockDevice(id string) (*shard, uint32, error) {
	if !ValidID(id) {
		e.rejected.Add(1)
		return nil, 0, ErrInvalidID
	}
	h := e.hash(id)
	sh := e.shardOf(h)
	sh.mu.Lock()
	slot, ok := sh.lookup(id, h)
	if !ok || sh.rec(slot).flags&flagDetached != 0 {
		sh.mu.Unlock()
		return nil, 0, ErrNotFound
	}
	return sh, slot, nil
}
