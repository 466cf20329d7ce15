package engine

import (
	"fmt"
	"time"
)

// Restore loads device records at start-up (from Redis, say), as of now.
// An online device whose deadline has passed gets its offline transition at
// once (cause restart, at its deadline); other online devices are armed for
// the time they have left; offline devices stay offline. A record with no
// known status (StatusUnknown) is online if its deadline is still ahead.
// Devices already known (a message raced the restore) keep their live status;
// only last_seen is merged (Adopt: see there). Records with an invalid id or timeout are skipped
// and reported in the error; the rest are restored.
func (e *Engine) Restore(recs []DeviceState, now time.Time) error {
	return e.restore(recs, now, CauseRestart)
}

// Adopt takes over devices from another owner (a cluster handoff): like
// Restore, but a device whose deadline passed in the gap turns offline with
// cause handoff. Devices this engine already times keep their live status,
// unless the old owner saw a newer message of an online device: that is
// applied as a message (an offline device here comes back online, cause
// handoff).
func (e *Engine) Adopt(recs []DeviceState, now time.Time) error {
	return e.restore(recs, now, CauseHandoff)
}

// Remove stops timing devices handed to another owner and forgets them: no
// more transitions, no longer counted, listed or found; what they had
// already queued is still delivered. A later message or Adopt brings a
// device back as new. Their records stay allocated (about 50 bytes each, so
// memory stays bounded by the fleet, not by how often devices move). It
// returns how many were removed; unknown and invalid ids are skipped.
func (e *Engine) Remove(ids ...string) int {
	n := 0
	for _, id := range ids {
		sh, slot, err := e.lockDevice(id)
		if err != nil {
			continue
		}
		sh.unexpire(slot) // delivered as it happened
		sh.detach(slot)   // a coalesced catch-up too: its new owner reports it from now on
		sh.mu.Unlock()
		n++
	}
	return n
}

// reattach makes a detached record a blank new device again; the caller
// fills it in. The shard lock is held.
func (sh *shard) reattach(slot uint32) {
	r := sh.rec(slot)
	r.flags, r.tmo, r.lastSeen, r.since = r.flags&flagExpiredListed, 0, 0, 0
	sh.nDetached-- // flagRemoved too is gone: a Tracker that still lists it writes its new state
}

func (e *Engine) restore(recs []DeviceState, now time.Time, cause Cause) error {
	var skipped int
	var first error
	nowNs := now.UnixNano()
	for i := range recs {
		if err := e.restoreOne(&recs[i], nowNs, cause); err != nil {
			skipped++
			if first == nil {
				first = fmt.Errorf("device %q: %w", recs[i].ID, err)
			}
		}
	}
	if skipped > 0 {
		return fmt.Errorf("engine: restore skipped %d of %d records, first: %w", skipped, len(recs), first)
	}
	return nil
}

func (e *Engine) restoreOne(d *DeviceState, now int64, cause Cause) error {
	if !ValidID(d.ID) {
		e.rejected.Add(1)
		return ErrInvalidID
	}
	var tmo uint16
	if d.Timeout != 0 && d.TimeoutSource != TimeoutDefault {
		ix, err := e.timeouts.index(d.Timeout)
		switch {
		case err != nil && d.TimeoutSource == TimeoutDevice:
			// An override the engine cannot hold (the table is full): the
			// device is restored on the default rather than not at all.
			e.rejected.Add(1)
		case err != nil:
			return err
		case d.TimeoutSource == TimeoutDevice:
			tmo = ix | tmoDevice
		default:
			tmo = ix | tmoPattern
		}
	}
	lastSeen := toNanos(d.LastSeen)
	h := e.hash(d.ID)
	sh := e.shardOf(h)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	slot, ok := sh.lookup(d.ID, h)
	switch {
	case ok && sh.rec(slot).flags&flagDetached != 0:
		sh.reattach(slot)
	case ok:
		if r := sh.rec(slot); lastSeen > r.lastSeen {
			if cause == CauseHandoff && d.Status == StatusOnline && lastSeen+e.timeouts.ns(r.tmo) > now {
				// The old owner heard a message this engine did not, and
				// its deadline is still ahead: it is applied as that
				// message was, so a record this engine timed out
				// meanwhile (its node frozen, or cut off, while the device
				// talked elsewhere) comes back online, cause handoff,
				// rather than be written offline at the newer last-seen
				// time. (It counts as a touch in Stats.)
				_ = e.touchLocked(sh, d.ID, h, slot+1, lastSeen, noTimeout, cause) // a known device: no error
			} else {
				r.lastSeen = lastSeen
				sh.markDirty(slot, changedSeen)
			}
		}
		if tmo&tmoDevice != 0 && sh.rec(slot).tmo&tmoDevice == 0 {
			e.override(sh, slot, tmo&tmoIndex) // an override outlives the race
		}
		return nil
	case sh.n >= MaxDevicesPerShard:
		return ErrFull
	default:
		slot = sh.add(d.ID, h, e.hash)
	}
	r := sh.rec(slot)
	r.lastSeen, r.tmo = lastSeen, tmo
	if tmo&tmoDevice != 0 {
		if sh.patterns == nil {
			sh.patterns = make(map[uint32]uint16)
		}
		sh.patterns[slot] = 0 // its pattern's comes back with its next message
	}
	deadline := e.deadline(r)
	alive := deadline > now
	// The store lacks the status of an unknown one: write it. An adopted
	// one is written by its new owner (here) whatever its state: its old
	// owner's Trackers skip it from the handover on.
	mark := d.Status == StatusUnknown || cause == CauseHandoff
	switch {
	case d.Status == StatusOnline && alive, d.Status == StatusUnknown && alive:
		r.flags |= flagOnline
		r.since = toNanos(d.Since)
		if r.since == 0 {
			r.since = lastSeen
		}
		r.setReported(StatusOnline)
		sh.nOnline++
		e.arm(sh, slot)
		if mark {
			sh.markDirty(slot, e.restoredChange(cause))
		}
	case d.Status == StatusOnline: // its deadline passed while we were away
		r.since = deadline
		r.setReported(StatusOnline)
		e.noteCoalescing(sh.transition(slot, StatusOnline, StatusOffline, deadline, toNanos(d.Since), cause))
		sh.markDirty(slot, e.restoredChange(cause))
	default: // offline, or unknown and expired
		r.since = toNanos(d.Since)
		if r.since == 0 {
			r.since = deadline
		}
		r.setReported(StatusOffline)
		if mark {
			sh.markDirty(slot, e.restoredChange(cause))
		}
	}
	return nil
}

// restoredChange is what a restored device's change is to the Trackers:
// for Restore its keys came from the store, which has its last-seen time
// and has it indexed; a device adopted from another owner (a handoff) may
// have been newer there than in the store, and may not be indexed yet.
func (e *Engine) restoredChange(cause Cause) uint8 {
	if cause == CauseHandoff {
		return changedNew
	}
	return changedSeen
}
