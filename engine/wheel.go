package engine

import (
	"iter"
	"math/bits"
	"slices"
)

// The timing wheel: hierarchical (Varghese & Lauck), wheelLevels levels of
// 64 buckets. A bucket of level l spans 64^l ticks, so six levels cover 2^36
// ticks: more than five years at the finest tick the engine allows, against a
// longest timeout of seven days. Each shard owns one wheel and guards it with
// the shard lock.
//
// An entry is placed at the lowest level whose window (the span of the level
// above's bucket) holds both the current tick and the deadline, so it is
// found again exactly at its deadline tick after at most one cascade per
// level. Insertion and removal are O(1); advancing over idle ticks jumps
// straight to the next occupied bucket using a 64-bit occupancy mask per
// level, so a clock jump of days costs a few dozen steps, not millions.
//
// Entries are bare slot numbers (4 bytes, no pointers: the GC never scans
// them). The wheel does not know which entries are live: the device record
// holds its armed tick, and the shard drops entries whose device is no longer
// armed for a tick within the bucket being processed (see shard.advance).
// That is what makes re-arming lazy: a touch only stores a timestamp, and a
// shortened timeout simply adds an earlier entry, leaving the old one to be
// dropped when it comes up.
const (
	wheelBits   = 6
	wheelSize   = 1 << wheelBits
	wheelMask   = wheelSize - 1
	wheelLevels = 6
	// keepBucket is the largest bucket capacity kept for reuse after the
	// bucket is emptied; larger ones go back to the GC.
	keepBucket = 64
)

type wheel struct {
	cur     uint64 // the next tick to process; every tick before it is done
	occ     [wheelLevels]uint64
	buckets [wheelLevels][wheelSize][]uint32
	n       int // entries held, stale ones included
}

// place returns the level and bucket for an entry due at tick at >= w.cur.
func (w *wheel) place(at uint64) (level, idx int) {
	for l := 0; l < wheelLevels-1; l++ {
		if at>>(wheelBits*(l+1)) == w.cur>>(wheelBits*(l+1)) {
			return l, int(at>>(wheelBits*l)) & wheelMask
		}
	}
	// The top level is circular: its buckets are told apart by at - cur,
	// which is far below 64 top-level spans.
	l := wheelLevels - 1
	return l, int(at>>(wheelBits*l)) & wheelMask
}

// insert adds slot due at tick at; a tick in the past is due at w.cur. It
// returns the tick used.
func (w *wheel) insert(slot uint32, at uint64) uint64 {
	if at < w.cur {
		at = w.cur
	}
	l, i := w.place(at)
	w.buckets[l][i] = append(w.buckets[l][i], slot)
	w.occ[l] |= 1 << i
	w.n++
	return at
}

// reserve makes room for the entries to be inserted at the ticks ats
// yields, so that each bucket they go to grows once: a cascade of a mass
// expiry's bucket would otherwise grow the lower ones by doubling, 2 to 3
// times their final size in transient garbage. The bucket most of them go
// to is not grown when it is empty: reserve returns it (ok), and the
// caller moves those entries there in place (see adopt), so a mass
// expiry's cascade, whose entries all go to one bucket, allocates nothing.
// need is scratch space (zero on entry and on return), the caller's so
// that it is not allocated per call: the range's body captures it.
func (w *wheel) reserve(need *bucketCounts, ats iter.Seq[uint64]) (top bucketRef, ok bool) {
	for at := range ats {
		l, i := w.place(max(at, w.cur))
		need[l][i]++
		if n := need[l][i]; !ok || n > need[top.l][top.i] {
			top, ok = bucketRef{l, i}, true
		}
	}
	if ok && len(w.buckets[top.l][top.i]) > 0 {
		ok = false
	}
	for l := range need {
		for i, n := range need[l] {
			if n > 0 && (!ok || top != (bucketRef{l, i})) {
				w.buckets[l][i] = slices.Grow(w.buckets[l][i], int(n))
			}
		}
	}
	*need = bucketCounts{}
	return top, ok
}

// bucketCounts counts entries per bucket.
type bucketCounts [wheelLevels][wheelSize]int32

// bucketRef names a bucket: level and index.
type bucketRef struct{ l, i int }

// adopt makes b, entries due within bucket r, that bucket's entries,
// together with any inserted there meanwhile.
func (w *wheel) adopt(r bucketRef, b []uint32) {
	w.buckets[r.l][r.i] = append(b, w.buckets[r.l][r.i]...)
	w.occ[r.l] |= 1 << r.i
	w.n += len(b)
}

// take empties bucket (l, i) and returns its entries.
func (w *wheel) take(l, i int) []uint32 {
	b := w.buckets[l][i]
	w.buckets[l][i] = nil
	w.occ[l] &^= 1 << i
	w.n -= len(b)
	return b
}

// recycle gives an emptied bucket's memory back if it is small and the
// bucket is still empty.
func (w *wheel) recycle(l, i int, b []uint32) {
	if cap(b) <= keepBucket && w.buckets[l][i] == nil {
		w.buckets[l][i] = b[:0]
	}
}

// next returns the earliest tick >= w.cur at which a level-0 bucket is due or
// a higher bucket cascades, and false when the wheel is empty.
func (w *wheel) next() (uint64, bool) {
	best, found := ^uint64(0), false
	for l := 0; l < wheelLevels; l++ {
		if w.occ[l] == 0 {
			continue
		}
		shift := uint(wheelBits * l)
		idx := int(w.cur>>shift) & wheelMask
		// Rotate so that bit 0 is the current bucket. At level 0 it is due
		// now; above, it cascades now only if cur is on its boundary (else
		// it cascaded already and is empty by construction).
		rot := bits.RotateLeft64(w.occ[l], -idx)
		if l > 0 && w.cur&(1<<shift-1) != 0 {
			rot &^= 1
		}
		if rot == 0 {
			continue
		}
		t := (w.cur>>shift + uint64(bits.TrailingZeros64(rot))) << shift
		if t < best {
			best, found = t, true
		}
	}
	return best, found
}

// span is the number of ticks one bucket of level l covers.
func span(l int) uint64 { return 1 << (wheelBits * l) }
