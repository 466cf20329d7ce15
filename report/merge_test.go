package report

import (
	"testing"
	"time"

	"github.com/presence-dev/presence/engine"
)

// The cluster's list is the longest Limit over every node's list, a
// device held by two nodes (a handoff in flight) once.
func TestMergeLists(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	dev := func(id string, sinceMin int, seenMin int) engine.DeviceState {
		return engine.DeviceState{ID: id, Status: engine.StatusOffline,
			Since: t0.Add(time.Duration(sinceMin) * time.Minute), LastSeen: t0.Add(time.Duration(seenMin) * time.Minute)}
	}
	a := List{Devices: []engine.DeviceState{dev("a1", 1, 0), dev("a2", 5, 4), dev("dup", 3, 2)}, Matched: 10, AsOf: t0.Add(time.Hour)}
	b := List{Devices: []engine.DeviceState{dev("b1", 2, 1), withSeen(dev("dup", 3, 2), t0.Add(150*time.Second))}, Matched: 7, AsOf: t0.Add(59 * time.Minute)}
	got := MergeLists(ListQuery{Limit: 3}, []List{a, b})
	var ids []string
	for _, d := range got.Devices {
		ids = append(ids, d.ID)
	}
	if want := []string{"a1", "b1", "dup"}; len(ids) != 3 || ids[0] != want[0] || ids[1] != want[1] || ids[2] != want[2] {
		t.Fatalf("devices %v, want %v", ids, want)
	}
	if got.Devices[2].LastSeen != t0.Add(150*time.Second) {
		t.Fatalf("duplicate kept the older last_seen: %v", got.Devices[2].LastSeen)
	}
	if got.Matched != 16 || !got.AsOf.Equal(t0.Add(59*time.Minute)) {
		t.Fatalf("matched %d (want 16: 17 less the duplicate), as of %v", got.Matched, got.AsOf)
	}
	if empty := MergeLists(ListQuery{Limit: 3}, nil); len(empty.Devices) != 0 || empty.Matched != 0 {
		t.Fatalf("no lists: %+v", empty)
	}
}

func withSeen(st engine.DeviceState, seen time.Time) engine.DeviceState {
	st.LastSeen = seen
	return st
}
