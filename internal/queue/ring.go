package queue

// ring is a bounded first-in first-out buffer that, when full, drops its
// oldest element to make room. It grows by doubling up to its bound, so an
// idle queue stays small. Not safe for concurrent use: Queue calls it under
// its lock.
type ring[T any] struct {
	buf     []T
	head, n int
	initial int // first allocation
	bound   int // most elements held
}

// newRing returns an empty ring that holds at most bound elements (at
// least 1) and allocates initial of them (at most bound) when the first
// arrives.
func newRing[T any](initial, bound int) *ring[T] {
	bound = max(bound, 1)
	return &ring[T]{initial: min(max(initial, 1), bound), bound: bound}
}

// Len is the number of elements held.
func (r *ring[T]) Len() int { return r.n }

// Push appends v. When the ring holds its bound, the oldest element is
// dropped first, and Push returns it.
func (r *ring[T]) Push(v T) (oldest T, dropped bool) {
	if r.n == r.bound {
		var zero T
		oldest, dropped = r.buf[r.head], true
		r.buf[r.head] = zero // release what it references
		r.head = (r.head + 1) % len(r.buf)
		r.n--
	}
	if r.n == len(r.buf) {
		r.grow()
	}
	r.buf[(r.head+r.n)%len(r.buf)] = v
	r.n++
	return oldest, dropped
}

// PopTo removes up to k of the oldest elements and appends them to dst, in
// order.
func (r *ring[T]) PopTo(dst []T, k int) []T {
	var zero T
	for range min(k, r.n) {
		dst = append(dst, r.buf[r.head])
		r.buf[r.head] = zero
		r.head = (r.head + 1) % len(r.buf)
		r.n--
	}
	if r.n == 0 && len(r.buf) >= shrinkFactor*r.initial {
		// A burst grew the ring and has drained: give its memory back (a
		// mass expiry can grow a destination's queue to a million events;
		// the next Push allocates the initial size again).
		r.buf, r.head = nil, 0
	}
	return dst
}

// shrinkFactor: an empty ring this many times its initial size or more is
// released.
const shrinkFactor = 8

func (r *ring[T]) grow() {
	size := min(max(2*len(r.buf), r.initial), r.bound)
	buf := make([]T, size)
	for i := range r.n {
		buf[i] = r.buf[(r.head+i)%len(r.buf)]
	}
	r.buf, r.head = buf, 0
}
