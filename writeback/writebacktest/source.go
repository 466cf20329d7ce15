package writebacktest

import (
	"slices"
	"strings"
	"sync"

	"github.com/presence-dev/presence/engine"
)

// FakeSource is an in-memory writeback.Source: the current state of every
// device and a dirty set of ids, like the engine's Tracker.
type FakeSource struct {
	mu     sync.Mutex
	states map[string]engine.DeviceState
	dirty  map[string]struct{}
	order  []string // dirty ids in insertion order (may hold stale ones)
	maxLen int      // largest Len ever seen
	drains int
}

// NewFakeSource returns an empty source.
func NewFakeSource() *FakeSource {
	return &FakeSource{states: map[string]engine.DeviceState{}, dirty: map[string]struct{}{}}
}

// Set records new current states and marks them dirty.
func (s *FakeSource) Set(states ...engine.DeviceState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range states {
		s.states[st.ID] = st
		s.markLocked(st.ID)
	}
}

func (s *FakeSource) markLocked(id string) {
	if _, ok := s.dirty[id]; ok {
		return
	}
	s.dirty[id] = struct{}{}
	s.order = append(s.order, id)
	s.maxLen = max(s.maxLen, len(s.dirty))
}

func (s *FakeSource) Drain(dst []engine.DeviceState, limit int) []engine.DeviceState {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drains++
	n := 0
	i := 0
	for ; i < len(s.order) && n < limit; i++ {
		id := s.order[i]
		if _, ok := s.dirty[id]; !ok {
			continue
		}
		delete(s.dirty, id)
		dst = append(dst, s.states[id])
		n++
	}
	s.order = slices.Delete(s.order, 0, i)
	return dst
}

func (s *FakeSource) MarkDirty(ids ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		s.markLocked(id)
	}
}

func (s *FakeSource) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.dirty)
}

func (s *FakeSource) MaxLen() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxLen
}

// Snapshot returns every device's current state, sorted by id.
func (s *FakeSource) Snapshot() []engine.DeviceState {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]engine.DeviceState, 0, len(s.states))
	for _, st := range s.states {
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b engine.DeviceState) int { return strings.Compare(a.ID, b.ID) })
	return out
}
