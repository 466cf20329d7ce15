package engine

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"
)

func TestValidID(t *testing.T) {
	check := func(id string, want bool) {
		t.Helper()
		if got := ValidID(id); got != want {
			t.Errorf("ValidID(%q) = %v, want %v", id, got, want)
		}
	}
	check("123", true)
	check("sensor-7.a_B:x@y", true)
	check(strings.Repeat("a", MaxIDLen), true)
	check("", false)
	check(strings.Repeat("a", MaxIDLen+1), false)
	for _, bad := range []string{"a/b", "a+", "#", "a b", "a\x00b", "é", "a\tb", "\x7f", "\n"} {
		check(bad, false)
	}
}

func FuzzValidID(f *testing.F) {
	for _, s := range []string{"123", "", "a/b", "é", strings.Repeat("x", 129), "~!"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		want := len(id) >= 1 && len(id) <= MaxIDLen
		for _, r := range []byte(id) {
			if r <= ' ' || r >= 0x7f || r == '/' || r == '+' || r == '#' {
				want = false
			}
		}
		if got := ValidID(id); got != want {
			t.Fatalf("ValidID(%q) = %v, want %v", id, got, want)
		}
		e, err := New(DefaultConfig())
		if err != nil {
			t.Fatal(err)
		}
		err = e.Touch(id, time.Now())
		if want != (err == nil) || (!want && !errors.Is(err, ErrInvalidID)) {
			t.Fatalf("Touch(%q) = %v, valid %v", id, err, want)
		}
		if !want && e.Counts().Total != 0 {
			t.Fatalf("invalid id %q was stored", id)
		}
	})
}

func TestConfigValidate(t *testing.T) {
	for name, mod := range map[string]func(*Config){
		"shards not power of two": func(c *Config) { c.Shards = 3 },
		"zero shards":             func(c *Config) { c.Shards = 0 },
		"timeout too short":       func(c *Config) { c.DefaultTimeout = time.Millisecond },
		"timeout too long":        func(c *Config) { c.DefaultTimeout = 8 * 24 * time.Hour },
		"tick too short":          func(c *Config) { c.Tick = time.Millisecond },
		"queue below shards":      func(c *Config) { c.QueueCapacity = 1 },
		"batch":                   func(c *Config) { c.BatchSize = 0 },
		"chunk":                   func(c *Config) { c.ChunkSize = 0 },
	} {
		t.Run(name, func(t *testing.T) {
			c := DefaultConfig()
			mod(&c)
			if err := c.Validate(); err == nil {
				t.Fatal("Validate accepted it")
			}
			if _, err := New(c); err == nil {
				t.Fatal("New accepted it")
			}
		})
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestOnlineThenTimeout(t *testing.T) {
	f := newFixture(t, nil)
	f.touch("123", 0)
	wantOne(t, f.at(0), "123", StatusUnknown, StatusOnline, t0, CauseTelemetry)

	f.touch("123", 10*time.Second) // deadline moves to 70 s, lazily
	if got := f.at(60 * time.Second); len(got) != 0 {
		t.Fatalf("offline before the deadline: %v", got)
	}
	if got := f.at(70*time.Second - time.Nanosecond); len(got) != 0 {
		t.Fatalf("offline 1ns before the deadline: %v", got)
	}
	// Never before the deadline, and within Tick after it.
	got := f.at(70*time.Second + DefaultConfig().Tick)
	wantOne(t, got, "123", StatusOnline, StatusOffline, t0.Add(70*time.Second), CauseTimeout)
	st, _ := f.e.Device("123")
	if st.Status != StatusOffline || !st.LastSeen.Equal(t0.Add(10*time.Second)) || !st.Since.Equal(t0.Add(70*time.Second)) {
		t.Fatalf("state %+v", st)
	}
	// Back online with the next message.
	f.touch("123", 80*time.Second)
	wantOne(t, f.at(80*time.Second), "123", StatusOffline, StatusOnline, t0.Add(80*time.Second), CauseTelemetry)
}

func TestOfflineWithinTickOfDeadline(t *testing.T) {
	// Whatever the phase of the deadline against the wheel's ticks, the
	// transition comes at the first Advance at or after the deadline + Tick/2
	// when Advance runs every Tick/4, as the clock (Start) does.
	tick := DefaultConfig().Tick
	for phase := time.Duration(0); phase < tick; phase += 7 * time.Millisecond {
		f := newFixture(t, nil)
		f.touch("d", phase)
		f.at(0)
		deadline := phase + 60*time.Second
		var firedAt time.Duration = -1
		for now := 59 * time.Second; now < 62*time.Second; now += tick / 4 {
			if got := f.at(now); len(got) > 0 {
				firedAt = now
				wantOne(t, got, "d", StatusOnline, StatusOffline, t0.Add(deadline), CauseTimeout)
				break
			}
		}
		if firedAt < deadline || firedAt > deadline+tick {
			t.Fatalf("phase %v: fired at %v, deadline %v, tick %v", phase, firedAt, deadline, tick)
		}
	}
}

func TestLastSeenMonotonic(t *testing.T) {
	f := newFixture(t, nil)
	f.touch("a", 5*time.Second)
	f.touch("a", 2*time.Second)
	st, _ := f.e.Device("a")
	if !st.LastSeen.Equal(t0.Add(5 * time.Second)) {
		t.Fatalf("last seen moved back to %v", st.LastSeen)
	}
}

func TestMarkOffline(t *testing.T) {
	f := newFixture(t, nil)
	if err := f.e.MarkOffline("ghost", t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown device: %v", err)
	}
	if err := f.e.MarkOffline("a/b", t0); !errors.Is(err, ErrInvalidID) {
		t.Fatalf("invalid id: %v", err)
	}
	f.touch("a", 10*time.Second)
	f.at(10 * time.Second)

	// A Last Will older than the last message: the device reconnected since.
	if err := f.e.MarkOffline("a", t0.Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if got := f.at(11 * time.Second); len(got) != 0 || f.status("a") != StatusOnline {
		t.Fatalf("stale will acted: %v", got)
	}
	if f.e.Stats().Stale != 1 {
		t.Fatalf("stale not counted: %+v", f.e.Stats())
	}

	if err := f.e.MarkOffline("a", t0.Add(12*time.Second)); err != nil {
		t.Fatal(err)
	}
	wantOne(t, f.at(12*time.Second), "a", StatusOnline, StatusOffline, t0.Add(12*time.Second), CauseLastWill)
	// The old wheel entry comes up later and does nothing.
	if got := f.at(2 * time.Minute); len(got) != 0 {
		t.Fatalf("extra transitions: %v", got)
	}
	// A delayed message sent before the will does not bring it back...
	f.touch("a", 11*time.Second)
	if got := f.at(2 * time.Minute); len(got) != 0 || f.status("a") != StatusOffline {
		t.Fatalf("reordered message acted: %v", got)
	}
	// ...a new one does.
	f.touch("a", 3*time.Minute)
	wantOne(t, f.at(3*time.Minute), "a", StatusOffline, StatusOnline, t0.Add(3*time.Minute), CauseTelemetry)
}

func TestStaleMessageDoesNotReviveExpiredDevice(t *testing.T) {
	f := newFixture(t, nil)
	f.touch("a", 0)
	f.at(0)
	f.at(10 * time.Minute) // offline at 60 s
	// A message from 30 s arrives 10 minutes late: last_seen moves, but its
	// own deadline has passed too, so the device stays offline.
	f.touch("a", 30*time.Second) // older than since (60 s): stays offline anyway
	f.e.Touch("a", t0.Add(65*time.Second))
	if got := f.at(10*time.Minute + time.Second); len(got) != 0 {
		t.Fatalf("stale message revived the device: %v", got)
	}
	st, _ := f.e.Device("a")
	if st.Status != StatusOffline || !st.LastSeen.Equal(t0.Add(65*time.Second)) {
		t.Fatalf("state %+v", st)
	}
}

func TestSetTimeout(t *testing.T) {
	f := newFixture(t, nil)
	if err := f.e.SetTimeout("x", time.Minute); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	f.touch("fast", 0)
	f.touch("slow", 0)
	f.at(0)
	if err := f.e.SetTimeout("fast", 500*time.Millisecond); !errors.Is(err, ErrInvalidTimeout) {
		t.Fatal(err)
	}
	if err := f.e.SetTimeout("fast", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := f.e.SetTimeout("slow", 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	wantOne(t, f.at(31*time.Second), "fast", StatusOnline, StatusOffline, t0.Add(30*time.Second), CauseTimeout)
	if got := f.at(4 * time.Minute); len(got) != 0 {
		t.Fatalf("slow device expired early: %v", got)
	}
	wantOne(t, f.at(5*time.Minute+time.Second), "slow", StatusOnline, StatusOffline, t0.Add(5*time.Minute), CauseTimeout)

	// Shortening below the time already elapsed: offline at the next Advance,
	// at the deadline the new timeout gives.
	f.touch("late", 6*time.Minute)
	f.at(6 * time.Minute)
	f.at(6*time.Minute + 40*time.Second)
	if err := f.e.SetTimeout("late", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	wantOne(t, f.at(6*time.Minute+41*time.Second), "late", StatusOnline, StatusOffline, t0.Add(6*time.Minute+10*time.Second), CauseTimeout)
}

func TestTouchBatchPerTouchTimeout(t *testing.T) {
	f := newFixture(t, nil)
	rejected := f.e.TouchBatch([]Touch{
		{ID: "a", At: t0, Timeout: 2 * time.Second},
		{ID: "b", At: t0},
		{ID: "bad/id", At: t0},
		{ID: "c", At: t0, Timeout: time.Millisecond},
	})
	if rejected != 2 {
		t.Fatalf("rejected %d, want 2", rejected)
	}
	if got := f.at(0); len(got) != 2 {
		t.Fatalf("got %v", got)
	}
	wantOne(t, f.at(2*time.Second+50*time.Millisecond), "a", StatusOnline, StatusOffline, t0.Add(2*time.Second), CauseTimeout)
	if s := f.e.Stats(); s.Rejected != 2 || s.Touches != 2 {
		t.Fatalf("stats %+v", s)
	}
}

// Touches that are refused for their id, and SetTimeout on an unknown
// device, must not intern their timeouts: the table holds 16,384 for good,
// and a peer or a client could otherwise fill it with distinct ones.
func TestRefusedTouchesInternNoTimeout(t *testing.T) {
	f := newFixture(t, nil)
	before := len(*f.e.timeouts.tab.Load())
	for _, n := range []int{1, minGroupedBatch} { // one by one, and grouped
		batch := make([]Touch, n)
		for i := range batch {
			batch[i] = Touch{ID: "bad/id", At: t0, Timeout: time.Second + time.Duration(n*1000+i)*time.Millisecond}
		}
		if r := f.e.TouchBatch(batch); r != n {
			t.Fatalf("batch of %d: rejected %d", n, r)
		}
	}
	if err := f.e.SetTimeout("unknown", 9*time.Second); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetTimeout on an unknown device: %v", err)
	}
	if err := f.e.SetTimeout("unknown", time.Hour*24*365); !errors.Is(err, ErrInvalidTimeout) {
		t.Fatalf("SetTimeout out of range: %v", err)
	}
	if after := len(*f.e.timeouts.tab.Load()); after != before {
		t.Fatalf("timeout table grew from %d to %d entries", before, after)
	}
}

func TestLongTimeoutsAndClockJumps(t *testing.T) {
	f := newFixture(t, nil)
	week := MaxTimeout
	f.e.TouchBatch([]Touch{{ID: "week", At: t0, Timeout: week}, {ID: "hour", At: t0, Timeout: time.Hour}})
	f.at(0)
	if got := f.at(time.Hour - time.Second); len(got) != 0 {
		t.Fatal(got)
	}
	wantOne(t, f.at(time.Hour+time.Second), "hour", StatusOnline, StatusOffline, t0.Add(time.Hour), CauseTimeout)
	// Jump straight past the week: exact deadline, one transition.
	if got := f.at(week - time.Minute); len(got) != 0 {
		t.Fatal(got)
	}
	wantOne(t, f.at(week+3*24*time.Hour), "week", StatusOnline, StatusOffline, t0.Add(week), CauseTimeout)
	// A clock going backwards does nothing.
	if got := f.at(time.Minute); len(got) != 0 {
		t.Fatal(got)
	}
}

func TestRestore(t *testing.T) {
	f := newFixture(t, nil)
	now := t0.Add(time.Hour)
	f.clk.Set(now)
	err := f.e.Restore([]DeviceState{
		{ID: "expired", Status: StatusOnline, LastSeen: now.Add(-2 * time.Minute)},
		{ID: "alive", Status: StatusOnline, LastSeen: now.Add(-20 * time.Second)},
		{ID: "off", Status: StatusOffline, LastSeen: now.Add(-time.Hour)},
		{ID: "nostatus", LastSeen: now.Add(-10 * time.Second)},
		{ID: "slow", Status: StatusOnline, LastSeen: now.Add(-2 * time.Minute), Timeout: 5 * time.Minute},
		{ID: "bad id", Status: StatusOnline, LastSeen: now},
	}, now)
	if !errors.Is(err, ErrInvalidID) {
		t.Fatalf("Restore error %v, want one skipped invalid id", err)
	}
	wantOne(t, f.at(time.Hour), "expired", StatusOnline, StatusOffline, now.Add(-time.Minute), CauseRestart)
	if c := f.e.Counts(); c != (Counts{Total: 5, Online: 3, Offline: 2}) {
		t.Fatalf("counts %+v", c)
	}
	// The living are re-armed for what they have left.
	wantOne(t, f.at(time.Hour+40*time.Second+50*time.Millisecond), "alive", StatusOnline, StatusOffline, now.Add(40*time.Second), CauseTimeout)
	wantOne(t, f.at(time.Hour+50*time.Second+50*time.Millisecond), "nostatus", StatusOnline, StatusOffline, now.Add(50*time.Second), CauseTimeout)
}

func TestRestoreMergesWithLiveState(t *testing.T) {
	f := newFixture(t, nil)
	f.touch("a", 0)
	f.at(0)
	if err := f.e.Restore([]DeviceState{{ID: "a", Status: StatusOffline, LastSeen: t0.Add(-time.Hour)}}, t0); err != nil {
		t.Fatal(err)
	}
	st, _ := f.e.Device("a")
	if st.Status != StatusOnline || !st.LastSeen.Equal(t0) {
		t.Fatalf("live state lost: %+v", st)
	}
}

func TestQueriesAndRange(t *testing.T) {
	f := newFixture(t, nil)
	for i := 0; i < 3000; i++ {
		f.touch(fmt.Sprint(i), time.Duration(i)*time.Millisecond)
	}
	f.at(0)
	f.e.MarkOffline("7", t0.Add(time.Second))
	if c := f.e.Counts(); c != (Counts{Total: 3000, Online: 2999, Offline: 1}) {
		t.Fatalf("counts %+v", c)
	}
	got := f.e.Devices([]string{"7", "nope", "8", "bad id"}, nil)
	if len(got) != 4 || got[0].Status != StatusOffline || got[1].Status != StatusUnknown ||
		got[2].Status != StatusOnline || !got[2].LastSeen.Equal(t0.Add(8*time.Millisecond)) || got[3].Status != StatusUnknown || got[1].ID != "nope" {
		t.Fatalf("Devices = %+v", got)
	}
	seen := map[string]bool{}
	f.e.Range(func(st DeviceState) bool { seen[st.ID] = true; return true })
	if len(seen) != 3000 {
		t.Fatalf("Range saw %d devices", len(seen))
	}
	n := 0
	f.e.Range(func(DeviceState) bool { n++; return n < 10 })
	if n != 10 {
		t.Fatalf("Range did not stop: %d", n)
	}
}

func TestTracker(t *testing.T) {
	f := newFixture(t, nil)
	tr, err := f.e.NewTracker()
	if err != nil {
		t.Fatal(err)
	}
	tr2, _ := f.e.NewTracker()
	for i := 0; i < 100; i++ {
		f.touch("a", time.Duration(i)*time.Millisecond) // coalesced: one entry
	}
	f.touch("b", 0)
	if tr.Len() != 2 || tr2.Len() != 2 {
		t.Fatalf("Len %d %d, want 2", tr.Len(), tr2.Len())
	}
	got := tr.Drain(nil, 1)
	got = tr.Drain(got, 10)
	if len(got) != 2 || tr.Len() != 0 || tr2.Len() != 2 {
		t.Fatalf("drained %v, left %d/%d", got, tr.Len(), tr2.Len())
	}
	for _, st := range got {
		if st.ID == "a" && !st.LastSeen.Equal(t0.Add(99*time.Millisecond)) {
			t.Fatalf("stale state %+v", st)
		}
	}
	// A failed write hands the device back; the next drain reads it afresh.
	tr.MarkDirty("a", "a", "unknown", "bad id")
	f.touch("a", time.Second)
	got = tr.Drain(nil, 10)
	if len(got) != 1 || !got[0].LastSeen.Equal(t0.Add(time.Second)) {
		t.Fatalf("after MarkDirty: %+v", got)
	}
	// A timeout is a change too.
	f.at(2 * time.Minute)
	if got = tr.Drain(nil, 10); len(got) != 2 || got[0].Status != StatusOffline {
		t.Fatalf("after timeout: %+v", got)
	}
	if MaxTrackers != 2 { // tr and tr2
		t.Fatalf("MaxTrackers %d: this test makes 2", MaxTrackers)
	}
	if _, err := f.e.NewTracker(); !errors.Is(err, ErrTooManyTrackers) {
		t.Fatalf("tracker %d: %v", MaxTrackers+1, err)
	}
}

// A slow sink never blocks touches: past the queue, transitions are
// coalesced per device and caught up in order, and what was folded away is
// counted.
func TestSlowSinkCoalesces(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.Shards = 1; c.QueueCapacity = 4; c.ChunkSize = 2 })
	for i := 0; i < 4; i++ {
		f.touch(fmt.Sprint(i), 0) // fills the queue
	}
	f.touch("flap", 0) // coalesced from its first transition
	f.e.MarkOffline("flap", t0.Add(time.Second))
	f.touch("flap", 2*time.Second)
	f.e.MarkOffline("flap", t0.Add(3*time.Second)) // online, offline, online, offline
	f.touch("back", 0)                             // coalesced, then cancelled out:
	f.e.MarkOffline("back", t0.Add(time.Second))
	if s := f.e.Stats(); s.Queued != 4 || s.Coalesced != 6 || s.Resyncing != 2 {
		t.Fatalf("stats %+v", s)
	}
	got := f.at(4 * time.Second)
	if len(got) != 6 {
		t.Fatalf("delivered %v", got)
	}
	byID := map[string]Transition{}
	for _, g := range got[4:] {
		byID[g.ID] = g
	}
	flap := byID["flap"]
	if flap.From != StatusUnknown || flap.To != StatusOffline || !flap.Coalesced || flap.Cause != CauseLastWill || !flap.At.Equal(t0.Add(3*time.Second)) {
		t.Fatalf("flap catch-up %+v", flap)
	}
	if back := byID["back"]; back.From != StatusUnknown || back.To != StatusOffline {
		t.Fatalf("back catch-up %+v", back)
	}
	if s := f.e.Stats(); s.Collapsed != 4 || s.Resyncing != 0 || s.Delivered != 6 {
		t.Fatalf("stats after catch-up %+v", s)
	}
	// Caught up: the next transition goes through the queue again.
	f.touch("flap", 5*time.Second)
	g := f.at(5 * time.Second)
	if len(g) != 1 || g[0].Coalesced || g[0].From != StatusOffline {
		t.Fatalf("after catch-up %+v", g)
	}
}

// The order of one device's transitions survives coalescing: what was
// queued before the device started coalescing is delivered first.
func TestCoalescingKeepsOrder(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.Shards = 1; c.QueueCapacity = 2 })
	f.touch("a", 0)                           // queued: unknown->online
	f.e.MarkOffline("a", t0.Add(time.Second)) // queued: online->offline
	f.touch("a", 2*time.Second)               // coalesced
	got := f.at(3 * time.Second)
	if len(got) != 3 || got[0].To != StatusOnline || got[1].To != StatusOffline ||
		got[2].To != StatusOnline || got[2].From != StatusOffline || !got[2].Coalesced {
		t.Fatalf("order %+v", got)
	}
}

func TestMassExpiryIsChunkedAndComplete(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.QueueCapacity = 1024; c.ChunkSize = 100 })
	const n = 20000
	for i := 0; i < n; i++ {
		f.touch(fmt.Sprint(i), 0)
	}
	if got := f.at(0); len(got) != n {
		t.Fatalf("online transitions %d", len(got))
	}
	// Touches keep flowing while the expiry runs.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 1000; i++ {
			f.e.Touch(fmt.Sprint("late-", i), t0.Add(61*time.Second))
		}
	}()
	got := f.at(61 * time.Second)
	wg.Wait()
	got = append(got, f.at(61*time.Second)...)
	off := 0
	for _, g := range got {
		if g.To == StatusOffline {
			off++
			if !g.At.Equal(t0.Add(time.Minute)) {
				t.Fatalf("bad deadline %+v", g)
			}
		}
	}
	if off != n {
		t.Fatalf("offline transitions %d, want %d (stats %+v)", off, n, f.e.Stats())
	}
	if c := f.e.Counts(); c.Online != 1000 || c.Offline != n {
		t.Fatalf("counts %+v", c)
	}
}

// Timeouts wait for the Sink as slot numbers (shard.expired), not queue
// entries: a mass expiry larger than QueueCapacity is not coalesced, and
// what happens to a device after its timeout, before Deliver, is
// delivered after it.
func TestTimeoutsKeepOrderWithoutQueueEntries(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.Shards = 1; c.QueueCapacity = 4 })
	const n = 100
	for i := range n {
		f.touch(fmt.Sprint(i), 0)
	}
	f.at(0) // the online transitions, coalesced past the capacity
	s0 := f.e.Stats()
	f.clk.Set(t0.Add(61 * time.Second))
	f.e.Advance(t0.Add(61 * time.Second))
	if s := f.e.Stats(); s.Queued != n || s.Coalesced != s0.Coalesced || s.OfflineTransitions != n {
		t.Fatalf("after the expiry of %d devices, capacity 4: %+v", n, s)
	}
	// Before delivery: "1" and "2" come back (at 62 s, "2" again at 63 s)
	// and time out again, "3" is removed.
	f.touch("1", 62*time.Second)
	f.touch("2", 62*time.Second)
	f.touch("2", 63*time.Second)
	f.e.Remove("3")
	// Queued counts what is pending: 97 listed, and for "1", "2", "3" a
	// timeout turned into a queue entry, "1" and "2" an online one.
	if s := f.e.Stats(); s.Queued != n+2 {
		t.Fatalf("queued before delivery: %d, want %d", s.Queued, n+2)
	}
	f.clk.Set(t0.Add(124 * time.Second))
	f.e.Advance(t0.Add(124 * time.Second))
	f.e.Deliver()
	byID := map[string][]Transition{}
	for _, g := range f.rec.take() {
		byID[g.ID] = append(byID[g.ID], g)
	}
	if len(byID) != n {
		t.Fatalf("transitions for %d devices, want %d", len(byID), n)
	}
	deadline := t0.Add(time.Minute)
	for id, got := range byID {
		var want []Transition
		switch id {
		case "1":
			want = []Transition{{From: StatusOnline, To: StatusOffline, At: deadline}, {From: StatusOffline, To: StatusOnline, At: t0.Add(62 * time.Second)},
				{From: StatusOnline, To: StatusOffline, At: t0.Add(122 * time.Second)}}
		case "2":
			want = []Transition{{From: StatusOnline, To: StatusOffline, At: deadline}, {From: StatusOffline, To: StatusOnline, At: t0.Add(62 * time.Second)},
				{From: StatusOnline, To: StatusOffline, At: t0.Add(123 * time.Second)}}
		default:
			want = []Transition{{From: StatusOnline, To: StatusOffline, At: deadline}}
		}
		if len(got) != len(want) {
			t.Fatalf("device %s: %+v, want %+v", id, got, want)
		}
		for i := range want {
			// The second timeouts of "1" and "2" find the queue full
			// (capacity 4) while their first are still listed (never
			// twice): they are coalesced.
			coalesced := (id == "1" || id == "2") && i == 2
			if got[i].From != want[i].From || got[i].To != want[i].To || !got[i].At.Equal(want[i].At) || got[i].Coalesced != coalesced {
				t.Fatalf("device %s, transition %d: %+v, want %+v", id, i, got[i], want[i])
			}
		}
	}
	if s := f.e.Stats(); s.Queued != 0 || s.Coalesced != s0.Coalesced+2 {
		t.Fatalf("after delivery: %+v", s)
	}
	// "3" comes back as new, and its slot's stale list entry delivers
	// nothing twice.
	f.touch("3", 130*time.Second)
	got := f.at(200 * time.Second)
	if len(got) != 2 || got[0].From != StatusUnknown || got[1].To != StatusOffline || got[1].ID != "3" {
		t.Fatalf("removed device back: %+v", got)
	}
}

func TestConcurrentUse(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.QueueCapacity = 64 })
	tr, _ := f.e.NewTracker()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 5000; i++ {
				id := fmt.Sprint(i % 500)
				at := t0.Add(time.Duration(i) * time.Millisecond)
				switch i % 50 {
				case 7:
					f.e.MarkOffline(id, at)
				case 9:
					f.e.SetTimeout(id, time.Duration(1+i%5)*time.Second)
				default:
					f.e.Touch(id, at)
				}
			}
		}(w)
	}
	var bg sync.WaitGroup
	bg.Add(1)
	go func() {
		defer bg.Done()
		var buf []DeviceState
		for d := time.Duration(0); ; d += 100 * time.Millisecond {
			select {
			case <-stop:
				return
			default:
			}
			f.e.Advance(t0.Add(d))
			f.e.Deliver()
			buf = tr.Drain(buf[:0], 100)
			f.e.Counts()
			f.e.Range(func(DeviceState) bool { return false })
		}
	}()
	wg.Wait()
	close(stop)
	bg.Wait()
	f.at(time.Hour)
	// Every transition reached the sink exactly once, or was folded into a
	// catch-up and counted.
	s := f.e.Stats()
	if s.OnlineTransitions+s.OfflineTransitions != s.Delivered+s.Collapsed || s.Resyncing != 0 || s.Queued != 0 {
		t.Fatalf("transitions unaccounted for: %+v", s)
	}
	// Ids 7, 9, 57, 59... only ever get MarkOffline or SetTimeout: unknown.
	if c := f.e.Counts(); c.Online != 0 || c.Total != 480 {
		t.Fatalf("counts after an hour: %+v", c)
	}
}

func TestRecordLayout(t *testing.T) {
	if s := unsafe.Sizeof(rec{}); s != 32 {
		t.Fatalf("rec is %d bytes, want 32", s)
	}
	for _, id := range []string{"1", "1234567", "12345678", "~!@$%^&*"} {
		w := packID(id)
		if w&longID != 0 || idString(w, nil) != id {
			t.Fatalf("%q packs to %x -> %q", id, w, idString(w, nil))
		}
	}
	arena := []byte("xxlonger-than-eight")
	if got := idString(longWord(2, 17), arena); got != "longer-than-eight" {
		t.Fatalf("long id %q", got)
	}
}

// A device handed to another owner is forgotten at once: not timed, not
// counted, not listed; what it had queued is still delivered; a later
// message brings it back as new, Adopt brings it back with its state.
func TestRemoveAndAdopt(t *testing.T) {
	f := newFixture(t, nil)
	tr, _ := f.e.NewTracker()
	f.touch("a", 0)
	f.touch("b", 0)
	if n := f.e.Remove("a", "ghost", "bad id"); n != 1 {
		t.Fatalf("removed %d", n)
	}
	if _, err := f.e.Device("a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Device after Remove: %v", err)
	}
	if c := f.e.Counts(); c != (Counts{Total: 1, Online: 1}) {
		t.Fatalf("counts %+v", c)
	}
	if got := tr.Drain(nil, 10); len(got) != 1 || got[0].ID != "b" {
		t.Fatalf("drained %+v", got)
	}
	if got := f.at(0); len(got) != 2 { // both online transitions were queued before
		t.Fatalf("delivered %+v", got)
	}
	if got := f.at(2 * time.Minute); len(got) != 1 || got[0].ID != "b" {
		t.Fatalf("the removed device was still timed: %+v", got)
	}
	if s := f.e.Stats(); s.Detached != 1 {
		t.Fatalf("stats %+v", s)
	}

	f.touch("a", 3*time.Minute)
	wantOne(t, f.at(3*time.Minute), "a", StatusUnknown, StatusOnline, t0.Add(3*time.Minute), CauseTelemetry)

	// Adopt: the old owner's state, deadline passed during the handoff.
	f.e.Remove("a")
	now := t0.Add(5 * time.Minute)
	if err := f.e.Adopt([]DeviceState{{ID: "a", Status: StatusOnline, LastSeen: now.Add(-90 * time.Second)}}, now); err != nil {
		t.Fatal(err)
	}
	wantOne(t, f.at(5*time.Minute), "a", StatusOnline, StatusOffline, now.Add(-30*time.Second), CauseHandoff)
	if c := f.e.Counts(); c != (Counts{Total: 2, Offline: 2}) {
		t.Fatalf("counts %+v", c)
	}
}

// A large batch is grouped by shard; it must leave exactly the state, and
// the per-device transitions, that the same touches one by one leave.
func TestTouchBatchGroupedMatchesOneByOne(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	a, b := newFixture(t, nil), newFixture(t, nil)
	var batch []Touch
	for i := range 5000 {
		id := fmt.Sprint(rng.IntN(300))
		switch i % 97 {
		case 5:
			id = "bad id"
		case 7:
			id = strings.Repeat("long-", 10) + id
		}
		tc := Touch{ID: id, At: t0.Add(time.Duration(rng.IntN(5000)) * time.Millisecond)}
		if i%13 == 0 {
			tc.Timeout = time.Duration(1+rng.IntN(3)) * time.Minute
		}
		if i%211 == 0 {
			tc.Timeout = time.Millisecond // invalid
		}
		batch = append(batch, tc)
	}
	rejA := a.e.TouchBatch(batch)
	rejB := 0
	for _, tc := range batch {
		rejB += b.e.TouchBatch([]Touch{tc}) // below the grouping threshold
	}
	if rejA != rejB || rejA == 0 {
		t.Fatalf("rejected %d grouped, %d one by one", rejA, rejB)
	}
	perDevice := func(trs []Transition) map[string][]Transition {
		m := map[string][]Transition{}
		for _, tr := range trs {
			m[tr.ID] = append(m[tr.ID], tr)
		}
		return m
	}
	ga, gb := perDevice(a.at(time.Hour)), perDevice(b.at(time.Hour))
	if len(ga) != len(gb) {
		t.Fatalf("%d devices with transitions grouped, %d one by one", len(ga), len(gb))
	}
	for id, trs := range gb {
		if len(ga[id]) != len(trs) {
			t.Fatalf("%s: %v vs %v", id, ga[id], trs)
		}
		for i := range trs {
			if !sameTransition(ga[id][i], trs[i]) {
				t.Fatalf("%s transition %d: %+v vs %+v", id, i, ga[id][i], trs[i])
			}
		}
	}
	b.e.Range(func(want DeviceState) bool {
		got, err := a.e.Device(want.ID)
		if err != nil || got != want {
			t.Fatalf("%s: grouped %+v (%v), one by one %+v", want.ID, got, err, want)
		}
		return true
	})
	if sa, sb := a.e.Stats(), b.e.Stats(); sa.Touches != sb.Touches || sa.Rejected != sb.Rejected {
		t.Fatalf("stats %+v vs %+v", sa, sb)
	}
}

// TestFindHint: a hint is only trusted when the hinted record holds the id.
func TestFindHint(t *testing.T) {
	f := newFixture(t, nil)
	for _, id := range []string{"a", "b", strings.Repeat("long", 5)} {
		f.touch(id, 0)
	}
	slotOf := func(id string) (*shard, uint32) {
		h := f.e.hash(id)
		sh := f.e.shardOf(h)
		slot, ok := sh.lookup(id, h)
		if !ok {
			t.Fatalf("%s not found", id)
		}
		return sh, slot
	}
	for _, id := range []string{"a", "b", strings.Repeat("long", 5)} {
		sh, want := slotOf(id)
		h := f.e.hash(id)
		for _, hint := range []uint32{0, want + 1, want + 2, uint32(sh.n) + 1, 1 << 23} {
			if got, ok := sh.find(id, h, hint); !ok || got != want {
				t.Errorf("find(%q, hint %d) = %d, %v; want %d", id, hint, got, ok, want)
			}
		}
	}
	h := f.e.hash("absent")
	sh := f.e.shardOf(h)
	for hint := uint32(0); hint <= uint32(sh.n)+1; hint++ {
		if _, ok := sh.find("absent", h, hint); ok {
			t.Fatalf("find(absent, hint %d) found a device", hint)
		}
	}
}

// TestTouchBatchConcurrentGrowth runs grouped batches from several
// goroutines while the shards grow (new index arrays and record pages), so
// that warm reads views that go stale under it; run with -race. Every
// device must end up known, online, with the newest time it was touched
// at.
func TestTouchBatchConcurrentGrowth(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.Shards = 2 })
	const workers, rounds, per = 4, 40, 64
	ids := func(w, r, k int) string {
		id := fmt.Sprintf("%d-%d-%d", w, r, k)
		if k%5 == 0 {
			id += "-with-a-long-tail" // arena ids: no hint, index lookup
		}
		return id
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			batch := make([]Touch, 0, 2*per)
			for r := range rounds {
				batch = batch[:0]
				for k := range per {
					batch = append(batch, Touch{ID: ids(w, r, k), At: t0.Add(time.Duration(r) * time.Millisecond)})
					if r > 0 { // and the previous round's devices again
						batch = append(batch, Touch{ID: ids(w, r-1, k), At: t0.Add(time.Duration(r) * time.Millisecond)})
					}
				}
				if rej := f.e.TouchBatch(batch); rej != 0 {
					t.Errorf("rejected %d", rej)
				}
			}
		}()
	}
	wg.Wait()
	if c := f.e.Counts(); c.Total != workers*rounds*per || c.Online != c.Total {
		t.Fatalf("counts %+v, want %d online", c, workers*rounds*per)
	}
	for w := range workers {
		for r := range rounds {
			for k := range per {
				id := ids(w, r, k)
				st, err := f.e.Device(id)
				want := t0.Add(time.Duration(min(r+1, rounds-1)) * time.Millisecond)
				if err != nil || st.Status != StatusOnline || !st.LastSeen.Equal(want) {
					t.Fatalf("%s: %+v %v, want online last seen %v", id, st, err, want)
				}
			}
		}
	}
}

func TestParseStatus(t *testing.T) {
	for _, s := range []Status{StatusOnline, StatusOffline} {
		if got := ParseStatus(s.String()); got != s {
			t.Errorf("ParseStatus(%q) = %v", s.String(), got)
		}
	}
	for _, bad := range []string{"", "unknown", "Online", "true"} {
		if got := ParseStatus(bad); got != StatusUnknown {
			t.Errorf("ParseStatus(%q) = %v, want unknown", bad, got)
		}
	}
}

// A cascade moves the entries that all go to one lower bucket within the
// cascading bucket's own array: a mass expiry's way down the wheel
// allocates nothing (the otter row's peak transient memory). Devices with
// other deadlines in the same buckets, and touches while the cascade lets
// the lock go, land where they belong.
func TestMassCascadeInPlace(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.Shards = 1; c.ChunkSize = 64 })
	const n, spread = 50_000, 500
	batch := make([]Touch, 0, n)
	for i := range n {
		batch = append(batch, Touch{ID: fmt.Sprint(i), At: t0, Timeout: time.Hour})
	}
	f.e.TouchBatch(batch)
	for i := range spread { // deadlines spread over the hour after the mass one
		f.e.TouchBatch([]Touch{{ID: fmt.Sprint("s", i), At: t0.Add(time.Duration(i) * 7 * time.Second), Timeout: time.Hour}})
	}
	if got := f.at(0); len(got) != n+spread {
		t.Fatalf("online transitions %d", len(got))
	}

	// Down to the tick before the mass deadline, no other traffic: every
	// cascade of the mass deadline is in place.
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f.e.Advance(t0.Add(time.Hour - time.Second))
	runtime.ReadMemStats(&after)
	if grown := after.TotalAlloc - before.TotalAlloc; grown > 4*n/4 {
		t.Errorf("cascading %d same-deadline entries allocated %d bytes (a copy is %d)", n, grown, 4*n)
	}

	// Touches of a tenth of the fleet while the last cascades and the
	// expiry run: each such device goes offline once, at one of its two
	// deadlines.
	late := t0.Add(30 * time.Minute)
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; i < n; i += 10 {
			f.e.Touch(fmt.Sprint(i), late)
		}
	})
	var got []Transition
	for d := time.Hour - time.Second; d <= 2*time.Hour; d += 250 * time.Millisecond {
		got = append(got, f.at(d)...)
	}
	wg.Wait()
	got = append(got, f.at(3*time.Hour)...)
	offline := map[string]time.Time{}
	for _, tr := range got {
		if tr.To != StatusOffline {
			continue
		}
		if _, dup := offline[tr.ID]; dup {
			t.Fatalf("%s went offline twice", tr.ID)
		}
		offline[tr.ID] = tr.At
	}
	if len(offline) != n+spread {
		t.Fatalf("%d devices went offline, want %d", len(offline), n+spread)
	}
	for i := range n {
		at := offline[fmt.Sprint(i)]
		if !at.Equal(t0.Add(time.Hour)) && !(i%10 == 0 && at.Equal(late.Add(time.Hour))) {
			t.Fatalf("device %d offline at %v", i, at.Sub(t0))
		}
	}
	for i := range spread {
		if at, want := offline[fmt.Sprint("s", i)], t0.Add(time.Duration(i)*7*time.Second+time.Hour); !at.Equal(want) {
			t.Fatalf("device s%d offline at %v, want %v", i, at.Sub(t0), want.Sub(t0))
		}
	}
}

// Timeouts leave their list a batch at a time (Deliver's buffers are one
// batch): a Deliver does at most deliverRounds batches a shard, devices
// that come back in between have their timeout delivered before the new
// transition, and Close delivers everything left.
func TestTimeoutListDeliveredInBatches(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.Shards = 1; c.BatchSize = 8 })
	const n = 2000 // more than deliverRounds batches of 8
	for i := range n {
		f.touch(fmt.Sprint(i), 0)
	}
	for len(f.at(0)) > 0 {
	}
	f.clk.Set(t0.Add(61 * time.Second))
	f.e.Advance(t0.Add(61 * time.Second))
	f.e.Deliver()
	first := f.rec.take()
	if len(first) != deliverRounds*8 {
		t.Fatalf("one Deliver delivered %d, want %d", len(first), deliverRounds*8)
	}
	if s := f.e.Stats(); s.Queued != n-len(first) {
		t.Fatalf("queued %d, want %d", s.Queued, n-len(first))
	}
	back := fmt.Sprint(n - 1) // still listed: comes back before its timeout is delivered
	f.touch(back, 62*time.Second)
	if err := f.e.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	rest := f.rec.take()
	seen := map[string]int{}
	for _, tr := range append(first, rest...) {
		if tr.To == StatusOffline {
			seen[tr.ID]++
			if !tr.At.Equal(t0.Add(time.Minute)) {
				t.Fatalf("%+v", tr)
			}
		}
	}
	if len(seen) != n {
		t.Fatalf("%d devices went offline, want %d", len(seen), n)
	}
	var order []Status
	for _, tr := range rest {
		if tr.ID == back {
			order = append(order, tr.To)
		}
	}
	if !slices.Equal(order, []Status{StatusOffline, StatusOnline}) {
		t.Fatalf("device %s: %v, want its timeout before it came back", back, order)
	}
	if s := f.e.Stats(); s.Queued != 0 {
		t.Fatalf("after Close: %+v", s)
	}
}

// Close delivers every pending timeout even when whole Delivers find only
// stale list entries (devices that came back) before the live ones.
func TestCloseDeliversPastStaleListEntries(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.Shards = 1; c.BatchSize = 8 })
	const n, back = 2000, 1100 // back > 2 Delivers' worth of list entries
	for i := range n {
		f.touch(fmt.Sprint(i), 0)
	}
	for len(f.at(0)) > 0 {
	}
	f.clk.Set(t0.Add(61 * time.Second))
	f.e.Advance(t0.Add(61 * time.Second))
	sh := &f.e.shards[0]
	var first []string // the first listed devices come back: their entries go stale
	for _, slot := range sh.expired[:back] {
		first = append(first, sh.id(slot))
	}
	for _, id := range first {
		f.touch(id, 62*time.Second)
	}
	if err := f.e.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	offline := map[string]int{}
	for _, tr := range f.rec.take() {
		if tr.To == StatusOffline {
			offline[tr.ID]++
		}
	}
	if len(offline) != n {
		t.Fatalf("%d devices' timeouts delivered by Close, want %d (stats %+v)", len(offline), n, f.e.Stats())
	}
	if s := f.e.Stats(); s.Queued != 0 {
		t.Fatalf("after Close: %+v", s)
	}
}

// A Tracker says what changed since it last listed a device: only the
// status (an offline transition rewrites one value), or the last-seen time
// too; and whether the device is new to the engine (its index entry is
// written with its keys).
func TestTrackerWhatChanged(t *testing.T) {
	f := newFixture(t, nil)
	tr, err := f.e.NewTracker()
	if err != nil {
		t.Fatal(err)
	}
	check := func(step, id string, status Status, statusOnly, isNew bool) {
		t.Helper()
		got := tr.Drain(nil, 10)
		if len(got) != 1 || got[0].ID != id || got[0].Status != status ||
			got[0].StatusOnly != statusOnly || got[0].New != isNew {
			t.Fatalf("%s: drained %+v, want %s %v StatusOnly %v New %v", step, got, id, status, statusOnly, isNew)
		}
	}
	f.touch("a", 0)
	check("first message", "a", StatusOnline, false, true)
	f.touch("a", time.Second)
	check("next message", "a", StatusOnline, false, false)
	f.at(2 * time.Minute)
	check("timeout", "a", StatusOffline, true, false)
	f.touch("a", 2*time.Minute+time.Second)
	check("back online", "a", StatusOnline, false, false)
	if err := f.e.MarkOffline("a", t0.Add(2*time.Minute+2*time.Second)); err != nil {
		t.Fatal(err)
	}
	check("last will", "a", StatusOffline, true, false)

	// A message and a timeout before the next drain: the last-seen time
	// changed since the last write.
	f.touch("a", 3*time.Minute)
	f.at(5 * time.Minute)
	check("message, then timeout", "a", StatusOffline, false, false)

	// A failed write hands the device back whole.
	f.touch("a", 5*time.Minute)
	tr.MarkDirty("a")
	check("handed back", "a", StatusOnline, false, true)
	f.at(7 * time.Minute)
	tr.Drain(nil, 10)
	tr.MarkDirty("a")
	check("timeout handed back", "a", StatusOffline, false, true)

	// A decommissioned device that returns is new again.
	if err := f.e.Decommission("a", t0.Add(7*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if got := tr.Drain(nil, 10); len(got) != 1 || !got[0].Removed {
		t.Fatalf("decommission: %+v", got)
	}
	f.touch("a", 8*time.Minute)
	check("returned", "a", StatusOnline, false, true)

	// Restored devices are in the store already; adopted ones are written
	// by their new owner, indexed.
	f.touch("c", 8*time.Minute)
	tr.Drain(nil, 10)
	f.e.Remove("c")
	if err := f.e.Adopt([]DeviceState{{ID: "c", Status: StatusOnline, LastSeen: t0.Add(8 * time.Minute)}}, t0.Add(8*time.Minute)); err != nil {
		t.Fatal(err)
	}
	check("adopted", "c", StatusOnline, false, true)
	if err := f.e.Restore([]DeviceState{{ID: "r", Status: StatusOnline, LastSeen: t0}}, t0.Add(8*time.Minute)); err != nil {
		t.Fatal(err)
	}
	check("restored past its deadline", "r", StatusOffline, false, false)
}

// MarkAll lists every held device again, whole, and the removal of a
// decommissioned one; a device handed to another node is not listed.
func TestTrackerMarkAll(t *testing.T) {
	f := newFixture(t, nil)
	tr, err := f.e.NewTracker()
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b", "c"} {
		f.touch(id, 0)
	}
	f.at(2 * time.Minute) // all offline
	if err := f.e.Decommission("b", t0.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	f.e.Remove("c") // handed over
	tr.Drain(nil, 10)
	f.touch("d", 2*time.Minute) // listed already: listed once
	if n := tr.MarkAll(); n != 3 {
		t.Fatalf("MarkAll listed %d, want 3 (a, b's removal, d)", n)
	}
	got := map[string]DeviceState{}
	for _, st := range tr.Drain(nil, 10) {
		if _, dup := got[st.ID]; dup {
			t.Fatalf("%s drained twice", st.ID)
		}
		got[st.ID] = st
	}
	if len(got) != 3 || got["a"].Status != StatusOffline || got["a"].StatusOnly || !got["a"].New ||
		!got["b"].Removed || got["d"].Status != StatusOnline || !got["d"].New {
		t.Fatalf("drained %+v", got)
	}
}
