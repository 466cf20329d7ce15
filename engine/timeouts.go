package engine

import (
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// maxTimeouts is how many distinct timeouts one engine can hold: a
// record's tmo spends 14 bits on the index and 2 on its source.
const maxTimeouts = 1 << 14

// A record's tmo: the index of its timeout in the table, and where the
// timeout came from (neither bit: the default).
const (
	tmoIndex   = maxTimeouts - 1
	tmoPattern = 1 << 14 // a Touch's Timeout
	tmoDevice  = 1 << 15 // the device's own (SetTimeout)
)

// tmoSource is the TimeoutSource of a record's tmo.
func tmoSource(tmo uint16) TimeoutSource {
	switch {
	case tmo&tmoDevice != 0:
		return TimeoutDevice
	case tmo&tmoPattern != 0:
		return TimeoutPattern
	}
	return TimeoutDefault
}

// timeoutTable gives each distinct timeout in use a 14-bit index, so a
// device record spends 2 bytes on its timeout and its source instead of 9. Fleets use a
// handful of timeouts (the default, one per topic pattern, some overrides):
// the lookup scans a short copy-on-write slice without locking, and falls
// back to a map under a lock beyond it.
type timeoutTable struct {
	tab atomic.Pointer[[]int64] // ns by index; replaced, never modified

	mu  sync.Mutex
	idx map[int64]uint16
}

// scanTimeouts is how many entries the lock-free lookup scans.
const scanTimeouts = 16

func newTimeoutTable(def time.Duration) *timeoutTable {
	t := &timeoutTable{idx: map[int64]uint16{int64(def): 0}}
	tab := []int64{int64(def)}
	t.tab.Store(&tab)
	return t
}

// TimeoutFromSeconds converts a timeout given in seconds, as the HTTP API
// takes one: a whole number of seconds in [MinTimeout, MaxTimeout], else
// false (NaN, a fraction, out of range). Whole seconds bound the distinct
// timeouts clients can make an engine hold (it keeps them for good).
func TimeoutFromSeconds(sec float64) (time.Duration, bool) {
	if !(sec >= MinTimeout.Seconds() && sec <= MaxTimeout.Seconds()) || sec != math.Trunc(sec) { // NaN too
		return 0, false
	}
	return time.Duration(sec) * time.Second, true
}

// ValidTimeout reports whether d is a timeout a device may have: in
// [MinTimeout, MaxTimeout], else an error wrapping ErrInvalidTimeout.
func ValidTimeout(d time.Duration) error { return validTimeout(d) }

func validTimeout(d time.Duration) error {
	if d < MinTimeout || d > MaxTimeout {
		return fmt.Errorf("%w: %v not in [%v, %v]", ErrInvalidTimeout, d, MinTimeout, MaxTimeout)
	}
	return nil
}

// index returns the index of d, adding it if new.
func (t *timeoutTable) index(d time.Duration) (uint16, error) {
	if err := validTimeout(d); err != nil {
		return 0, err
	}
	tab := *t.tab.Load()
	for i, v := range tab[:min(len(tab), scanTimeouts)] {
		if v == int64(d) {
			return uint16(i), nil
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if i, ok := t.idx[int64(d)]; ok {
		return i, nil
	}
	tab = *t.tab.Load()
	if len(tab) == maxTimeouts {
		return 0, fmt.Errorf("%w: more than %d distinct timeouts", ErrInvalidTimeout, maxTimeouts)
	}
	next := append(tab[:len(tab):len(tab)], int64(d))
	t.tab.Store(&next)
	i := uint16(len(next) - 1)
	t.idx[int64(d)] = i
	return i, nil
}

// ns returns the timeout of a record's tmo in nanoseconds.
func (t *timeoutTable) ns(tmo uint16) int64 { return (*t.tab.Load())[tmo&tmoIndex] }
