package cluster

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// hold keeps back the messages of partitions this node gained from a
// member that crashed, until their devices have been rebuilt from the
// shared store (Node.RebuildDone) or Config.RebuildHold has passed. A
// message applied first would make its device new here: an online
// transition the device already had, reported again (a duplicate history
// row and event). Held messages are applied in arrival order on release.
//
// Checking costs one atomic load while nothing is held, and a partition
// hash and one more load per message while something is: only messages of
// held partitions take the lock.
type hold struct {
	active atomic.Bool   // some partition is held
	held   []atomic.Bool // by partition

	mu    sync.Mutex
	parts map[int]holdEntry // by held partition
	gen   uint64            // of the last startHold
	queue []msg             // held messages, in arrival order
	size  int               // bound on len(queue)
}

// holdEntry is one held partition: which hold (startHold call) holds it,
// and when it is released at the latest.
type holdEntry struct {
	gen      uint64
	deadline time.Time
}

// add queues m, of partition p, if p is held, and reports whether it did.
// It reports overflow when the queue is full. With clone the id is copied
// first: one that came in a peer's frame is a substring of the whole frame
// (up to MaxFrameSize), which a held reference would pin.
func (h *hold) add(p int, m msg, clone bool) (held, overflow bool) {
	if !h.held[p].Load() {
		return false, false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.parts[p]; !ok {
		return false, false
	}
	if len(h.queue) >= h.size {
		return false, true
	}
	if clone {
		m.id = strings.Clone(m.id)
	}
	h.queue = append(h.queue, m)
	return true, false
}

// Holding reports whether device id's partition is held for its rebuild
// from the shared store: what is sent for it now is applied once the
// rebuild is done.
func (r *Router) Holding(id string) bool {
	return r.hold.active.Load() && r.hold.held[PartitionOf(id, r.cfg.Partitions)].Load()
}

// holdBack queues m if its partition is held and reports whether it did.
// Callers check r.hold.active first. When the hold is full, everything
// held is applied (in order) and nothing is held any more: then m, like
// every later message, goes to the engine at once. Duplicate online
// transitions are the price, not unbounded memory or reordering.
func (r *Router) holdBack(m msg, fromFrame bool) bool {
	held, overflow := r.hold.add(PartitionOf(m.id, r.cfg.Partitions), m, fromFrame)
	if overflow {
		r.m.holdOverflow.Inc()
		if n := r.releaseAllHolds(); n > 0 {
			if ok, sup := r.limit.Allow("hold-full"); ok {
				r.log.Warn("cluster: rebuild hold full, held messages applied before their rebuild",
					"partitions", n, "rebuild_hold_size", r.hold.size, "suppressed", sup)
			}
		}
	}
	return held
}

// startHold holds parts until releaseHold with the generation it returns,
// or the deadline. It is called before the table that gives them to this
// node is installed, so no message of theirs reaches the engine first. A
// partition still held by an earlier hold moves to this one (the earlier
// rebuild's end must not release it).
func (r *Router) startHold(parts []int, deadline time.Time) (gen uint64) {
	if len(parts) == 0 {
		return 0
	}
	h := &r.hold
	h.mu.Lock()
	if h.parts == nil {
		h.parts = make(map[int]holdEntry)
	}
	h.gen++
	for _, p := range parts {
		h.parts[p] = holdEntry{gen: h.gen, deadline: deadline}
		h.held[p].Store(true)
	}
	h.active.Store(true)
	gen = h.gen
	h.mu.Unlock()
	r.m.holdPartitions.Add(len(parts))
	return gen
}

// releaseHold applies the held messages of the partitions that hold gen
// still holds (not those a later hold took over), and stops holding them.
func (r *Router) releaseHold(gen uint64) int {
	return r.release(func(_ int, e holdEntry) bool { return e.gen == gen })
}

// expireHolds releases the partitions whose deadline is not after now.
func (r *Router) expireHolds(now time.Time) int {
	n := r.release(func(_ int, e holdEntry) bool { return !now.Before(e.deadline) })
	r.m.holdExpired.Add(n)
	return n
}

// releaseAllHolds releases every held partition (the node is leaving, or
// the hold is full).
func (r *Router) releaseAllHolds() int {
	return r.release(func(int, holdEntry) bool { return true })
}

// releaseLost releases the held partitions that t does not give to this
// node, before t is installed: their messages are applied here, where the
// devices still are, and the handoff then takes them to the new owner.
func (r *Router) releaseLost(t *Table) int {
	return r.release(func(p int, _ holdEntry) bool { return t.Owner(p) != r.self })
}

// release stops holding the partitions that match and applies their held
// messages, and returns how many partitions it released. It works under
// the hold's lock and clears the partitions' flags only afterwards, so
// that a message arriving meanwhile waits for the lock and lands after the
// held ones: a device's messages stay in order.
func (r *Router) release(match func(p int, e holdEntry) bool) int {
	h := &r.hold
	h.mu.Lock()
	defer h.mu.Unlock()
	var released []int
	for p, e := range h.parts {
		if match(p, e) {
			delete(h.parts, p)
			released = append(released, p)
		}
	}
	if len(released) == 0 {
		return 0
	}
	var out, kept []msg
	for _, m := range h.queue {
		if _, ok := h.parts[PartitionOf(m.id, r.cfg.Partitions)]; ok {
			kept = append(kept, m)
		} else {
			out = append(out, m)
		}
	}
	clear(h.queue) // drop the id references
	h.queue = kept
	r.route1(out, time.Time{}, "", false) // by the current table: it may have moved on
	for _, p := range released {
		h.held[p].Store(false)
	}
	h.active.Store(len(h.parts) > 0)
	return len(released)
}

// heldMessages is the number of messages held.
func (r *Router) heldMessages() int {
	r.hold.mu.Lock()
	defer r.hold.mu.Unlock()
	return len(r.hold.queue)
}
