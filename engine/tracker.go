package engine

import "fmt"

// Tracker tells one write-behind sink which devices changed since it last
// looked, without scanning all devices. Each device is listed at most once
// per tracker however often it changes (one bit per device and tracker), so
// the list is bounded by the device count, never by the message rate. A
// Tracker sees the changes made after it was created.
type Tracker struct {
	e      *Engine
	idx    int
	cursor int // the shard Drain resumes at, for fairness
}

// NewTracker creates a dirty tracker; an engine serves at most MaxTrackers.
func (e *Engine) NewTracker() (*Tracker, error) {
	e.trackMu.Lock()
	defer e.trackMu.Unlock()
	if e.trackers == MaxTrackers {
		return nil, fmt.Errorf("%w: at most %d", ErrTooManyTrackers, MaxTrackers)
	}
	t := &Tracker{e: e, idx: e.trackers}
	e.trackers++
	for i := range e.shards {
		sh := &e.shards[i]
		sh.mu.Lock()
		sh.trackMask |= 1 << t.idx
		sh.mu.Unlock()
	}
	return t, nil
}

// Drain appends to dst the current state of up to max changed devices and
// clears their mark: a device that changes again is listed again. What a
// sink fails to write it hands back with MarkDirty.
func (t *Tracker) Drain(dst []DeviceState, max int) []DeviceState {
	shards := t.e.shards
	for n := 0; n < len(shards) && max > 0; n++ {
		sh := &shards[t.cursor]
		sh.mu.Lock()
		d := &sh.dirty[t.idx]
		for ; d.head < len(d.items) && max > 0; max-- {
			slot := d.items[d.head]
			d.head++
			r := sh.rec(slot)
			bits := r.dirty >> t.idx
			r.dirty &^= (dirtyListed | dirtySeen | dirtyNew) << t.idx
			switch {
			case r.flags&(flagDetached|flagRemoved) == flagDetached|flagRemoved:
				dst = append(dst, DeviceState{ID: sh.id(slot), Removed: true})
				continue
			case r.flags&flagDetached != 0:
				max++ // handed over: its new owner writes it
				continue
			}
			st := t.e.state(sh, slot)
			st.StatusOnly = bits&dirtySeen == 0
			st.New = bits&dirtyNew != 0
			dst = append(dst, st)
		}
		if d.head == len(d.items) {
			d.items, d.head = d.items[:0], 0
			if cap(d.items) > 256 {
				// A burst is over: give the memory back. Per shard, so the
				// bound is low: 1M dirty devices over 256 shards leave
				// ~4,000 slots in each, 8 MB in all with two trackers.
				d.items = nil
			}
		}
		sh.mu.Unlock()
		if max > 0 {
			t.cursor = (t.cursor + 1) % len(shards)
		}
	}
	return dst
}

// MarkDirty lists devices again, typically those a failed write could not
// store; the next Drain reads their state as it is then (a decommissioned
// device's removal too, unless it came back meanwhile), whole: neither
// StatusOnly (the failed write may not have stored the last-seen time)
// nor without New. Unknown or invalid ids are ignored.
func (t *Tracker) MarkDirty(ids ...string) {
	for _, id := range ids {
		if !ValidID(id) {
			continue
		}
		h := t.e.hash(id)
		sh := t.e.shardOf(h)
		sh.mu.Lock()
		slot, ok := sh.lookup(id, h)
		if ok {
			r := sh.rec(slot)
			removed := r.flags&flagRemoved != 0 // with flagDetached
			if r.flags&flagDetached == 0 || removed {
				r.dirty |= (dirtySeen | dirtyNew) << t.idx
				if r.dirty&(dirtyListed<<t.idx) == 0 {
					r.dirty |= dirtyListed << t.idx
					sh.dirty[t.idx].items = append(sh.dirty[t.idx].items, slot)
				}
			}
		}
		sh.mu.Unlock()
	}
}

// MarkAll lists every device the engine holds again, whole, as MarkDirty
// does (decommissioned ones included: their removal is written again), and
// returns how many it listed. A sink calls it when its store may have lost
// writes it acknowledged: a failover to a replica the last writes had not
// reached yet, a restart without the data. Each shard is locked for one
// pass over its records.
func (t *Tracker) MarkAll() int {
	n := 0
	for i := range t.e.shards {
		sh := &t.e.shards[i]
		sh.mu.Lock()
		for slot := uint32(0); slot < uint32(sh.n); slot++ {
			r := sh.rec(slot)
			if r.flags&flagDetached != 0 && r.flags&flagRemoved == 0 {
				continue // handed over: its owner writes it
			}
			r.dirty |= (dirtySeen | dirtyNew) << t.idx
			if r.dirty&(dirtyListed<<t.idx) == 0 {
				r.dirty |= dirtyListed << t.idx
				sh.dirty[t.idx].items = append(sh.dirty[t.idx].items, slot)
			}
			n++
		}
		sh.mu.Unlock()
	}
	return n
}

// Len returns how many devices are waiting for this tracker.
func (t *Tracker) Len() int {
	n := 0
	for i := range t.e.shards {
		sh := &t.e.shards[i]
		sh.mu.Lock()
		n += sh.dirty[t.idx].len()
		sh.mu.Unlock()
	}
	return n
}
