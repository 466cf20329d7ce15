package cluster

import (
	"slices"
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
// Checking costs one atomic load while nothing is held.
type hold struct {
	active atomic.Bool // some partition is held

	mu    sync.Mutex
	parts map[int]time.Time // held partition -> release at the latest
	queue []msg             // held messages, in arrival order
	size  int               // bound on len(queue)
}

// add queues m, of partition p, if p is held, and reports whether it did.
// It reports false when the queue is full (overflow: apply it now).
func (h *hold) add(p int, m msg) (held, overflow bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.parts[p]; !ok {
		return false, false
	}
	if len(h.queue) >= h.size {
		return false, true
	}
	h.queue = append(h.queue, m)
	return true, false
}

// holdBack queues m if its partition is held and reports whether it did.
// Callers check r.hold.active first.
func (r *Router) holdBack(m msg) bool {
	held, overflow := r.hold.add(PartitionOf(m.id, r.cfg.Partitions), m)
	if overflow {
		r.m.holdOverflow.Inc()
	}
	return held
}

// startHold holds parts until RebuildDone or the deadline. It is called
// before the table that gives them to this node is installed, so no message
// of theirs reaches the engine first.
func (r *Router) startHold(parts []int, deadline time.Time) {
	if len(parts) == 0 {
		return
	}
	h := &r.hold
	h.mu.Lock()
	if h.parts == nil {
		h.parts = make(map[int]time.Time)
	}
	for _, p := range parts {
		h.parts[p] = deadline
	}
	h.active.Store(true)
	h.mu.Unlock()
	r.m.holdPartitions.Add(len(parts))
}

// releaseHold applies the held messages of parts and stops holding them.
func (r *Router) releaseHold(parts []int) int {
	return r.release(func(p int, _ time.Time) bool { return slices.Contains(parts, p) })
}

// expireHolds releases the partitions whose deadline is not after now.
func (r *Router) expireHolds(now time.Time) int {
	n := r.release(func(_ int, deadline time.Time) bool { return !now.Before(deadline) })
	r.m.holdExpired.Add(n)
	return n
}

// releaseAllHolds releases every held partition (the node is leaving).
func (r *Router) releaseAllHolds() int {
	return r.release(func(int, time.Time) bool { return true })
}

// release stops holding the partitions that match and applies their held
// messages, and returns how many partitions it released. It works under
// the hold's lock, so that a message arriving meanwhile waits and lands
// after the held ones: a device's messages stay in order.
func (r *Router) release(match func(p int, deadline time.Time) bool) int {
	h := &r.hold
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for p, deadline := range h.parts {
		if match(p, deadline) {
			delete(h.parts, p)
			n++
		}
	}
	if n == 0 {
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
	h.active.Store(len(h.parts) > 0)
	r.route1(out, time.Time{}, "", false) // by the current table: it may have moved on
	return n
}

// heldMessages is the number of messages held.
func (r *Router) heldMessages() int {
	r.hold.mu.Lock()
	defer r.hold.mu.Unlock()
	return len(r.hold.queue)
}
