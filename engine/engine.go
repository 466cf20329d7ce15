package engine

import (
	"context"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"github.com/presence-dev/presence/internal/lifecycle"
)

// Engine holds the presence state of every device. All methods are safe for
// concurrent use. New builds one; Start runs its clock; nothing else starts
// goroutines.
type Engine struct {
	cfg       Config
	seed      maphash.Seed
	shards    []shard
	views     []atomic.Pointer[shardView] // by shard; apart from the locks
	shardBits uint
	epoch     int64 // unix ns of wheel tick 0
	gran      int64 // ns per wheel tick (Tick/4)
	timeouts  *timeoutTable
	now       func() time.Time
	log       *slog.Logger

	rejected   atomic.Uint64 // invalid ids, counted off the shard locks
	coalescing atomic.Bool   // logged once per episode

	advanceMu sync.Mutex   // one Advance at a time; guards need
	need      bucketCounts // a cascade's scratch (wheel.reserve)

	deliverMu sync.Mutex // one Deliver at a time; guards the buffers below
	pend      []pending
	batch     []Transition
	ids       idBuf // the batch's id strings

	trackMu  sync.Mutex
	trackers int

	groups sync.Pool // *touchGroups

	run         lifecycle.Runner // the clock and the deliverer (Start, Close)
	deliverWake chan struct{}    // cap 1: the clock advanced, Deliver has work
}

// pending is a transition copied out of a shard, still without its string id.
type pending struct {
	qent
	idWord    *uint64 // the record's: never changes once the device is added
	coalesced bool
}

// New validates cfg and builds an engine whose wheel starts at cfg.Now().
func New(cfg Config) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	e := &Engine{
		cfg:       cfg,
		seed:      maphash.MakeSeed(),
		shards:    make([]shard, cfg.Shards),
		views:     make([]atomic.Pointer[shardView], cfg.Shards),
		shardBits: uint(bits.TrailingZeros(uint(cfg.Shards))),
		gran:      int64(cfg.Tick / 4),
		timeouts:  newTimeoutTable(cfg.DefaultTimeout),
		now:       cfg.Now,
		log:       cfg.Logger,

		deliverWake: make(chan struct{}, 1),

		// Deliver's buffers are sized once, for a batch: a burst of any
		// size goes through them a batch at a time, taking no memory of
		// its own.
		pend:  make([]pending, 0, cfg.BatchSize),
		batch: make([]Transition, 0, cfg.BatchSize),
	}
	if e.now == nil {
		e.now = time.Now
	}
	if e.log == nil {
		e.log = slog.Default()
	}
	e.epoch = e.now().UnixNano()
	for i := range e.shards {
		e.shards[i].queueCap = cfg.QueueCapacity / cfg.Shards
		e.shards[i].view = &e.views[i]
		e.shards[i].publish()
	}
	e.groups.New = func() any {
		return &touchGroups{count: make([]int, cfg.Shards), start: make([]int, cfg.Shards)}
	}
	return e, nil
}

func (e *Engine) hash(id string) uint64 { return maphash.String(e.seed, id) }

func (e *Engine) shardOf(h uint64) *shard {
	return &e.shards[h>>(64-e.shardBits)&(1<<e.shardBits-1)]
}

// tickCeil is the first wheel tick at or after unix time ns.
func (e *Engine) tickCeil(ns int64) uint64 {
	if ns <= e.epoch {
		return 0
	}
	return uint64((ns - e.epoch + e.gran - 1) / e.gran)
}

func toNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

// deadline is when r goes offline if it stays silent, in unix ns.
func (e *Engine) deadline(r *rec) int64 { return r.lastSeen + e.timeouts.ns(r.tmo) }

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
			if cause == CauseHandoff && d.Status == StatusOnline {
				// The old owner heard a message this engine did not: it is
				// applied as that message was, so a record this engine
				// timed out meanwhile (its node frozen, or cut off, while
				// the device talked elsewhere) comes back online, cause
				// handoff, rather than be written offline at the newer
				// last-seen time.
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

// Deliver hands every queued transition to the sink, in batches, and returns
// how many it delivered. Per device, transitions arrive in the order they
// happened. Coalesced devices get their catch-up transition after the queue
// of their shard. Deliver calls the sink without holding shard locks.
func (e *Engine) Deliver() int {
	e.deliverMu.Lock()
	defer e.deliverMu.Unlock()
	total := 0
	for i := range e.shards {
		total += e.deliverShard(&e.shards[i])
	}
	total += e.flushBatch()
	if total > 0 && e.coalescing.Load() && e.backlog() == 0 {
		e.coalescing.Store(false)
		e.log.Info("engine: sink caught up, coalescing ended")
	}
	return total
}

// keepQueue is the largest queue capacity a shard keeps once delivered.
const keepQueue = 256

// deliverRounds bounds the work one Deliver does on one shard that keeps
// receiving transitions, so that the other shards get their turn.
const deliverRounds = 64

func (e *Engine) deliverShard(sh *shard) int {
	delivered := 0
	for round := 0; round < deliverRounds; round++ {
		sh.mu.Lock()
		if len(sh.queue) == 0 && len(sh.expired) == 0 && len(sh.resync) == 0 {
			sh.mu.Unlock()
			return delivered
		}
		e.pend = e.pend[:0]
		for _, q := range sh.queue {
			r := sh.rec(q.slot)
			e.pend = append(e.pend, pending{qent: q, idWord: &r.idWord})
		}
		sh.queue = sh.queue[:0]
		if cap(sh.queue) > keepQueue {
			sh.queue = nil // a burst is over: give the memory back
		}
		// Timeouts after the queue: a device's transitions queued before
		// its timeout are there, none after it (unexpire). A batch of them
		// a round; those left wait listed, in order, and the coalesced
		// devices below wait behind them.
		n := min(len(sh.expired), e.cfg.BatchSize)
		for _, slot := range sh.expired[:n] {
			r := sh.rec(slot)
			r.flags &^= flagExpiredListed
			if r.flags&flagExpired == 0 {
				continue // turned into a queue entry, delivered above or before
			}
			r.flags &^= flagExpired
			sh.nExpired--
			e.pend = append(e.pend, pending{
				qent:   qent{at: r.since, slot: slot, from: StatusOnline, to: StatusOffline, cause: CauseTimeout},
				idWord: &r.idWord,
			})
		}
		if sh.expired = sh.expired[n:]; len(sh.expired) == 0 {
			// Drained: the list, often a fired wheel bucket, goes back to
			// the GC (an expiry's next bucket becomes the next list).
			sh.expired = nil
			e.pendResync(sh)
		}
		sh.st.delivered += uint64(len(e.pend))
		arena := sh.arena // immutable below its length: safe to read unlocked
		sh.mu.Unlock()

		for _, p := range e.pend {
			e.batch = append(e.batch, Transition{
				ID:        e.ids.str(p.idWord, arena),
				From:      p.from,
				To:        p.to,
				At:        fromNanos(p.at),
				PrevSince: fromNanos(p.prev),
				Cause:     p.cause,
				Coalesced: p.coalesced,
			})
			if len(e.batch) >= e.cfg.BatchSize {
				delivered += e.flushBatch()
			}
		}
	}
	return delivered
}

// pendResync copies the coalesced devices' catch-ups out of sh into
// e.pend, a chunk at a time; those left keep their flag so that their
// later transitions stay behind this catch-up. The shard lock is held.
func (e *Engine) pendResync(sh *shard) {
	budget := e.cfg.ChunkSize
	for slot, rs := range sh.resync {
		if budget == 0 {
			break
		}
		budget--
		delete(sh.resync, slot)
		r := sh.rec(slot)
		r.flags &^= flagResync
		from, to := r.reported(), r.status()
		if from == to {
			continue // the changes cancelled out: counted as collapsed
		}
		r.setReported(to)
		sh.st.resynced++
		e.pend = append(e.pend, pending{
			qent:   qent{at: rs.at, slot: slot, from: from, to: to, cause: rs.cause},
			idWord: &r.idWord, coalesced: true,
		})
	}
	if len(sh.resync) == 0 {
		sh.resync = nil // give a large map back
	}
}

func (e *Engine) flushBatch() int {
	n := len(e.batch)
	if n == 0 {
		return 0
	}
	if e.cfg.Sink != nil {
		e.cfg.Sink.HandleTransitions(e.batch)
	}
	clear(e.batch) // drop the id strings
	e.batch = e.batch[:0]
	return n
}

func (e *Engine) backlog() int {
	n := 0
	for i := range e.shards {
		sh := &e.shards[i]
		sh.mu.Lock()
		n += len(sh.queue) + sh.nExpired + len(sh.resync)
		sh.mu.Unlock()
	}
	return n
}

// Start starts the engine's two goroutines: the clock, which advances the
// wheel every Tick/4, and the deliverer, which then hands the transitions
// to the Sink (Deliver). They run apart so that a Sink that makes the
// deliverer wait (an event destination pushing back) never makes a
// transition late: meanwhile the transitions queue, coalesced per device
// past Config.QueueCapacity, and the clock keeps time. Without Start the
// engine is driven by hand (Advance, Deliver), as tests do. It fails after
// Close or when called twice.
func (e *Engine) Start(ctx context.Context) error {
	if err := e.run.Start(ctx, e.clock, e.deliverer); err != nil {
		return fmt.Errorf("engine: %w", err)
	}
	return nil
}

func (e *Engine) clock(ctx context.Context) {
	lifecycle.Every(ctx, time.Duration(e.gran), func() {
		e.Advance(e.now())
		select {
		case e.deliverWake <- struct{}{}:
		default: // the deliverer has a wake-up pending (or is busy): it sees this tick's work too
		}
	})
}

// deliverer runs Deliver after every tick of the clock; a Deliver that
// takes longer than a tick is followed by the next at once.
func (e *Engine) deliverer(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.deliverWake:
		}
		e.Deliver()
	}
}

// Close stops the clock and the deliverer (waiting for a Deliver in
// progress), then makes a last Advance and delivers what is left: when it
// returns, every transition made so far has reached the Sink. Idempotent.
func (e *Engine) Close(ctx context.Context) error {
	return e.run.Close(ctx, func(context.Context) error {
		e.Advance(e.now())
		// A Deliver does at most deliverRounds batches a shard, and a round
		// of stale list entries delivers nothing: go on while anything is
		// pending, not while something was delivered.
		for e.backlog() > 0 {
			e.Deliver()
		}
		return nil
	})
}

// Stats are the engine's counters since New.
type Stats struct {
	Touches            uint64 // accepted touches
	Rejected           uint64 // inputs refused: invalid id or timeout
	Stale              uint64 // Last Wills ignored as older than the last message
	OnlineTransitions  uint64
	OfflineTransitions uint64
	Delivered          uint64 // transitions handed to the sink, catch-ups included
	Queued             int    // transitions waiting for Deliver
	// Coalesced counts transitions that found the queue full (or their
	// device already coalescing); Collapsed those of them that never reached
	// the sink individually because a later change of the same device
	// superseded them.
	Coalesced, Collapsed uint64
	Resyncing            int    // devices waiting for a catch-up transition
	Detached             int    // devices handed to another owner (Remove) or decommissioned
	Decommissioned       uint64 // Decommission calls that removed a device
	WheelEntries         int    // live and stale
}

// Stats returns the counters, summed shard by shard.
func (e *Engine) Stats() Stats {
	s := Stats{Rejected: e.rejected.Load()}
	var resynced uint64
	for i := range e.shards {
		sh := &e.shards[i]
		sh.mu.Lock()
		s.Touches += sh.st.touches
		s.Stale += sh.st.stale
		s.OnlineTransitions += sh.st.online
		s.OfflineTransitions += sh.st.offline
		s.Delivered += sh.st.delivered
		s.Queued += len(sh.queue) + sh.nExpired
		s.Coalesced += sh.st.coalesced
		resynced += sh.st.resynced
		s.Resyncing += len(sh.resync)
		s.Detached += sh.nDetached
		s.Decommissioned += sh.st.removed
		s.WheelEntries += sh.wheel.n
		sh.mu.Unlock()
	}
	s.Collapsed = s.Coalesced - resynced - uint64(s.Resyncing)
	return s
}
