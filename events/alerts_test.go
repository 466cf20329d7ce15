package events

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/presence-dev/presence/engine"
)

// clock is a manual clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

// alertHub is a hub with only a capture destination, driven by hand:
// not started, the test calls checkAlerts with its clock.
func alertHub(t *testing.T, cfg AlertConfig, fleet int) (*Hub, *clock, func() []rec) {
	t.Helper()
	c := bareConfig()
	c.Alerts = cfg
	clk := &clock{t: t0}
	h, err := New(c, Deps{Logger: quietLog(), Now: clk.Now, FleetSize: func() int { return fleet }})
	if err != nil {
		t.Fatal(err)
	}
	capt := &captureSender{}
	h.add("capture", capt, defaultDelivery())
	d := h.dests[len(h.dests)-1]
	// The hub is driven by hand, without its workers: Flush hands what the
	// capture destination queued to capt.
	return h, clk, func() []rec {
		if err := d.q.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		return capt.take()
	}
}

func offlineAlertsOnly() AlertConfig {
	a := DefaultConfig().Alerts
	a.Mass.Enabled = false
	return a
}

func TestOfflineAlertOncePerPeriod(t *testing.T) {
	h, clk, events := alertHub(t, offlineAlertsOnly(), 0)
	on := func(id string) {
		h.HandleTransitions([]engine.Transition{tr(id, engine.StatusOffline, engine.StatusOnline, clk.Now(), engine.CauseTelemetry)})
	}
	off := func(id string) {
		h.HandleTransitions([]engine.Transition{tr(id, engine.StatusOnline, engine.StatusOffline, clk.Now(), engine.CauseTimeout)})
	}
	alerts := func() []rec { return ofType(events(), TypeOfflineAlert) }
	check := func(step string, want ...string) {
		t.Helper()
		h.checkAlerts(clk.Now())
		got := alerts()
		if len(got) != len(want) {
			t.Fatalf("%s: got %d alerts %+v, want %v", step, len(got), got, want)
		}
		for i := range want {
			if got[i].id != want[i] {
				t.Fatalf("%s: alert %d is %s, want %s", step, i, got[i].id, want[i])
			}
		}
	}

	off("a")
	clk.Add(time.Minute)
	off("b")
	clk.Add(14*time.Minute - time.Second)
	check("before the threshold")
	clk.Add(time.Second)
	check("at a's threshold", "a")
	on("b") // back before its threshold: never alerts
	clk.Add(time.Hour)
	check("an hour later: nothing more")

	// The alert: dated at the threshold, with the offline start.
	h.HandleTransitions(nil)
	on("a")
	off("a") // a new offline period alerts again
	clk.Add(15 * time.Minute)
	h.checkAlerts(clk.Now())
	got := alerts()
	if len(got) != 1 || got[0].id != "a" {
		t.Fatalf("second period: got %+v", got)
	}
	if want := clk.Now().Add(-15 * time.Minute).UnixMicro(); got[0].since != want || got[0].at != want+(15*time.Minute).Microseconds() {
		t.Fatalf("alert since=%d at=%d", got[0].since, got[0].at)
	}
	if n := h.al.tracked(); n != 0 {
		t.Fatalf("%d devices still tracked after their alerts", n)
	}
}

// TestOfflineAlertRun uses the real ticker under synctest: the alert loop
// that Start starts emits the alert within CheckInterval of the threshold.
func TestOfflineAlertRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := bareConfig()
		c.Alerts = offlineAlertsOnly()
		h, err := New(c, Deps{Logger: quietLog()})
		if err != nil {
			t.Fatal(err)
		}
		capt := &captureSender{}
		h.add("capture", capt, defaultDelivery())
		if err := h.Start(context.Background()); err != nil {
			t.Fatal(err)
		}

		start := time.Now()
		h.HandleTransitions([]engine.Transition{tr("x", engine.StatusOnline, engine.StatusOffline, start, engine.CauseTimeout)})
		synctest.Wait()
		if got := ofType(capt.take(), TypeStatus); len(got) != 1 {
			t.Fatalf("status events: %v", got)
		}
		time.Sleep(15*time.Minute - time.Millisecond)
		synctest.Wait()
		if got := capt.take(); len(got) != 0 {
			t.Fatalf("alert before the threshold: %+v", got)
		}
		time.Sleep(c.Alerts.CheckInterval + time.Millisecond)
		synctest.Wait()
		got := capt.take()
		if len(got) != 1 || got[0].typ != TypeOfflineAlert || got[0].id != "x" {
			t.Fatalf("want one offline_alert, got %+v", got)
		}
		time.Sleep(time.Hour)
		synctest.Wait()
		if got := capt.take(); len(got) != 0 {
			t.Fatalf("alert repeated: %+v", got)
		}
		if err := h.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}

func massConfig() AlertConfig {
	a := DefaultConfig().Alerts // 15 min, 1000 or 10% (min 50) within 30 s, recover at 80%
	return a
}

// TestMassOfflineBrokerLoss simulates a broker loss: 1000 of 1200 devices
// time out over 20 s (each at its own last_seen + timeout). Exactly one
// mass_offline is emitted; the individual offline alerts of those devices
// are replaced by it; when 900 come back one mass_offline_recovered
// follows, and the 100 still offline get their own alerts then.
func TestMassOfflineBrokerLoss(t *testing.T) {
	const fleet, lost = 1200, 1000
	h, clk, events := alertHub(t, massConfig(), fleet)
	rng := rand.New(rand.NewPCG(7, 7))
	id := func(i int) string { return fmt.Sprintf("dev-%04d", i) }

	// 20 s of offline transitions, in engine-sized batches every 100 ms.
	perm := rng.Perm(fleet)[:lost]
	for step, i := 0, 0; i < lost; step++ {
		now := clk.Add(100 * time.Millisecond)
		var batch []engine.Transition
		for n := 0; n < 5 && i < lost; n, i = n+1, i+1 {
			batch = append(batch, tr(id(perm[i]), engine.StatusOnline, engine.StatusOffline, now, engine.CauseTimeout))
		}
		h.HandleTransitions(batch)
	}
	got := events()
	mass := ofType(got, TypeMassOffline)
	if len(mass) != 1 {
		t.Fatalf("got %d mass_offline events, want 1", len(mass))
	}
	if st := len(ofType(got, TypeStatus)); st != lost {
		t.Fatalf("individual status events: %d, want %d (they still flow)", st, lost)
	}
	m := mass[0].inc
	// 10% of 1200 is 120: the incident opens at the 120th device.
	if m.count != 120 || m.fleet != fleet || m.share != 0.1 {
		t.Fatalf("mass_offline: %+v", m)
	}
	if h.al.active.members != lost {
		t.Fatalf("incident members: %d, want %d (the rest of the burst joins)", h.al.active.members, lost)
	}

	// 15 minutes later: no individual alert for the incident's devices.
	clk.Add(16 * time.Minute)
	h.checkAlerts(clk.Now())
	if a := ofType(events(), TypeOfflineAlert); len(a) != 0 {
		t.Fatalf("%d offline alerts during the incident, want 0", len(a))
	}

	// 900 come back (90% >= 80%): recovered once, at the 800th.
	for i := range 900 {
		h.HandleTransitions([]engine.Transition{tr(id(perm[i]), engine.StatusOffline, engine.StatusOnline, clk.Add(time.Millisecond), engine.CauseTelemetry)})
	}
	got = events()
	rec := ofType(got, TypeMassOfflineRecovered)
	if len(rec) != 1 {
		t.Fatalf("got %d mass_offline_recovered, want 1", len(rec))
	}
	if r := rec[0].inc; r.count != lost || r.recovered != 800 || r.stillOffline != 200 || r.id != m.id {
		t.Fatalf("recovered: %+v", r)
	}
	if len(ofType(got, TypeMassOffline)) != 0 {
		t.Fatal("second mass_offline")
	}
	// The 100 still offline are past their threshold: alerted now.
	h.checkAlerts(clk.Now())
	if a := ofType(events(), TypeOfflineAlert); len(a) != 100 {
		t.Fatalf("after recovery: %d offline alerts, want 100", len(a))
	}
}

// TestMassOfflineCountTrigger: the absolute count fires without a fleet
// size.
func TestMassOfflineCountTrigger(t *testing.T) {
	a := massConfig()
	a.Mass.Count, a.Mass.Share = 100, 0
	h, clk, events := alertHub(t, a, 0)
	var batch []engine.Transition
	for i := range 150 {
		batch = append(batch, tr(fmt.Sprintf("d%d", i), engine.StatusOnline, engine.StatusOffline, clk.Now(), engine.CauseLastWill))
	}
	h.HandleTransitions(batch)
	if m := ofType(events(), TypeMassOffline); len(m) != 1 || m[0].inc.count != 100 {
		t.Fatalf("mass: %+v", m)
	}
}

// TestMassOfflineIgnoresRestart: offline transitions of restart recovery
// are our own artifact, not an outage.
func TestMassOfflineIgnoresRestart(t *testing.T) {
	h, clk, events := alertHub(t, massConfig(), 1200)
	var batch []engine.Transition
	for i := range 1000 {
		batch = append(batch, tr(fmt.Sprintf("d%d", i), engine.StatusOnline, engine.StatusOffline, clk.Now().Add(-time.Hour), engine.CauseRestart))
	}
	h.HandleTransitions(batch)
	if m := ofType(events(), TypeMassOffline); len(m) != 0 {
		t.Fatalf("mass_offline on restart recovery: %+v", m)
	}
}

// TestMassOfflineNotForChurn replays two hours of ordinary churn: a
// randomized trace where devices of a 1200-device fleet flap (some leave
// for minutes, some come back within seconds), with bursts of up to 40
// devices at once. No incident may fire; offline alerts still do.
func TestMassOfflineNotForChurn(t *testing.T) {
	for seed := range uint64(5) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			const fleet = 1200
			h, clk, events := alertHub(t, massConfig(), fleet)
			rng := rand.New(rand.NewPCG(seed, 99))
			online := make([]bool, fleet)
			for i := range online {
				online[i] = true
			}
			alerts := 0
			for step := 0; step < 7200; step++ { // one step per simulated second
				now := clk.Add(time.Second)
				var batch []engine.Transition
				k := rng.IntN(3) // 0-2 devices change per second...
				if rng.IntN(600) == 0 {
					k = 40 // ...and now and then a small burst (a flaky gateway)
				}
				for range k {
					d := rng.IntN(fleet)
					from, to, cause := engine.StatusOnline, engine.StatusOffline, engine.CauseTimeout
					if !online[d] {
						from, to, cause = engine.StatusOffline, engine.StatusOnline, engine.CauseTelemetry
					}
					online[d] = !online[d]
					batch = append(batch, tr(fmt.Sprintf("dev-%04d", d), from, to, now, cause))
				}
				h.HandleTransitions(batch)
				if step%10 == 0 {
					h.checkAlerts(now)
				}
				got := events()
				if m := ofType(got, TypeMassOffline); len(m) > 0 {
					t.Fatalf("step %d: mass_offline for churn: %+v", step, m[0].inc)
				}
				alerts += len(ofType(got, TypeOfflineAlert))
			}
			if alerts == 0 {
				t.Fatal("no offline alert in two hours of churn: the trace is too gentle")
			}
			if n := h.al.tracked(); n > fleet {
				t.Fatalf("%d devices tracked, fleet is %d", n, fleet)
			}
		})
	}
}

// TestAlertsBoundedMemory: one record per offline device however often it
// flaps, and none for online devices.
func TestAlertsBoundedMemory(t *testing.T) {
	h, clk, _ := alertHub(t, massConfig(), 1000)
	for range 50 {
		for i := range 100 {
			id := fmt.Sprint("d", i)
			h.HandleTransitions([]engine.Transition{
				tr(id, engine.StatusOnline, engine.StatusOffline, clk.Add(time.Millisecond), engine.CauseTimeout),
				tr(id, engine.StatusOffline, engine.StatusOnline, clk.Add(time.Millisecond), engine.CauseTelemetry),
			})
		}
	}
	if n, heap := h.al.tracked(), len(h.al.heap); n != 0 || heap != 0 {
		t.Fatalf("tracked %d, heap %d after every device came back", n, heap)
	}
	for i := range 100 {
		h.HandleTransitions([]engine.Transition{tr(fmt.Sprint("d", i), engine.StatusOnline, engine.StatusOffline, clk.Now(), engine.CauseTimeout)})
	}
	if n, heap := h.al.tracked(), len(h.al.heap); n != 100 || heap != 100 {
		t.Fatalf("tracked %d, heap %d, want 100", n, heap)
	}
	if h.al.inWindow != 100 {
		t.Fatalf("window counts %d, want 100", h.al.inWindow)
	}
	clk.Add(time.Minute)
	h.checkAlerts(clk.Now())
	if h.al.inWindow != 0 {
		t.Fatalf("window counts %d a minute later, want 0", h.al.inWindow)
	}
}

// An offline record's int16 bucket survives any uptime: far from the
// base, rebase renumbers the records in the window and stops counting the
// others.
func TestAlertRecordsRebase(t *testing.T) {
	a := massConfig()
	a.OfflineAfter = 0 // records kept for the window only
	a.Mass.Count, a.Mass.Share = 1000, 0
	h, clk, _ := alertHub(t, a, 0)
	off := func(ids ...string) {
		var batch []engine.Transition
		for _, id := range ids {
			batch = append(batch, tr(id, engine.StatusOnline, engine.StatusOffline, clk.Now(), engine.CauseTimeout))
		}
		h.HandleTransitions(batch)
	}
	on := func(id string) {
		h.HandleTransitions([]engine.Transition{tr(id, engine.StatusOffline, engine.StatusOnline, clk.Now(), engine.CauseTelemetry)})
	}
	h.checkAlerts(clk.Now())
	off("old-1", "old-2")
	if h.al.inWindow != 2 {
		t.Fatalf("in window: %d, want 2", h.al.inWindow)
	}
	bucket := time.Duration(h.al.bucketNs)
	for range rebaseAfter/1000 + 1 {
		h.checkAlerts(clk.Add(1000 * bucket))
	}
	if d := h.al.newest - h.al.bucketBase; d > rebaseAfter || d < 0 {
		t.Fatalf("newest %d buckets from the base: not rebased", d)
	}
	if h.al.inWindow != 0 {
		t.Fatalf("in window after the jump: %d, want 0", h.al.inWindow)
	}
	off("new-1", "new-2")
	h.checkAlerts(clk.Add(bucket)) // the new ones stay in the window
	on("old-1")                    // long out of the window: nothing to take back
	on("new-1")
	if h.al.inWindow != 1 {
		t.Fatalf("in window: %d, want 1 (new-2)", h.al.inWindow)
	}
	for i := range uint32(h.al.slots.len()) {
		if r := h.al.slots.at(i); r.used() && r.bucket != noBucket16 && h.al.bucketOf(r) != h.al.newest-1 {
			t.Fatalf("record %d in bucket %d, newest %d", i, h.al.bucketOf(r), h.al.newest)
		}
	}
}

// A decommissioned device is forgotten: no offline alert for it, and its
// removed event reaches the destinations.
func TestRemovedDeviceRaisesNoAlert(t *testing.T) {
	h, clk, events := alertHub(t, offlineAlertsOnly(), 0)
	h.HandleTransitions([]engine.Transition{tr("gone", engine.StatusOnline, engine.StatusOffline, clk.Now(), engine.CauseTimeout)})
	clk.Add(time.Minute)
	h.HandleTransitions([]engine.Transition{tr("gone", engine.StatusOffline, engine.StatusUnknown, clk.Now(), engine.CauseAPI)})
	if n := h.al.tracked(); n != 0 {
		t.Fatalf("%d devices tracked after the removal", n)
	}
	clk.Add(time.Hour)
	h.checkAlerts(clk.Now())
	got := events()
	if len(ofType(got, TypeOfflineAlert)) != 0 {
		t.Fatalf("alert for a decommissioned device: %+v", got)
	}
	if r := ofType(got, TypeRemoved); len(r) != 1 || r[0].id != "gone" || r[0].prev != engine.StatusOffline {
		t.Fatalf("removed events %+v", r)
	}
}

// Decommissioning an outage's dead devices takes them out of the incident
// instead of counting them back: it recovers when 80% of the members left
// are back.
func TestRemovedMembersLeaveTheIncident(t *testing.T) {
	const fleet, lost = 1200, 1000
	h, clk, events := alertHub(t, massConfig(), fleet)
	id := func(i int) string { return fmt.Sprintf("dev-%04d", i) }
	var batch []engine.Transition
	now := clk.Add(100 * time.Millisecond)
	for i := range lost {
		batch = append(batch, tr(id(i), engine.StatusOnline, engine.StatusOffline, now, engine.CauseTimeout))
	}
	h.HandleTransitions(batch)
	if len(ofType(events(), TypeMassOffline)) != 1 || h.al.active.members != lost {
		t.Fatal("no incident of the 1000")
	}
	// 500 decommissioned: no recovery.
	batch = batch[:0]
	for i := range 500 {
		batch = append(batch, tr(id(i), engine.StatusOffline, engine.StatusUnknown, clk.Add(time.Millisecond), engine.CauseAPI))
	}
	h.HandleTransitions(batch)
	if r := ofType(events(), TypeMassOfflineRecovered); len(r) != 0 || h.al.active == nil || h.al.active.members != 500 {
		t.Fatalf("after 500 removals: recovered %+v, active %+v", r, h.al.active)
	}
	// 400 of the 500 left come back: 80%, recovered.
	for i := 500; i < 900; i++ {
		h.HandleTransitions([]engine.Transition{tr(id(i), engine.StatusOffline, engine.StatusOnline, clk.Add(time.Millisecond), engine.CauseTelemetry)})
	}
	r := ofType(events(), TypeMassOfflineRecovered)
	if len(r) != 1 || r[0].inc.count != 500 || r[0].inc.recovered != 400 || r[0].inc.stillOffline != 100 {
		t.Fatalf("recovered %+v", r)
	}
}
