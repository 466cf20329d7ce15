package engine

import (
	"log/slog"
	"sync"
	"testing"
	"time"
)

// t0 is the tests' wall clock origin.
var t0 = time.Date(2025, 12, 14, 10, 30, 45, 123456000, time.UTC)

// clock is a manual clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Set(t time.Time) { c.mu.Lock(); c.now = t; c.mu.Unlock() }

// recorder is a Sink that keeps every transition.
type recorder struct {
	mu  sync.Mutex
	got []Transition
}

func (r *recorder) HandleTransitions(b []Transition) {
	r.mu.Lock()
	r.got = append(r.got, b...)
	r.mu.Unlock()
}

// take returns and forgets what was recorded.
func (r *recorder) take() []Transition {
	r.mu.Lock()
	defer r.mu.Unlock()
	g := r.got
	r.got = nil
	return g
}

// fixture is an engine on a manual clock with a recording sink.
type fixture struct {
	t   *testing.T
	e   *Engine
	clk *clock
	rec *recorder
}

func newFixture(t *testing.T, mod func(*Config)) *fixture {
	t.Helper()
	f := &fixture{t: t, clk: &clock{now: t0}, rec: &recorder{}}
	cfg := DefaultConfig()
	cfg.Shards = 4
	cfg.Now = f.clk.Now
	cfg.Sink = f.rec
	cfg.Logger = slog.New(slog.DiscardHandler)
	if mod != nil {
		mod(&cfg)
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.e = e
	return f
}

// at moves the clock to t0+d, advances the wheel and delivers; it returns
// the transitions delivered.
func (f *fixture) at(d time.Duration) []Transition {
	f.clk.Set(t0.Add(d))
	f.e.Advance(t0.Add(d))
	f.e.Deliver()
	return f.rec.take()
}

func (f *fixture) touch(id string, d time.Duration) {
	f.t.Helper()
	if err := f.e.Touch(id, t0.Add(d)); err != nil {
		f.t.Fatalf("Touch(%q): %v", id, err)
	}
}

func (f *fixture) status(id string) Status {
	f.t.Helper()
	st, err := f.e.Device(id)
	if err != nil {
		f.t.Fatalf("Device(%q): %v", id, err)
	}
	return st.Status
}

// wantOne checks that got is exactly one transition of id.
func wantOne(t *testing.T, got []Transition, id string, from, to Status, at time.Time, cause Cause) {
	t.Helper()
	if len(got) != 1 {
		t.Fatalf("got %d transitions %v, want 1 for %s", len(got), got, id)
	}
	g := got[0]
	if g.ID != id || g.From != from || g.To != to || !g.At.Equal(at) || g.Cause != cause {
		t.Fatalf("got %+v, want {%s %v->%v at %v cause %v}", g, id, from, to, at, cause)
	}
}
