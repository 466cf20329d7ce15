package engine

import "time"

// MarkOffline turns a known device offline at once (its Last Will, or an
// "offline" status message sent at at). A Last Will older than the device's
// last message is stale (the device has reconnected since) and is ignored.
func (e *Engine) MarkOffline(id string, at time.Time) error {
	return e.markOffline(id, at, CauseLastWill)
}

// SetStatus applies an explicit status given at at with cause (CauseAPI:
// an operator's or an integration's, POST /v1/devices/{id}/status) as a
// status message is applied: StatusOffline as MarkOffline (a known device
// only, ErrNotFound otherwise), StatusOnline as Touch (a new device comes
// online). Any other status is ErrInvalidStatus.
func (e *Engine) SetStatus(id string, s Status, at time.Time, cause Cause) error {
	switch s {
	case StatusOffline:
		return e.markOffline(id, at, cause)
	case StatusOnline:
		return e.touch(id, at.UnixNano(), noTimeout, cause)
	}
	return ErrInvalidStatus
}

func (e *Engine) markOffline(id string, at time.Time, cause Cause) error {
	sh, slot, err := e.lockDevice(id)
	if err != nil {
		return err
	}
	defer sh.mu.Unlock()
	r := sh.rec(slot)
	ns := at.UnixNano()
	if r.flags&flagOnline == 0 || ns < r.lastSeen {
		sh.st.stale++
		return nil
	}
	prev := r.since
	r.flags &^= flagOnline
	r.since = ns
	sh.nOnline--
	e.noteCoalescing(sh.transition(slot, StatusOnline, StatusOffline, ns, prev, cause))
	sh.markDirty(slot, changedStatus)
	return nil // the armed entry is dropped when it comes up
}

// SetTimeout gives a known device its own timeout (TimeoutDevice), in
// [MinTimeout, MaxTimeout]; a Touch's Timeout no longer changes it, until
// ClearTimeout. It takes effect at once: a device whose new deadline has
// passed goes offline (cause timeout, at that deadline) at the next Advance.
func (e *Engine) SetTimeout(id string, d time.Duration) error {
	if err := validTimeout(d); err != nil {
		return err
	}
	sh, slot, err := e.lockDevice(id)
	if err != nil {
		return err
	}
	defer sh.mu.Unlock()
	// Interned only for a known device: the table is never emptied.
	tmo, err := e.timeouts.index(d)
	if err != nil {
		return err
	}
	e.override(sh, slot, tmo)
	return nil
}

// override gives slot its own timeout of index tmo; the shard lock is held.
func (e *Engine) override(sh *shard, slot uint32, tmo uint16) {
	r := sh.rec(slot)
	if r.tmo&tmoDevice == 0 {
		if sh.patterns == nil {
			sh.patterns = make(map[uint32]uint16)
		}
		sh.patterns[slot] = r.tmo
	}
	e.setTmo(sh, slot, tmo|tmoDevice)
}

// setTmo changes slot's tmo, re-arming an online device for an earlier
// deadline (a later one is found when the old entry fires).
func (e *Engine) setTmo(sh *shard, slot uint32, tmo uint16) {
	r := sh.rec(slot)
	if r.tmo == tmo {
		return
	}
	r.tmo = tmo
	if r.flags&flagOnline != 0 {
		e.arm(sh, slot)
	}
	sh.markDirty(slot, changedStatus)
}

// ClearTimeout drops a known device's own timeout (SetTimeout): it returns
// to the timeout of its latest Touch that had one, else the default, at
// once. A device without one is left as it is.
func (e *Engine) ClearTimeout(id string) error {
	sh, slot, err := e.lockDevice(id)
	if err != nil {
		return err
	}
	defer sh.mu.Unlock()
	if sh.rec(slot).tmo&tmoDevice == 0 {
		return nil
	}
	tmo := sh.patterns[slot]
	delete(sh.patterns, slot)
	e.setTmo(sh, slot, tmo)
	return nil
}

// Decommission forgets a known device, as an operator asks (DELETE
// /v1/devices/{id}): it is no longer timed, counted, listed or found; the
// Sink gets a transition to StatusUnknown (cause api, at at) after the
// device's earlier ones, and every Tracker lists it once more, as a
// Removed state, so that the stores delete it. Its next message brings it
// back as a new device. Unlike Remove (a handoff), what it still had to
// report as coalesced is superseded by the removal.
func (e *Engine) Decommission(id string, at time.Time) error {
	sh, slot, err := e.lockDevice(id)
	if err != nil {
		return err
	}
	defer sh.mu.Unlock()
	sh.unexpire(slot)
	from := sh.rec(slot).reported() // what the Sink knows: a pending catch-up is superseded
	// Queued past the capacity if need be: one entry per device removed,
	// which an API call does, not the message rate.
	sh.queue = append(sh.queue, qent{at: at.UnixNano(), prev: sh.rec(slot).since, slot: slot, from: from, to: StatusUnknown, cause: CauseAPI})
	sh.st.removed++
	sh.detach(slot)
	sh.rec(slot).flags |= flagRemoved
	sh.markDirty(slot, changedStatus)
	return nil
}

// detach takes slot out of the live devices (Remove, Decommission); the
// shard lock is held.
func (sh *shard) detach(slot uint32) {
	r := sh.rec(slot)
	if r.flags&flagOnline != 0 {
		sh.nOnline--
	}
	if r.flags&flagResync != 0 {
		delete(sh.resync, slot)
	}
	delete(sh.patterns, slot)
	r.flags = flagDetached | r.flags&flagExpiredListed // the wheel drops its entry when it comes up
	sh.nDetached++
}
