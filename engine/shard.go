package engine

import (
	"sync"
)

// rec is one device, 32 bytes, pointer-free: the GC never scans the
// millions of them. Its id lives in the shard's arena.
type rec struct {
	lastSeen  int64  // unix ns of the newest message; 0 = never
	since     int64  // unix ns the current status began
	idOff     uint32 // id = arena[idOff : idOff+idLen]
	timeoutMs uint32
	armed     uint32 // low 32 bits of the wheel tick armed for, if flagArmed
	idLen     uint8
	flags     uint8
	dirty     uint8 // one bit per Tracker
	_         uint8
}

const (
	flagOnline   = 1 << iota
	flagArmed    // a live wheel entry exists at tick armed
	flagReported // the sink was told a status (else it knows none)
	flagReportedOnline
	flagResync // coalescing: later transitions go to shard.resync
)

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

// qent is a transition waiting for the sink: 16 bytes, pointer-free.
type qent struct {
	at    int64
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
	touches, online, offline, stale, coalesced, resynced, delivered uint64
}

// shard is one independently locked part of the engine.
type shard struct {
	mu sync.Mutex

	recs   []rec
	arena  []byte   // ids, append-only: bytes once written never change
	cells  []uint32 // open-addressing index: tag<<24 | slot+1, 0 = empty
	wheel  wheel
	queue  []qent
	resync map[uint32]resyncEnt
	dirty  [MaxTrackers]dirtyList

	trackMask uint8 // the bits of the trackers that exist
	queueCap  int
	nOnline   int
	st        shardStats

	_ [64]byte // keep neighbouring shards' locks off this cache line
}

const (
	slotBits = 24
	slotMask = 1<<slotBits - 1
)

// tagOf takes 8 hash bits that neither the shard nor the index uses.
func tagOf(h uint64) uint32 { return uint32(h>>40) & 0xff }

// lookup finds id, whose hash is h, in the shard.
func (sh *shard) lookup(id string, h uint64) (uint32, bool) {
	if len(sh.cells) == 0 {
		return 0, false
	}
	mask := uint64(len(sh.cells) - 1)
	tag := tagOf(h)
	for i := h & mask; ; i = (i + 1) & mask {
		c := sh.cells[i]
		if c == 0 {
			return 0, false
		}
		if c>>slotBits == tag {
			slot := c&slotMask - 1
			r := &sh.recs[slot]
			if int(r.idLen) == len(id) && string(sh.arena[r.idOff:r.idOff+uint32(r.idLen)]) == id {
				return slot, true
			}
		}
	}
}

// add stores a new device and returns its slot. The caller checked that it
// is absent and that the shard has room.
func (sh *shard) add(id string, h uint64, hash func(string) uint64) uint32 {
	if (len(sh.recs)+1)*4 > len(sh.cells)*3 {
		sh.grow(hash)
	}
	slot := uint32(len(sh.recs))
	sh.recs = append(sh.recs, rec{idOff: uint32(len(sh.arena)), idLen: uint8(len(id))})
	sh.arena = append(sh.arena, id...)
	sh.insertCell(h, slot)
	return slot
}

func (sh *shard) insertCell(h uint64, slot uint32) {
	mask := uint64(len(sh.cells) - 1)
	i := h & mask
	for sh.cells[i] != 0 {
		i = (i + 1) & mask
	}
	sh.cells[i] = tagOf(h)<<slotBits | (slot + 1)
}

// grow doubles the index and re-inserts every device.
func (sh *shard) grow(hash func(string) uint64) {
	n := 2 * len(sh.cells)
	if n == 0 {
		n = 16
	}
	sh.cells = make([]uint32, n)
	for slot := range sh.recs {
		sh.insertCell(hash(sh.id(uint32(slot))), uint32(slot))
	}
}

// id returns the device id of slot as a new string.
func (sh *shard) id(slot uint32) string {
	r := &sh.recs[slot]
	return string(sh.arena[r.idOff : r.idOff+uint32(r.idLen)])
}

// markDirty flags slot for every tracker that has not seen it yet.
func (sh *shard) markDirty(slot uint32) {
	r := &sh.recs[slot]
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
func (sh *shard) transition(slot uint32, from, to Status, at int64, cause Cause) (coalescing bool) {
	r := &sh.recs[slot]
	if to == StatusOnline {
		sh.st.online++
	} else {
		sh.st.offline++
	}
	if r.flags&flagResync == 0 && len(sh.queue) < sh.queueCap {
		sh.queue = append(sh.queue, qent{at: at, slot: slot, from: from, to: to, cause: cause})
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
