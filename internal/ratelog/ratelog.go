// Package ratelog keeps logs readable when the same thing goes wrong many
// times a second: a Limiter lets one line per interval through for each key
// and counts the lines it held back, so that the next line can say how many
// there were ("suppressed", n). Errors at 50k messages/s must not become
// 50k log lines/s, and a retry loop must not log every attempt.
//
// A key names a kind of line (a drop reason, "send failed", a connection
// number): a small, bounded set, never a device id.
package ratelog

import (
	"sync"
	"sync/atomic"
	"time"
)

// Limiter allows one line per interval per key. It is safe for concurrent
// use and lock-free once a key has been seen, so that a message callback may
// consult it for every dropped message. Build it with New.
type Limiter[K comparable] struct {
	every time.Duration
	now   func() time.Time
	keys  sync.Map // K -> *slot
}

type slot struct {
	next       atomic.Int64 // unix nanoseconds before which lines are held back
	suppressed atomic.Int64 // held back since the last allowed line
}

// New returns a Limiter that allows one line per every for each key
// (every <= 0 allows them all). now is its clock; nil means time.Now.
func New[K comparable](every time.Duration, now func() time.Time) *Limiter[K] {
	if now == nil {
		now = time.Now
	}
	return &Limiter[K]{every: every, now: now}
}

// Allow reports whether a line for key may be logged now, and if so how
// many lines for key were held back since the last allowed one.
func (l *Limiter[K]) Allow(key K) (ok bool, suppressed int) {
	return l.AllowAt(key, l.now())
}

// AllowAt is Allow at the time now, for callers that have just read the
// clock.
func (l *Limiter[K]) AllowAt(key K, now time.Time) (ok bool, suppressed int) {
	s := l.slot(key)
	n := now.UnixNano()
	next := s.next.Load()
	if n < next || !s.next.CompareAndSwap(next, n+int64(l.every)) {
		s.suppressed.Add(1)
		return false, 0
	}
	return true, int(s.suppressed.Swap(0))
}

// TakeSuppressed returns how many lines for key were held back since the
// last allowed one and resets that count, for a final "n more suppressed"
// line at shutdown. It does not open the interval.
func (l *Limiter[K]) TakeSuppressed(key K) int {
	v, ok := l.keys.Load(key)
	if !ok {
		return 0
	}
	return int(v.(*slot).suppressed.Swap(0))
}

func (l *Limiter[K]) slot(key K) *slot {
	if v, ok := l.keys.Load(key); ok {
		return v.(*slot)
	}
	v, _ := l.keys.LoadOrStore(key, new(slot))
	return v.(*slot)
}
