package engine

import (
	"errors"
	"testing"
	"time"
)

// A device's own timeout wins over its pattern's until it is cleared, and
// clearing returns to the pattern's (or the default), at once.
func TestTimeoutOverrideAndSources(t *testing.T) {
	f := newFixture(t, nil) // default 60 s
	f.e.TouchBatch([]Touch{{ID: "p", At: t0, Timeout: 20 * time.Second}, {ID: "d", At: t0}})
	f.at(0)
	source := func(id string) (time.Duration, TimeoutSource) {
		t.Helper()
		st, err := f.e.Device(id)
		if err != nil {
			t.Fatal(err)
		}
		return st.Timeout, st.TimeoutSource
	}
	if d, s := source("p"); d != 20*time.Second || s != TimeoutPattern {
		t.Fatalf("p: %v %v, want 20s pattern", d, s)
	}
	if d, s := source("d"); d != time.Minute || s != TimeoutDefault {
		t.Fatalf("d: %v %v, want 1m0s default", d, s)
	}
	if err := f.e.SetTimeout("p", 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	// Its pattern's timeout keeps coming with its messages: the override
	// stays in force.
	f.e.TouchBatch([]Touch{{ID: "p", At: t0.Add(time.Second), Timeout: 30 * time.Second}})
	if d, s := source("p"); d != 5*time.Minute || s != TimeoutDevice {
		t.Fatalf("p after a pattern touch: %v %v, want 5m0s device", d, s)
	}
	if got := f.at(2 * time.Minute); len(got) != 1 || got[0].ID != "d" {
		t.Fatalf("at 2m: %v, want d's timeout only", got)
	}
	// Cleared: back to the latest pattern timeout (30 s), whose deadline
	// (1 s + 30 s) has passed: offline at the next Advance, at it.
	if err := f.e.ClearTimeout("p"); err != nil {
		t.Fatal(err)
	}
	if d, s := source("p"); d != 30*time.Second || s != TimeoutPattern {
		t.Fatalf("p cleared: %v %v, want 30s pattern", d, s)
	}
	wantOne(t, f.at(2*time.Minute+time.Second), "p", StatusOnline, StatusOffline, t0.Add(31*time.Second), CauseTimeout)
	// A device without a pattern returns to the default.
	f.touch("d", 3*time.Minute)
	f.at(3 * time.Minute)
	if err := f.e.SetTimeout("d", time.Second); err != nil {
		t.Fatal(err)
	}
	if err := f.e.ClearTimeout("d"); err != nil {
		t.Fatal(err)
	}
	if d, s := source("d"); d != time.Minute || s != TimeoutDefault {
		t.Fatalf("d cleared: %v %v, want 1m0s default", d, s)
	}
	if err := f.e.ClearTimeout("d"); err != nil { // nothing to clear
		t.Fatal(err)
	}
	if err := f.e.ClearTimeout("nobody"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ClearTimeout of an unknown device: %v", err)
	}
	if len(f.e.shards[0].patterns)+len(f.e.shards[1].patterns)+len(f.e.shards[2].patterns)+len(f.e.shards[3].patterns) != 0 {
		t.Fatal("patterns kept after the overrides were cleared")
	}
}

// An override given to Restore (read back from the store) or Adopt (a
// handoff) is an override there too, also for a device already known.
func TestRestoreKeepsTimeoutSource(t *testing.T) {
	f := newFixture(t, nil)
	f.touch("known", 0)
	err := f.e.Restore([]DeviceState{
		{ID: "dev", Status: StatusOnline, LastSeen: t0, Timeout: 10 * time.Minute, TimeoutSource: TimeoutDevice},
		{ID: "pat", Status: StatusOnline, LastSeen: t0, Timeout: 10 * time.Second},
		{ID: "def", Status: StatusOnline, LastSeen: t0, Timeout: 10 * time.Second, TimeoutSource: TimeoutDefault},
		{ID: "known", Status: StatusOnline, LastSeen: t0, Timeout: 2 * time.Minute, TimeoutSource: TimeoutDevice},
	}, t0)
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]struct {
		d time.Duration
		s TimeoutSource
	}{"dev": {10 * time.Minute, TimeoutDevice}, "pat": {10 * time.Second, TimeoutPattern},
		"def": {time.Minute, TimeoutDefault}, "known": {2 * time.Minute, TimeoutDevice}} {
		st, _ := f.e.Device(id)
		if st.Timeout != want.d || st.TimeoutSource != want.s {
			t.Errorf("%s: %v %v, want %v %v", id, st.Timeout, st.TimeoutSource, want.d, want.s)
		}
	}
	// A restored override is cleared to the default: its pattern comes
	// back with its next message.
	if err := f.e.ClearTimeout("dev"); err != nil {
		t.Fatal(err)
	}
	if st, _ := f.e.Device("dev"); st.TimeoutSource != TimeoutDefault {
		t.Fatalf("dev cleared: %+v", st)
	}
}

// Decommission: one removal transition after the device's earlier ones,
// one Removed state per Tracker (again after a failed write), nothing
// more; the next message brings the device back as new.
func TestDecommission(t *testing.T) {
	f := newFixture(t, nil)
	t1, _ := f.e.NewTracker()
	t2, _ := f.e.NewTracker()
	f.touch("gone", 0)
	f.touch("stays", 0)
	if err := f.e.SetTimeout("gone", time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := f.e.Decommission("gone", t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	var gone []Transition
	for _, g := range f.at(time.Second) {
		if g.ID == "gone" {
			gone = append(gone, g)
		}
	}
	if len(gone) != 2 || gone[0].To != StatusOnline || gone[1].From != StatusOnline || gone[1].To != StatusUnknown ||
		gone[1].Cause != CauseAPI || !gone[1].At.Equal(t0.Add(time.Second)) {
		t.Fatalf("gone's transitions %v, want online then its removal", gone)
	}
	if _, err := f.e.Device("gone"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Device after Decommission: %v", err)
	}
	if err := f.e.Decommission("gone", t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Decommission: %v", err)
	}
	if c := f.e.Counts(); c.Total != 1 || c.Online != 1 {
		t.Fatalf("counts %+v", c)
	}
	drain := func(tr *Tracker) map[string]DeviceState {
		m := map[string]DeviceState{}
		for _, st := range tr.Drain(nil, 100) {
			m[st.ID] = st
		}
		return m
	}
	d1 := drain(t1)
	if len(d1) != 2 || !d1["gone"].Removed || d1["stays"].Removed || d1["stays"].Status != StatusOnline {
		t.Fatalf("tracker 1 drained %+v", d1)
	}
	t1.MarkDirty("gone") // its write failed
	if d := drain(t1); len(d) != 1 || !d["gone"].Removed {
		t.Fatalf("tracker 1 after MarkDirty: %+v", d)
	}
	if d := drain(t2); len(d) != 2 || !d["gone"].Removed {
		t.Fatalf("tracker 2 drained %+v", d)
	}
	t1.MarkDirty("gone") // the last tracker's write failed too: listed again
	if d := drain(t1); len(d) != 1 || !d["gone"].Removed {
		t.Fatalf("tracker 1 after a failed write of the last removal: %+v", d)
	}
	t2.MarkDirty("stays") // a live device is still re-listed
	if d := drain(t2); len(d) != 1 || d["stays"].Removed {
		t.Fatalf("tracker 2: %+v", d)
	}
	// Nothing fires for it: its wheel entry is stale.
	if got := f.at(2 * time.Hour); len(got) != 1 || got[0].ID != "stays" {
		t.Fatalf("after an hour: %v, want stays' timeout only", got)
	}
	// Back as new, with the default timeout.
	f.touch("gone", 2*time.Hour)
	wantOne(t, f.at(2*time.Hour), "gone", StatusUnknown, StatusOnline, t0.Add(2*time.Hour), CauseTelemetry)
	if st, _ := f.e.Device("gone"); st.TimeoutSource != TimeoutDefault || st.Timeout != time.Minute {
		t.Fatalf("back: %+v", st)
	}
	if d := drain(t1); d["gone"].Removed || d["gone"].Status != StatusOnline {
		t.Fatalf("tracker 1 after the return: %+v", d)
	}
	if s := f.e.Stats(); s.Decommissioned != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// A device decommissioned while its removal waits for the trackers and
// back before they drained it is written as it is now, not deleted; one
// whose timeout waits in the expired list gets it first, then the removal.
func TestDecommissionRaces(t *testing.T) {
	f := newFixture(t, nil)
	tr, _ := f.e.NewTracker()
	f.touch("a", 0)
	f.touch("b", 0)
	f.at(0)
	tr.Drain(nil, 10)
	if err := f.e.Decommission("a", t0); err != nil {
		t.Fatal(err)
	}
	f.touch("a", time.Second)
	if d := tr.Drain(nil, 10); len(d) != 1 || d[0].Removed || d[0].Status != StatusOnline {
		t.Fatalf("drained %+v, want a online", d)
	}
	f.clk.Set(t0.Add(2 * time.Minute))
	f.e.Advance(t0.Add(2 * time.Minute)) // both time out, listed, not delivered
	if err := f.e.Decommission("b", t0.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	f.e.Deliver()
	var b []Transition
	for _, g := range f.rec.take() {
		if g.ID == "b" {
			b = append(b, g)
		}
	}
	if len(b) != 2 || b[0].To != StatusOffline || b[0].Cause != CauseTimeout || b[1].To != StatusUnknown || b[1].From != StatusOffline {
		t.Fatalf("b's transitions %v, want its timeout, then its removal", b)
	}
}

// A transition says when the status it ends began, where the engine knows.
func TestTransitionPrevSince(t *testing.T) {
	f := newFixture(t, nil)
	f.touch("p", 0)
	if err := f.e.MarkOffline("p", t0.Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	f.touch("p", 20*time.Second)
	got := f.at(20 * time.Second)
	if len(got) != 3 || !got[0].PrevSince.IsZero() || !got[1].PrevSince.Equal(t0) || !got[2].PrevSince.Equal(t0.Add(10*time.Second)) {
		t.Fatalf("transitions %+v", got)
	}
	if err := f.e.Decommission("p", t0.Add(30*time.Second)); err != nil {
		t.Fatal(err)
	}
	if got := f.at(30 * time.Second); len(got) != 1 || !got[0].PrevSince.Equal(t0.Add(20*time.Second)) {
		t.Fatalf("removal %+v", got)
	}
}
