package writebacktest

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/presence-dev/presence/engine"
)

// SliceSource is a writeback.Source over a fixed slice of states, every one
// dirty after Reset: the cheapest possible engine side, so that a benchmark
// measures the sink and the store.
type SliceSource struct {
	States []engine.DeviceState
	pos    int
	redo   atomic.Int64
}

func (s *SliceSource) Drain(dst []engine.DeviceState, limit int) []engine.DeviceState {
	n := min(limit, len(s.States)-s.pos)
	dst = append(dst, s.States[s.pos:s.pos+n]...)
	s.pos += n
	return dst
}

func (s *SliceSource) MarkDirty(ids ...string) { s.redo.Add(int64(len(ids))) }
func (s *SliceSource) Len() int                { return len(s.States) - s.pos }

// Reset makes every state dirty again.
func (s *SliceSource) Reset() { s.pos = 0 }

// Redone is how many devices the sink put back (failed writes).
func (s *SliceSource) Redone() int64 { return s.redo.Load() }

// BenchStates are n devices 1..n, a third offline, seen at at plus i µs.
func BenchStates(n int, at time.Time) []engine.DeviceState {
	states := make([]engine.DeviceState, n)
	for i := range states {
		st := engine.StatusOnline
		if i%3 == 0 {
			st = engine.StatusOffline
		}
		states[i] = engine.DeviceState{
			ID:       strconv.Itoa(i + 1),
			Status:   st,
			LastSeen: at.Add(time.Duration(i) * time.Microsecond),
		}
	}
	return states
}
