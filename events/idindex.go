package events

import "hash/maphash"

// idIndex maps device ids to uint32 slots without a pointer per entry: the
// ids' bytes live in one arena, the index is an open-addressing table of
// slot numbers (linear probing, backward-shift deletion), and a slot's id
// is found again through idOf. It costs about 4/0.75 bytes of table and
// the id's length per entry, against ~50 for a map[string]uint32 with its
// keys. The arena is compacted when half of it is dead.
type idIndex struct {
	seed  maphash.Seed
	table []uint32 // slot+1; 0: empty
	n     int
	ids   []byte // arena
	dead  int    // bytes of forgotten ids in the arena
	// refs give each slot's id in the arena; kept by the owner (see
	// alerts.slots) and passed to the methods.
}

// idRef is where a slot's id sits in the arena.
type idRef struct {
	off uint32
	n   uint8
}

func newIDIndex() idIndex { return idIndex{seed: maphash.MakeSeed()} }

func (x *idIndex) len() int { return x.n }

func (x *idIndex) str(r idRef) string { return string(x.ids[r.off : r.off+uint32(r.n)]) }

func (x *idIndex) equal(r idRef, id string) bool {
	return int(r.n) == len(id) && string(x.ids[r.off:r.off+uint32(r.n)]) == id
}

func (x *idIndex) home(id string) int {
	return int(maphash.String(x.seed, id) & uint64(len(x.table)-1))
}

// find returns the slot of id.
func (x *idIndex) find(id string, refs func(uint32) idRef) (uint32, bool) {
	if x.n == 0 {
		return 0, false
	}
	for i := x.home(id); ; i = (i + 1) & (len(x.table) - 1) {
		c := x.table[i]
		if c == 0 {
			return 0, false
		}
		if x.equal(refs(c-1), id) {
			return c - 1, true
		}
	}
}

// add stores id's bytes and indexes slot under it (id must not be there);
// it returns the id's place in the arena, which the owner keeps for slot.
func (x *idIndex) add(id string, slot uint32, refs func(uint32) idRef) idRef {
	if (x.n+1)*4 > len(x.table)*3 {
		x.grow(refs)
	}
	r := idRef{off: uint32(len(x.ids)), n: uint8(len(id))}
	x.ids = append(x.ids, id...)
	i := x.home(id)
	for x.table[i] != 0 {
		i = (i + 1) & (len(x.table) - 1)
	}
	x.table[i] = slot + 1
	x.n++
	return r
}

// remove unindexes slot, whose id is r.
func (x *idIndex) remove(slot uint32, r idRef, refs func(uint32) idRef) {
	id := x.str(r)
	mask := len(x.table) - 1
	i := x.home(id)
	for x.table[i] != slot+1 {
		i = (i + 1) & mask
	}
	// Backward shift: move later entries of the probe run into the hole.
	for j := (i + 1) & mask; x.table[j] != 0; j = (j + 1) & mask {
		h := x.home(x.str(refs(x.table[j] - 1)))
		// The entry at j may move to i if its home is not in (i, j].
		if (j > i && (h <= i || h > j)) || (j < i && h <= i && h > j) {
			x.table[i] = x.table[j]
			i = j
		}
	}
	x.table[i] = 0
	x.n--
	x.dead += int(r.n)
}

func (x *idIndex) grow(refs func(uint32) idRef) {
	old := x.table
	x.table = make([]uint32, max(2*len(old), 64))
	mask := len(x.table) - 1
	for _, c := range old {
		if c == 0 {
			continue
		}
		i := x.home(x.str(refs(c - 1)))
		for x.table[i] != 0 {
			i = (i + 1) & mask
		}
		x.table[i] = c
	}
}

// compactable reports whether the arena is worth compacting: half of it,
// and at least 64 KiB, is dead.
func (x *idIndex) compactable() bool { return x.dead > 64<<10 && 2*x.dead > len(x.ids) }

// compact rewrites the arena with the live ids only: each live slot's ref
// is passed to move, which stores the new one.
func (x *idIndex) compact(live func(yield func(slot uint32, r idRef) idRef)) {
	ids := make([]byte, 0, max(len(x.ids)-x.dead, 0))
	live(func(_ uint32, r idRef) idRef {
		nr := idRef{off: uint32(len(ids)), n: r.n}
		ids = append(ids, x.ids[r.off:r.off+uint32(r.n)]...)
		return nr
	})
	x.ids, x.dead = ids, 0
}
