package engine

import "time"

// Advance runs the timing wheel up to now: every online device whose
// deadline is at or before now (to within Tick/4) goes offline. Shards are
// processed one after another, each in chunks of Config.ChunkSize entries
// under its lock, so touches keep flowing during a mass expiry. Transitions
// are queued for Deliver. The clock (Start) calls Advance every Tick/4;
// tests call it with their own clock.
func (e *Engine) Advance(now time.Time) {
	ns := now.UnixNano()
	if ns < e.epoch {
		return
	}
	target := uint64((ns - e.epoch) / e.gran)
	e.advanceMu.Lock()
	defer e.advanceMu.Unlock()
	for i := range e.shards {
		e.advanceShard(&e.shards[i], target)
	}
}

func (e *Engine) advanceShard(sh *shard, target uint64) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	for {
		t, ok := sh.wheel.next()
		if !ok || t > target {
			if sh.wheel.cur <= target {
				sh.wheel.cur = target + 1
			}
			return
		}
		sh.wheel.cur = t
		for l := wheelLevels - 1; l >= 1; l-- {
			if t&(span(l)-1) == 0 {
				e.runBucket(sh, l, int(t>>(wheelBits*l))&wheelMask, t)
			}
		}
		e.runBucket(sh, 0, int(t)&wheelMask, t)
		sh.wheel.cur = t + 1
	}
}

// runBucket processes bucket (l, i) at tick t, the start of its span:
// level 0 fires its live entries, higher levels cascade them down. Entries
// added to the bucket while the lock is let go between chunks are processed
// too. The shard lock is held on entry and on return.
func (e *Engine) runBucket(sh *shard, l, i int, t uint64) {
	sp := uint32(span(l))
	for sh.wheel.occ[l]&(1<<i) != 0 {
		b := sh.wheel.take(l, i)
		// In a cascade, the entries due in bucket dst (when inPlace) stay in
		// b, as b[:moved], and b becomes that bucket.
		var dst bucketRef
		inPlace, moved := false, 0
		if l > 0 && len(b) > keepBucket {
			dst, inPlace = sh.wheel.reserve(&e.need, func(yield func(uint64) bool) {
				for _, slot := range b {
					if r := sh.rec(slot); r.flags&flagArmed != 0 && r.armed-uint32(t) < sp && !yield(t+uint64(r.armed-uint32(t))) {
						return
					}
				}
			})
		}
		expired := 0 // b[:expired]: the slots that timed out here, for sh.expired
		for k, slot := range b {
			if k > 0 && k%e.cfg.ChunkSize == 0 {
				sh.mu.Unlock() // let touches in
				sh.mu.Lock()
			}
			r := sh.rec(slot)
			if r.flags&flagArmed == 0 || r.armed-uint32(t) >= sp {
				continue // stale: the device was re-armed elsewhere or went offline
			}
			if l > 0 {
				at := t + uint64(r.armed-uint32(t))
				if inPlace {
					if dl, di := sh.wheel.place(at); dst == (bucketRef{dl, di}) {
						b[moved] = slot // moved <= k: in place
						moved++
						continue
					}
				}
				sh.wheel.insert(slot, at)
				continue
			}
			if e.fire(sh, slot) {
				b[expired] = slot // expired <= k: in place
				expired++
			}
		}
		if moved > 0 {
			sh.wheel.adopt(dst, b[:moved])
			continue
		}
		if expired > 0 && sh.expired == nil {
			// The bucket becomes the list: a mass expiry's transitions
			// then take no memory the wheel did not hold already.
			sh.expired = b[:expired]
			continue
		}
		sh.expired = append(sh.expired, b[:expired]...)
		sh.wheel.recycle(l, i, b)
	}
}

// fire handles a device whose armed tick has come: offline if its real
// deadline has passed, else armed again for the remainder (lazy re-arm).
// It reports whether the caller is to list slot in sh.expired (timeout).
func (e *Engine) fire(sh *shard, slot uint32) (list bool) {
	r := sh.rec(slot)
	r.flags &^= flagArmed
	if r.flags&flagOnline == 0 {
		return false
	}
	deadline := e.deadline(r)
	if e.tickCeil(deadline) > sh.wheel.cur {
		e.arm(sh, slot)
		return false
	}
	r.flags &^= flagOnline
	r.since = deadline
	sh.nOnline--
	list, coalescing := sh.timeout(slot)
	e.noteCoalescing(coalescing)
	sh.markDirty(slot, changedStatus)
	return list
}
