package engine

import (
	"encoding/binary"
	"math/bits"
	"sync"
	"sync/atomic"
)

// rec is one device: 32 bytes, pointer-free, so the GC never scans the
// millions of them. An id of up to 8 bytes (the seed's integer ids) is kept
// in the record itself, so finding a device costs two cache misses (index
// cell, record), as a Go map does; a longer id lives in the shard's arena.
type rec struct {
	lastSeen int64  // unix ns of the newest message; 0 = never
	since    int64  // unix ns the current status began
	idWord   uint64 // see packID
	armed    uint32 // low 32 bits of the wheel tick armed for, if flagArmed
	tmo      uint16 // the device's timeout, an index into Engine.timeouts
	flags    uint8
	dirty    uint8 // three bits per Tracker: dirtyListed, dirtySeen, dirtyNew
}

// longID marks an idWord that holds arena offset and length, not the id.
const longID = 1 << 63

// packID packs an id of up to 8 bytes into a word, little-endian. Id bytes
// are never 0 and never have the top bit set, so the word also tells the
// length and can never have longID set.
func packID(id string) uint64 {
	var w uint64
	for i := len(id) - 1; i >= 0; i-- {
		w = w<<8 | uint64(id[i])
	}
	return w
}

// longWord is the idWord of an id longer than 8 bytes stored at off.
func longWord(off uint32, n int) uint64 { return longID | uint64(n)<<32 | uint64(off) }

// idString rebuilds an id from its record's idWord; arena is the shard's
// arena (or a copy of its header taken under the lock: bytes below its
// length never change).
func idString(word uint64, arena []byte) string {
	if word&longID != 0 {
		off, n := uint32(word), uint32(word>>32)&0xff
		return string(arena[off : off+n])
	}
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], word)
	return string(b[:(bits.Len64(word)+7)/8])
}

const (
	flagOnline   = 1 << iota
	flagArmed    // a live wheel entry exists at tick armed
	flagReported // the sink was told a status (else it knows none)
	flagReportedOnline
	flagResync // coalescing: later transitions go to shard.resync
	// flagDetached: Remove handed the device to another owner. Its record
	// and index cell stay (so a device that comes back reuses them and no
	// queued transition can ever point at another device), but it is not
	// timed, counted, listed or reported until a message or Adopt brings
	// it back.
	flagDetached
	// flagExpired: the device's timeout transition (online to offline at
	// since) waits in shard.expired, not in the queue.
	flagExpired
	// flagExpiredListed: the slot is in shard.expired (flagExpired may be
	// cleared since, see unexpire), so it is not listed twice.
	flagExpiredListed
)

// flagRemoved, with flagDetached: the device was decommissioned, not
// handed over, so its Trackers list it as Removed (again after a failed
// write) until it comes back. A detached record reports nothing, so the
// bit is free.
const flagRemoved = flagReported

func (r *rec) status() Status {
	if r.flags&flagOnline != 0 {
		return StatusOnline
	}
	return StatusOffline
}

func (r *rec) reported() Status {
	switch {
	case r.flags&flagReported == 0:
		return StatusUnknown
	case r.flags&flagReportedOnline != 0:
		return StatusOnline
	default:
		return StatusOffline
	}
}

func (r *rec) setReported(s Status) {
	r.flags |= flagReported
	if s == StatusOnline {
		r.flags |= flagReportedOnline
	} else {
		r.flags &^= flagReportedOnline
	}
}

// qent is a transition waiting for the sink: 24 bytes, pointer-free.
type qent struct {
	at    int64
	prev  int64 // when the from status began (Transition.PrevSince); 0: unknown
	slot  uint32
	from  Status
	to    Status
	cause Cause
	_     uint8
}

// resyncEnt is the latest transition of a device whose transitions are being
// coalesced.
type resyncEnt struct {
	at    int64
	cause Cause
}

// dirtyList is a FIFO of slots dirty for one tracker.
type dirtyList struct {
	items []uint32
	head  int
}

func (d *dirtyList) len() int { return len(d.items) - d.head }

// shardStats are counted under the shard lock: no atomics on the hot path.
type shardStats struct {
	touches, online, offline, stale, coalesced, resynced, delivered, removed uint64
}

// shard is one independently locked part of the engine.
type shard struct {
	mu sync.Mutex

	pages [][]rec  // records by slot, in pages of pageSize: no copying on growth
	n     int      // devices in the shard
	arena []byte   // ids over 8 bytes, append-only: written bytes never change
	cells []uint32 // open-addressing index: tag<<24 | slot+1, 0 = empty
	wheel wheel
	queue []qent
	// expired lists the slots whose timeout transition is due for the
	// Sink, 4 bytes each where a queue entry takes 16: a mass expiry
	// lists millions (see timeout, runBucket).
	expired  []uint32
	nExpired int // entries of expired still pending (flagExpired): the others were unexpired
	resync   map[uint32]resyncEnt
	dirty    [MaxTrackers]dirtyList
	// patterns holds, for each device with its own timeout (tmoDevice),
	// the tmo it returns to on ClearTimeout: overrides are few, so the
	// 32-byte record spends nothing on them.
	patterns map[uint32]uint16

	view *atomic.Pointer[shardView] // Engine.views[this shard]

	trackMask uint8 // the bits of the trackers that exist
	queueCap  int
	nOnline   int
	nDetached int
	st        shardStats

	_ [64]byte // keep neighbouring shards' locks off this cache line
}

const (
	slotBits = 24
	slotMask = 1<<slotBits - 1
	pageBits = 9
	pageSize = 1 << pageBits // 16 KiB of records
)

// rec returns the record of slot.
func (sh *shard) rec(slot uint32) *rec { return &sh.pages[slot>>pageBits][slot&(pageSize-1)] }

// tagOf takes 8 hash bits that neither the shard nor the index uses.
func tagOf(h uint64) uint32 { return uint32(h>>40) & 0xff }

// lookup finds id, whose hash is h, in the shard.
func (sh *shard) lookup(id string, h uint64) (uint32, bool) {
	if len(sh.cells) == 0 {
		return 0, false
	}
	mask := uint64(len(sh.cells) - 1)
	tag := tagOf(h)
	short := len(id) <= 8
	var word uint64
	if short {
		word = packID(id)
	}
	for i := h & mask; ; i = (i + 1) & mask {
		c := sh.cells[i]
		if c == 0 {
			return 0, false
		}
		if c>>slotBits != tag {
			continue
		}
		slot := c&slotMask - 1
		w := sh.rec(slot).idWord
		if short {
			if w == word {
				return slot, true
			}
		} else if w&longID != 0 && int(w>>32&0xff) == len(id) &&
			string(sh.arena[uint32(w):uint32(w)+uint32(len(id))]) == id {
			return slot, true
		}
	}
}

// find is lookup with a hint: hint is slot+1 of the record that warm, not
// holding the lock, found for the device (0: none). A record whose id is
// the device's is the device's (a shard holds one record per id, and a
// record keeps its id for good), so checking the hinted record's id skips
// the index, which warm may have seen in an older state. Ids longer than 8
// bytes, kept in the arena, take the index.
func (sh *shard) find(id string, h uint64, hint uint32) (uint32, bool) {
	if hint != 0 && len(id) <= 8 && int(hint) <= sh.n {
		if sh.rec(hint-1).idWord == packID(id) {
			return hint - 1, true
		}
	}
	return sh.lookup(id, h)
}

// add stores a new device and returns its slot. The caller checked that it
// is absent and that the shard has room.
func (sh *shard) add(id string, h uint64, hash func(string) uint64) uint32 {
	if (sh.n+1)*4 > len(sh.cells)*3 {
		sh.grow(hash)
	}
	slot := uint32(sh.n)
	if slot&(pageSize-1) == 0 {
		sh.pages = append(sh.pages, make([]rec, pageSize))
		sh.publish()
	}
	sh.n++
	r := sh.rec(slot)
	// Atomic: TouchBatch's warm-up reads idWord and the index cells
	// without the lock (see shardView).
	if len(id) <= 8 {
		atomic.StoreUint64(&r.idWord, packID(id))
	} else {
		atomic.StoreUint64(&r.idWord, longWord(uint32(len(sh.arena)), len(id)))
		sh.arena = append(sh.arena, id...)
	}
	sh.insertCell(h, slot)
	return slot
}

func (sh *shard) insertCell(h uint64, slot uint32) {
	mask := uint64(len(sh.cells) - 1)
	i := h & mask
	for sh.cells[i] != 0 {
		i = (i + 1) & mask
	}
	atomic.StoreUint32(&sh.cells[i], tagOf(h)<<slotBits|(slot+1))
}

// grow doubles the index and re-inserts every device.
func (sh *shard) grow(hash func(string) uint64) {
	n := 2 * len(sh.cells)
	if n == 0 {
		n = 16
	}
	sh.cells = make([]uint32, n)
	for slot := range sh.n {
		sh.insertCell(hash(sh.id(uint32(slot))), uint32(slot))
	}
	sh.publish()
}

// shardView is what TouchBatch reads of a shard without taking its lock:
// the index and the record pages as they were at some moment. Through a
// view, warm reads index cells and records' idWords only, and those are
// written only by atomic stores (the rest of a record is never read without
// the lock); an array a view covers is never reallocated under it. So a
// view is always safe to read; it may be stale, which costs a useless load.
type shardView struct {
	cells []uint32
	pages [][]rec
}

// publish makes the shard's current index and pages the view.
func (sh *shard) publish() {
	if sh.view != nil {
		sh.view.Store(&shardView{cells: sh.cells, pages: sh.pages})
	}
}

// warmCell and warmWord are what the warm-up reads when a view has no
// cell or record for a device: real memory, never written.
var (
	warmCell uint32
	warmWord uint64
)

// cellAt is the address of the first index cell a lookup of hash h reads.
func (v *shardView) cellAt(h uint64) *uint32 {
	if len(v.cells) == 0 {
		return &warmCell
	}
	return &v.cells[h&uint64(len(v.cells)-1)]
}

// idWordAt is the address of the id of the record that a lookup of hash h
// most likely ends at, given c, the content of its first cell (already in
// the cache: the cells after it usually share its cache line), and that
// record's slot+1 (0 if none).
func (v *shardView) idWordAt(h uint64, c uint32) (uint32, *uint64) {
	if len(v.cells) == 0 {
		return 0, &warmWord
	}
	mask := uint64(len(v.cells) - 1)
	tag := tagOf(h)
	i := h & mask
	for range 8 {
		if c == 0 {
			return 0, &warmWord
		}
		if c>>slotBits == tag {
			slot := c&slotMask - 1
			page := int(slot >> pageBits)
			if page >= len(v.pages) {
				return 0, &warmWord
			}
			return slot + 1, &v.pages[page][slot&(pageSize-1)].idWord
		}
		i = (i + 1) & mask
		c = atomic.LoadUint32(&v.cells[i])
	}
	return 0, &warmWord
}

// id returns the device id of slot as a new string.
func (sh *shard) id(slot uint32) string {
	return idString(sh.rec(slot).idWord, sh.arena)
}

// The bits of rec.dirty, each shifted left by the tracker's index: the slot
// is in the tracker's dirty list; its last-seen time changed since (else
// only its status did: DeviceState.StatusOnly); it is new to the engine
// since (DeviceState.New).
const (
	dirtyListed = 1
	dirtySeen   = 1 << MaxTrackers
	dirtyNew    = 1 << (2 * MaxTrackers)
)

// The three bits of every tracker fit rec.dirty's byte: this does not
// compile when MaxTrackers grows past it.
const _ uint8 = (dirtyListed | dirtySeen | dirtyNew) << (MaxTrackers - 1)

// What changed, for markDirty: the status alone, the last-seen time (with
// the status or not), or the whole device (new to the engine).
const (
	changedStatus = 0
	changedSeen   = dirtySeen
	changedNew    = dirtySeen | dirtyNew
)

// markDirty flags slot for every tracker, listing it for those that have
// not listed it yet; what is changedStatus, changedSeen or changedNew.
func (sh *shard) markDirty(slot uint32, what uint8) {
	r := sh.rec(slot)
	if what&dirtySeen != 0 {
		r.dirty |= sh.trackMask * dirtySeen
	}
	if what&dirtyNew != 0 {
		r.dirty |= sh.trackMask * dirtyNew
	}
	missing := sh.trackMask &^ r.dirty
	if missing == 0 {
		return
	}
	r.dirty |= missing
	for t := 0; missing != 0; t++ {
		if missing&(1<<t) != 0 {
			sh.dirty[t].items = append(sh.dirty[t].items, slot)
			missing &^= 1 << t
		}
	}
}

// transition records a status change for the sink: queued while there is
// room and the device is not already being coalesced, else coalesced.
// It returns true when coalescing started for the device.
func (sh *shard) transition(slot uint32, from, to Status, at, prev int64, cause Cause) (coalescing bool) {
	r := sh.rec(slot)
	sh.unexpire(slot) // callers do it before changing the record; this keeps the order anyway
	if to == StatusOnline {
		sh.st.online++
	} else {
		sh.st.offline++
	}
	if r.flags&flagResync == 0 && len(sh.queue) < sh.queueCap {
		sh.queue = append(sh.queue, qent{at: at, prev: prev, slot: slot, from: from, to: to, cause: cause})
		r.setReported(to)
		return false
	}
	if sh.resync == nil {
		sh.resync = make(map[uint32]resyncEnt)
	}
	r.flags |= flagResync
	sh.resync[slot] = resyncEnt{at: at, cause: cause}
	sh.st.coalesced++
	return true
}

// timeout records the timeout transition of slot, which has just gone
// offline at r.since. Usually the caller is to list the slot alone in
// sh.expired (list): the transition is known from the record (online to
// offline at since, cause timeout). A slot is listed there at most once,
// so the list needs no bound of its own (4 bytes a device at most, in the
// wheel's own bucket: see runBucket) and a mass expiry of any size is
// never coalesced. A device already listed (its pending timeout turned
// into a queue entry by unexpire) or being coalesced takes the general
// path.
func (sh *shard) timeout(slot uint32) (list, coalescing bool) {
	r := sh.rec(slot)
	if r.flags&(flagResync|flagExpiredListed) != 0 {
		return false, sh.transition(slot, StatusOnline, StatusOffline, r.since, 0, CauseTimeout)
	}
	sh.st.offline++
	r.setReported(StatusOffline)
	r.flags |= flagExpired | flagExpiredListed
	sh.nExpired++
	return true, false
}

// unexpire turns slot's pending timeout transition, if any, into a queue
// entry, so that what happens to the device next is delivered after it.
// Call it before changing the record's since or status.
func (sh *shard) unexpire(slot uint32) {
	r := sh.rec(slot)
	if r.flags&flagExpired == 0 {
		return
	}
	r.flags &^= flagExpired
	sh.nExpired--
	sh.queue = append(sh.queue, qent{at: r.since, slot: slot, from: StatusOnline, to: StatusOffline, cause: CauseTimeout})
}
