package engine

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The model-based test drives the engine and a plain reference model with
// the same random trace (touches, per-touch timeouts and per-device
// overrides set and cleared, Last Wills, handoffs, decommissions,
// out-of-order timestamps, small steps and clock jumps of days) and
// checks every transition, its time and its cause, and every device's state.
//
// Where the specification leaves the engine a choice (an offline transition
// may come anywhere between the deadline and deadline + one wheel step), the
// model accepts either and follows the engine.

type modelDev struct {
	status   Status
	lastSeen time.Time
	since    time.Time
	timeout  time.Duration
	// override: timeout is the device's own (SetTimeout); pattern is then
	// the one ClearTimeout returns to.
	override bool
	pattern  time.Duration
	// armed is when the deadline was last set other than by a message's
	// time (a new device, a revival, a new timeout): a deadline that is
	// already past then is due at the next wheel step, not before.
	armed time.Time
}

type model struct {
	t       *testing.T
	f       *fixture
	gran    time.Duration
	devs    map[string]*modelDev
	want    map[string][]Transition // expected since the last check, per device
	now     time.Time               // the trace's clock
	advance time.Time               // the last Advance
}

func modelIDs(rng *rand.Rand, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		switch i % 3 {
		case 0:
			ids[i] = fmt.Sprint(i) // short, packed in the record
		case 1:
			ids[i] = fmt.Sprintf("sensor-%04d-%s", i, strings.Repeat("x", rng.IntN(100))) // arena
		default:
			ids[i] = fmt.Sprintf("%08d", i) // exactly 8 bytes
		}
	}
	return ids
}

func (m *model) expect(tr Transition) {
	m.want[tr.ID] = append(m.want[tr.ID], tr)
}

func (m *model) touch(id string, at time.Time, tmo time.Duration) {
	m.t.Helper()
	if id == traceID {
		m.t.Logf("touch at %v tmo %v (now %v)", at, tmo, m.now)
	}
	var err error
	if tmo == 0 {
		err = m.f.e.Touch(id, at)
	} else if rej := m.f.e.TouchBatch([]Touch{{ID: id, At: at, Timeout: tmo}}); rej != 0 {
		err = fmt.Errorf("rejected")
	}
	if err != nil {
		m.t.Fatalf("touch %s: %v", id, err)
	}
	d := m.devs[id]
	if d == nil {
		if tmo == 0 {
			tmo = m.f.e.cfg.DefaultTimeout
		}
		m.devs[id] = &modelDev{status: StatusOnline, lastSeen: at, since: at, timeout: tmo, armed: m.now}
		m.expect(Transition{ID: id, From: StatusUnknown, To: StatusOnline, At: at, Cause: CauseTelemetry})
		return
	}
	m.seen(id, d, at, tmo, CauseTelemetry)
}

// seen is what a message at at does to known device d; cause is that of
// the online transition it may make.
func (m *model) seen(id string, d *modelDev, at time.Time, tmo time.Duration, cause Cause) {
	if at.After(d.lastSeen) {
		d.lastSeen = at
	}
	switch {
	case tmo != 0 && d.override:
		d.pattern = tmo
	case tmo != 0 && tmo != d.timeout:
		d.timeout, d.armed = tmo, m.now
	}
	if d.status != StatusOffline || !at.After(d.since) {
		return
	}
	// A message revives an offline device unless its own deadline has
	// passed already: certain beyond the last Advance, certainly not a wheel
	// step before it, the engine's choice in between.
	deadline := d.lastSeen.Add(d.timeout)
	revive := deadline.After(m.advance)
	if !revive && deadline.After(m.advance.Add(-m.gran)) {
		st, _ := m.f.e.Device(id)
		revive = st.Status == StatusOnline
	}
	if revive {
		d.status, d.since, d.armed = StatusOnline, at, m.now
		m.expect(Transition{ID: id, From: StatusOffline, To: StatusOnline, At: at, Cause: cause})
	}
}

func (m *model) markOffline(id string, at time.Time) {
	m.t.Helper()
	if id == traceID {
		m.t.Logf("markOffline at %v", at)
	}
	err := m.f.e.MarkOffline(id, at)
	d := m.devs[id]
	if d == nil {
		if err == nil {
			m.t.Fatalf("MarkOffline of unknown %s succeeded", id)
		}
		return
	}
	if err != nil {
		m.t.Fatalf("MarkOffline %s: %v", id, err)
	}
	if d.status == StatusOnline && !at.Before(d.lastSeen) {
		d.status, d.since = StatusOffline, at
		m.expect(Transition{ID: id, From: StatusOnline, To: StatusOffline, At: at, Cause: CauseLastWill})
	}
}

func (m *model) setTimeout(id string, tmo time.Duration) {
	m.t.Helper()
	if id == traceID {
		m.t.Logf("setTimeout %v", tmo)
	}
	err := m.f.e.SetTimeout(id, tmo)
	if d := m.devs[id]; d != nil {
		if err != nil {
			m.t.Fatalf("SetTimeout %s: %v", id, err)
		}
		if !d.override {
			d.override, d.pattern = true, d.timeout
		}
		if tmo != d.timeout {
			d.timeout, d.armed = tmo, m.now
		}
	} else if err == nil {
		m.t.Fatalf("SetTimeout of unknown %s succeeded", id)
	}
}

func (m *model) clearTimeout(id string) {
	m.t.Helper()
	if id == traceID {
		m.t.Logf("clearTimeout")
	}
	err := m.f.e.ClearTimeout(id)
	d := m.devs[id]
	if d == nil {
		if err == nil {
			m.t.Fatalf("ClearTimeout of unknown %s succeeded", id)
		}
		return
	}
	if err != nil {
		m.t.Fatalf("ClearTimeout %s: %v", id, err)
	}
	if d.override {
		d.override = false
		if d.pattern != d.timeout {
			d.timeout, d.armed = d.pattern, m.now
		}
	}
}

// decommission forgets a device: its removal comes after what it had
// queued, and after its timeout if the engine has made it (a deadline
// past the last Advance, not yet checked by step).
func (m *model) decommission(id string) {
	m.t.Helper()
	if id == traceID {
		m.t.Logf("decommission at %v", m.now)
	}
	st, _ := m.f.e.Device(id)
	err := m.f.e.Decommission(id, m.now)
	d := m.devs[id]
	if d == nil {
		if err == nil {
			m.t.Fatalf("Decommission of unknown %s succeeded", id)
		}
		return
	}
	if err != nil {
		m.t.Fatalf("Decommission %s: %v", id, err)
	}
	from := d.status
	if d.status == StatusOnline && st.Status == StatusOffline {
		m.expect(Transition{ID: id, From: StatusOnline, To: StatusOffline, At: d.lastSeen.Add(d.timeout), Cause: CauseTimeout})
		from = StatusOffline
	}
	m.expect(Transition{ID: id, From: from, To: StatusUnknown, At: m.now, Cause: CauseAPI})
	delete(m.devs, id)
	if _, err := m.f.e.Device(id); err == nil {
		m.t.Fatalf("%s still found after Decommission", id)
	}
}

// remove hands a device to another owner: it is forgotten, but what it had
// queued is still delivered.
func (m *model) remove(id string) {
	m.t.Helper()
	want := 0
	if m.devs[id] != nil {
		want = 1
	}
	if got := m.f.e.Remove(id); got != want {
		m.t.Fatalf("Remove(%s) = %d, want %d", id, got, want)
	}
	delete(m.devs, id)
	if _, err := m.f.e.Device(id); err == nil {
		m.t.Fatalf("%s still found after Remove", id)
	}
}

// adopt takes a device over from another owner with the state it had there.
func (m *model) adopt(id string, st Status, lastSeen time.Time, tmo time.Duration) {
	m.t.Helper()
	if err := m.f.e.Adopt([]DeviceState{{ID: id, Status: st, LastSeen: lastSeen, Timeout: tmo}}, m.now); err != nil {
		m.t.Fatalf("Adopt(%s): %v", id, err)
	}
	if d := m.devs[id]; d != nil { // known here: only last_seen merges
		switch {
		case st == StatusOnline && lastSeen.After(d.lastSeen) && lastSeen.Add(d.timeout).After(m.now):
			m.seen(id, d, lastSeen, 0, CauseHandoff) // as the message the old owner heard
		case lastSeen.After(d.lastSeen):
			d.lastSeen = lastSeen
		}
		return
	}
	deadline := lastSeen.Add(tmo)
	switch {
	case st == StatusOnline && deadline.After(m.now):
		m.devs[id] = &modelDev{status: StatusOnline, lastSeen: lastSeen, since: lastSeen, timeout: tmo, armed: m.now}
	case st == StatusOnline:
		m.devs[id] = &modelDev{status: StatusOffline, lastSeen: lastSeen, since: deadline, timeout: tmo, armed: m.now}
		m.expect(Transition{ID: id, From: StatusOnline, To: StatusOffline, At: deadline, Cause: CauseHandoff})
	default:
		m.devs[id] = &modelDev{status: StatusOffline, lastSeen: lastSeen, since: deadline, timeout: tmo, armed: m.now}
	}
}

// step advances the clock to now and checks everything delivered.
func (m *model) step(now time.Time) {
	m.t.Helper()
	m.now = now
	m.f.clk.Set(now)
	m.f.e.Advance(now)
	m.f.e.Deliver()
	got := map[string][]Transition{}
	for _, tr := range m.f.rec.take() {
		got[tr.ID] = append(got[tr.ID], tr)
	}
	for id, want := range m.want { // transitions of devices removed since
		if m.devs[id] == nil {
			g := got[id]
			if len(g) != len(want) {
				m.t.Fatalf("removed %s: got %v, want %v", id, g, want)
			}
			for i := range want {
				if !sameTransition(g[i], want[i]) {
					m.t.Fatalf("removed %s transition %d: got %+v, want %+v", id, i, g[i], want[i])
				}
			}
			delete(got, id)
		}
	}
	for id, d := range m.devs {
		if id == traceID {
			m.t.Logf("step %v: model %+v got %v", now, *d, got[id])
		}
		want := m.want[id]
		g := got[id]
		if len(g) < len(want) {
			m.t.Fatalf("%s: got %v, want %v", id, g, want)
		}
		for i := range want {
			if !sameTransition(g[i], want[i]) {
				m.t.Fatalf("%s transition %d: got %+v, want %+v", id, i, g[i], want[i])
			}
		}
		extra := g[len(want):]
		// What is left can only be the timeout of an online device.
		if d.status == StatusOnline {
			deadline := d.lastSeen.Add(d.timeout)
			must := !deadline.After(now.Add(-m.gran)) && !d.armed.After(now.Add(-m.gran))
			may := !deadline.After(now)
			switch {
			case len(extra) == 0 && must:
				m.t.Fatalf("%s: deadline %v passed at %v (wheel step %v) but still online", id, deadline, now, m.gran)
			case len(extra) == 1 && may:
				wantTr := Transition{ID: id, From: StatusOnline, To: StatusOffline, At: deadline, Cause: CauseTimeout}
				if !sameTransition(extra[0], wantTr) {
					m.t.Fatalf("%s timeout: got %+v, want %+v", id, extra[0], wantTr)
				}
				d.status, d.since = StatusOffline, deadline
				extra = nil
			}
		}
		if len(extra) > 0 {
			m.t.Fatalf("%s: unexpected transitions %+v (model %+v, now %v)", id, extra, *d, now)
		}
		delete(got, id)
		st, err := m.f.e.Device(id)
		if err != nil || st.Status != d.status || !st.LastSeen.Equal(d.lastSeen) || !st.Since.Equal(d.since) || st.Timeout != d.timeout ||
			(st.TimeoutSource == TimeoutDevice) != d.override {
			m.t.Fatalf("%s: engine %+v (%v), model %+v", id, st, err, *d)
		}
	}
	if len(got) > 0 {
		m.t.Fatalf("transitions of unknown devices: %v", got)
	}
	clear(m.want)
}

func sameTransition(a, b Transition) bool {
	return a.ID == b.ID && a.From == b.From && a.To == b.To && a.At.Equal(b.At) && a.Cause == b.Cause && a.Coalesced == b.Coalesced
}

var (
	// MODEL_TRACE=<id> logs what the model does with one device.
	traceID = os.Getenv("MODEL_TRACE")
	// MODEL_SEEDS=<n> runs more random traces (8 by default).
	modelSeeds = uint64(envInt("MODEL_SEEDS", 8))
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

var modelTimeouts = []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, time.Minute, time.Hour, MaxTimeout}

func TestModel(t *testing.T) {
	for seed := uint64(1); seed <= modelSeeds; seed++ {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			f := newFixture(t, func(c *Config) { c.ChunkSize = 3 })
			m := &model{t: t, f: f, gran: f.e.cfg.Tick / 4, devs: map[string]*modelDev{},
				want: map[string][]Transition{}, now: t0, advance: t0}
			ids := modelIDs(rng, 60)
			jitter := func(max time.Duration) time.Time {
				return m.now.Add(-time.Duration(rng.Int64N(int64(max))))
			}
			for range 6000 {
				id := ids[rng.IntN(len(ids))]
				switch p := rng.IntN(100); {
				case p < 55:
					m.touch(id, jitter(3*time.Second), 0)
				case p < 62:
					m.touch(id, jitter(time.Second), modelTimeouts[rng.IntN(len(modelTimeouts))])
				case p < 70:
					m.markOffline(id, jitter(2*time.Second))
				case p < 73:
					m.setTimeout(id, modelTimeouts[rng.IntN(len(modelTimeouts))])
				case p < 74:
					m.clearTimeout(id)
				case p < 75:
					m.remove(id)
				case p < 76:
					m.decommission(id)
				case p < 78:
					st := []Status{StatusOnline, StatusOffline}[rng.IntN(2)]
					m.adopt(id, st, jitter(90*time.Second), modelTimeouts[rng.IntN(4)])
				default:
					var d time.Duration
					switch q := rng.IntN(100); {
					case q < 70:
						d = time.Duration(rng.Int64N(int64(500 * time.Millisecond)))
					case q < 97:
						d = time.Duration(rng.Int64N(int64(70 * time.Second)))
					default:
						d = time.Duration(rng.Int64N(int64(8 * 24 * time.Hour)))
					}
					m.step(m.now.Add(d))
					m.advance = m.now
				}
			}
			m.step(m.now.Add(8 * 24 * time.Hour))
			if c := f.e.Counts(); c.Online != 0 || c.Total != len(m.devs) {
				t.Fatalf("counts %+v, model has %d devices", c, len(m.devs))
			}
		})
	}
}

// With a queue far too small, the stream each device's consumer sees stays
// consistent: every transition starts where the previous one ended, and the
// last one ends at the device's status.
func TestModelCoalescing(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	f := newFixture(t, func(c *Config) { c.Shards = 2; c.QueueCapacity = 8; c.ChunkSize = 5 })
	ids := modelIDs(rng, 40)
	seen := map[string]Status{}
	now := t0
	check := func() {
		for _, tr := range f.rec.take() {
			if tr.From != seen[tr.ID] || tr.From == tr.To {
				t.Fatalf("%s: %v->%v after %v", tr.ID, tr.From, tr.To, seen[tr.ID])
			}
			seen[tr.ID] = tr.To
		}
	}
	for range 5000 {
		id := ids[rng.IntN(len(ids))]
		switch p := rng.IntN(10); {
		case p < 6:
			f.e.Touch(id, now.Add(-time.Duration(rng.Int64N(int64(time.Second)))))
		case p < 8:
			f.e.MarkOffline(id, now)
		default:
			now = now.Add(time.Duration(rng.Int64N(int64(90 * time.Second))))
			f.clk.Set(now)
			f.e.Advance(now)
			if rng.IntN(3) == 0 {
				f.e.Deliver()
				check()
			}
		}
	}
	for f.e.Deliver() > 0 {
		check()
	}
	check()
	f.e.Range(func(st DeviceState) bool {
		if seen[st.ID] != st.Status {
			t.Fatalf("%s: consumer believes %v, engine says %v", st.ID, seen[st.ID], st.Status)
		}
		return true
	})
	s := f.e.Stats()
	if s.Coalesced == 0 || s.OnlineTransitions+s.OfflineTransitions != s.Delivered+s.Collapsed {
		t.Fatalf("stats %+v", s)
	}
}
