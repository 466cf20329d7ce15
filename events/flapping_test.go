package events

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/presence-dev/presence/engine"
)

// flapConfig: more than 3 changes within a minute is flapping; offline
// alerts after 30 s.
func flapConfig(maxTracked int) AlertConfig {
	a := offlineAlertsOnly()
	a.OfflineAfter = 30 * time.Second
	a.Flapping = FlapConfig{Changes: 3, Window: time.Minute, MaxTracked: maxTracked}
	return a
}

// The detector on an injected clock: one flapping event at the change
// that makes it, status events untouched, the offline alert of a flapping
// device suppressed, one flapping_stopped once stable for the window.
func TestFlappingDetector(t *testing.T) {
	h, clk, events := alertHub(t, flapConfig(100), 0)
	status := engine.StatusUnknown
	change := func(id string, prev time.Time) {
		t.Helper()
		to := engine.StatusOnline
		if status == engine.StatusOnline {
			to = engine.StatusOffline
		}
		h.HandleTransitions([]engine.Transition{{ID: id, From: status, To: to, At: clk.Now(), PrevSince: prev, Cause: engine.CauseTelemetry}})
		status = to
	}
	var times []time.Time
	step := func(d time.Duration) { times = append(times, clk.Add(d)) }
	step(0)
	change("f", time.Time{}) // its first message: followed from the next change
	for range 2 {
		step(10 * time.Second)
		change("f", times[len(times)-2])
		if h.Flapping("f") {
			t.Fatalf("flapping after %d changes, want more than 3", len(times))
		}
	}
	step(10 * time.Second)
	change("f", times[len(times)-2]) // the 4th change within 30 s
	if !h.Flapping("f") {
		t.Fatal("not flapping after 4 changes within 30 s")
	}
	step(10 * time.Second)
	change("f", times[len(times)-2])
	step(10 * time.Second)
	change("f", times[len(times)-2]) // offline again: no second flapping event
	got := events()
	if n := len(ofType(got, TypeStatus)); n != 6 {
		t.Fatalf("%d status events, want all 6", n)
	}
	fl := ofType(got, TypeFlapping)
	if len(fl) != 1 || fl[0].id != "f" || fl[0].at != times[3].UnixMicro() || fl[0].since != times[0].UnixMicro() {
		t.Fatalf("flapping events %+v", fl)
	}
	// Offline since times[5]: its alert at +30 s is suppressed.
	clk.Add(45 * time.Second)
	h.checkAlerts(clk.Now())
	if got := events(); len(got) != 0 {
		t.Fatalf("events while flapping and offline: %+v", got)
	}
	// Stable for the window after its last change: flapping_stopped, dated
	// then, once; and, offline all along, its offline alert back (due
	// since, at once).
	clk.Add(20 * time.Second)
	h.checkAlerts(clk.Now())
	got = events()
	st := ofType(got, TypeFlappingStopped)
	if al := ofType(got, TypeOfflineAlert); len(al) != 1 || al[0].since != times[5].UnixMicro() {
		t.Fatalf("offline alerts after the flapping: %+v", al)
	}
	if len(got) != 2 || len(st) != 1 || st[0].at != times[5].Add(time.Minute).UnixMicro() || st[0].since != times[3].UnixMicro() ||
		st[0].status != engine.StatusOffline {
		t.Fatalf("after a stable window: %+v", got)
	}
	if h.Flapping("f") || h.fl.nFlapping != 0 || len(h.fl.devs) != 0 {
		t.Fatalf("still followed: flapping %v, %d flapping, %d tracked", h.Flapping("f"), h.fl.nFlapping, len(h.fl.devs))
	}
	var e Event
	var enc encoder
	if err := json.Unmarshal(enc.appendJSON(nil, &st[0]), &e); err != nil || e.Type != "flapping_stopped" || e.DurationSeconds != 80 {
		t.Fatalf("flapping_stopped JSON %+v %v", e, err)
	}
}

// Only quick changers are followed, at most MaxTracked; a decommissioned
// device is forgotten.
func TestFlappingBounded(t *testing.T) {
	h, clk, _ := alertHub(t, flapConfig(1), 0)
	now := clk.Now()
	h.HandleTransitions([]engine.Transition{
		{ID: "slow", From: engine.StatusOnline, To: engine.StatusOffline, At: now, PrevSince: now.Add(-time.Hour)},
		{ID: "quick", From: engine.StatusOnline, To: engine.StatusOffline, At: now, PrevSince: now.Add(-time.Second)},
		{ID: "quick2", From: engine.StatusOnline, To: engine.StatusOffline, At: now, PrevSince: now.Add(-time.Second)},
		{ID: "timeout", From: engine.StatusOnline, To: engine.StatusOffline, At: now, Cause: engine.CauseTimeout},
	})
	if len(h.fl.devs) != 1 || h.fl.devs["quick"] == nil || h.fl.untracked.Get() != 1 {
		t.Fatalf("followed %v, untracked %d", h.fl.devs, h.fl.untracked.Get())
	}
	h.HandleTransitions([]engine.Transition{{ID: "quick", From: engine.StatusOffline, To: engine.StatusUnknown, At: now, Cause: engine.CauseAPI}})
	if len(h.fl.devs) != 0 {
		t.Fatalf("a removed device still followed: %v", h.fl.devs)
	}
}

func TestFlappingConfigValidate(t *testing.T) {
	c := DefaultConfig()
	c.Alerts.Flapping.Window = 0
	if err := c.Validate(); err == nil {
		t.Fatal("flapping with a zero window accepted")
	}
	c.Alerts.Flapping.Changes = 0 // disabled: the window does not matter
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c.Alerts.Flapping.Changes = -1
	if err := c.Validate(); err == nil {
		t.Fatal("negative changes accepted")
	}
}
