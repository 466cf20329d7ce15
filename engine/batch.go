package engine

import (
	"slices"
	"sync/atomic"
)

// TouchBatch applies a batch of touches, as ingest delivers them, and returns
// how many were rejected (invalid id or timeout; counted in Stats.Rejected).
func (e *Engine) TouchBatch(batch []Touch) (rejected int) {
	if len(batch) < minGroupedBatch {
		for i := range batch {
			if e.touchOne(&batch[i]) != nil {
				rejected++
			}
		}
		return rejected
	}
	// Grouped by shard: one lock per shard instead of one per touch, and
	// the index cells and records of the whole batch pulled into the cache
	// first (warm), so that the work under the locks hits the cache.
	g := e.groups.Get().(*touchGroups)
	defer e.groups.Put(g)
	g.items = g.items[:0]
	clear(g.count)
	for i := range batch {
		t := &batch[i]
		// The id first: a timeout is interned for good (the table holds
		// 16,384), so it must not be for a touch that is then refused.
		if !ValidID(t.ID) {
			e.rejected.Add(1)
			rejected++
			continue
		}
		tmo := noTimeout
		if t.Timeout != 0 {
			ix, err := e.timeouts.index(t.Timeout)
			if err != nil {
				e.rejected.Add(1)
				rejected++
				continue
			}
			tmo = int(ix)
		}
		h := e.hash(t.ID)
		s := int(h >> (64 - e.shardBits) & (1<<e.shardBits - 1))
		g.items = append(g.items, groupItem{h: h, at: t.At.UnixNano(), i: int32(i), tmo: int32(tmo), shard: uint32(s)})
		g.count[s]++
	}
	e.warm(g)
	// Counting sort by shard.
	pos := 0
	for s, c := range g.count {
		g.start[s] = pos
		pos += c
	}
	g.order = slices.Grow(g.order[:0], len(g.items))[:len(g.items)]
	for i, it := range g.items {
		g.order[g.start[it.shard]] = int32(i)
		g.start[it.shard]++
	}
	for lo := 0; lo < len(g.order); {
		s := g.items[g.order[lo]].shard
		sh := &e.shards[s]
		sh.mu.Lock()
		for ; lo < len(g.order); lo++ {
			it := &g.items[g.order[lo]]
			if it.shard != s {
				break
			}
			if e.touchLocked(sh, batch[it.i].ID, it.h, it.hint, it.at, int(it.tmo), CauseTelemetry) != nil {
				rejected++
			}
		}
		sh.mu.Unlock()
	}
	return rejected
}

// minGroupedBatch is the smallest batch TouchBatch sorts by shard.
const minGroupedBatch = 32

// touchOne is one Touch of a batch, locked on its own.
func (e *Engine) touchOne(t *Touch) error {
	if !ValidID(t.ID) { // before the timeout is interned, as in TouchBatch
		e.rejected.Add(1)
		return ErrInvalidID
	}
	tmo := noTimeout
	if t.Timeout != 0 {
		ix, err := e.timeouts.index(t.Timeout)
		if err != nil {
			e.rejected.Add(1)
			return err
		}
		tmo = int(ix)
	}
	return e.touch(t.ID, t.At.UnixNano(), tmo, CauseTelemetry)
}

// warm loads the index cell and the record of every device of g, without
// the shard locks, before TouchBatch takes them. In a large fleet each is a
// cache (and TLB) miss; the loads of different devices are independent, and
// issued from loops this small the CPU keeps many of them in flight at once
// (on the 2-core test VM a miss costs ~25 ns this way against ~80 ns from a
// loop that does more per device, and ~200 ns one touch at a time). What it
// reads is a hint: a stale view or an unlucky probe only costs a useless
// load. Under the lock, a touch checks that the record found holds its id
// (shard.find) and looks the device up in the index if not.
func (e *Engine) warm(g *touchGroups) {
	n := len(g.items)
	g.cells = slices.Grow(g.cells[:0], n)[:n]
	g.cellAt = slices.Grow(g.cellAt[:0], n)[:n]
	g.wordAt = slices.Grow(g.wordAt[:0], n)[:n]
	g.views = slices.Grow(g.views[:0], n)[:n]
	for i, it := range g.items {
		v := e.views[it.shard].Load()
		g.views[i] = v
		g.cellAt[i] = v.cellAt(it.h)
	}
	for i, p := range g.cellAt {
		g.cells[i] = atomic.LoadUint32(p)
	}
	for i := range g.items {
		it := &g.items[i]
		it.hint, g.wordAt[i] = g.views[i].idWordAt(it.h, g.cells[i])
	}
	var sum uint64
	for _, p := range g.wordAt {
		sum += atomic.LoadUint64(p)
	}
	g.sink = sum
	// Drop the references: an index array replaced by a grow must not be
	// kept alive by an idle pool entry.
	clear(g.cellAt)
	clear(g.wordAt)
	clear(g.views)
}

// touchGroups is TouchBatch's scratch space, pooled.
type touchGroups struct {
	items []groupItem
	order []int32 // indices of items, sorted by shard
	count []int   // per shard
	start []int   // per shard

	// warm's
	cells  []uint32 // the first index cell of each item
	views  []*shardView
	cellAt []*uint32
	wordAt []*uint64
	sink   uint64 // what warm loaded, so that the loads are not dropped
}

type groupItem struct {
	h     uint64
	at    int64
	i     int32 // index in the batch
	tmo   int32
	shard uint32
	hint  uint32 // slot+1 of the record warm loaded, 0 if none
}
