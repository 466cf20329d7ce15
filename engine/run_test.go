package engine

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// The engine's clock (Start), on the real time API inside a synctest
// bubble: the offline transition reaches the sink no earlier than the
// deadline and no later than deadline + Tick, and Close delivers what is
// left.
func TestRunDeliversWithinTick(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		type delivered struct {
			tr Transition
			at time.Time
		}
		var mu sync.Mutex
		var got []delivered
		cfg := DefaultConfig()
		cfg.Logger = slog.New(slog.DiscardHandler)
		cfg.Sink = SinkFunc(func(b []Transition) {
			mu.Lock()
			defer mu.Unlock()
			for _, tr := range b {
				got = append(got, delivered{tr, time.Now()})
			}
		})
		e, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Start(t.Context()); err != nil {
			t.Fatal(err)
		}

		time.Sleep(37 * time.Millisecond) // off the tick grid
		start := time.Now()
		for _, id := range []string{"1", "2", "3"} {
			e.Touch(id, time.Now())
		}
		e.SetTimeout("3", 10*time.Second)
		time.Sleep(2 * time.Minute)
		synctest.Wait()

		mu.Lock()
		if len(got) != 6 {
			t.Fatalf("delivered %d transitions: %+v", len(got), got)
		}
		for _, d := range got {
			if d.tr.To != StatusOffline {
				if d.at.Sub(d.tr.At) > cfg.Tick {
					t.Errorf("online transition of %s delivered %v late", d.tr.ID, d.at.Sub(d.tr.At))
				}
				continue
			}
			timeout := cfg.DefaultTimeout
			if d.tr.ID == "3" {
				timeout = 10 * time.Second
			}
			deadline := start.Add(timeout)
			if !d.tr.At.Equal(deadline) || d.at.Before(deadline) || d.at.After(deadline.Add(cfg.Tick)) {
				t.Errorf("%s: offline at %v delivered at %v, deadline %v", d.tr.ID, d.tr.At, d.at, deadline)
			}
		}
		got = nil
		mu.Unlock()

		// Shutdown delivers what is pending.
		e.Touch("4", time.Now())
		if err := e.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].tr.ID != "4" {
			t.Fatalf("after shutdown: %+v", got)
		}
	})
}

// A Sink that blocks the deliverer (an event destination pushing back)
// does not stop the clock: devices still go offline at their deadline, in
// the engine's state and its counts, and the sink gets their transitions
// once it takes them again.
func TestBlockedSinkKeepsTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		var mu sync.Mutex
		var got []Transition
		cfg := DefaultConfig()
		cfg.Logger = slog.New(slog.DiscardHandler)
		cfg.Sink = SinkFunc(func(b []Transition) {
			<-release
			mu.Lock()
			defer mu.Unlock()
			got = append(got, b...)
		})
		e, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		e.Touch("a", start)
		e.Touch("b", start)
		time.Sleep(cfg.DefaultTimeout + cfg.Tick)
		synctest.Wait() // the deliverer is blocked in the sink with the online transitions
		for _, id := range []string{"a", "b"} {
			d, err := e.Device(id)
			if err != nil || d.Status != StatusOffline || !d.Since.Equal(start.Add(cfg.DefaultTimeout)) {
				t.Fatalf("%s with the sink blocked: %+v, %v; want offline at the deadline", id, d, err)
			}
		}
		if c := e.Counts(); c.Online != 0 || c.Offline != 2 {
			t.Fatalf("counts with the sink blocked: %+v", c)
		}
		close(release)
		if err := e.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(got) != 4 {
			t.Fatalf("delivered %+v, want online then offline of a and b", got)
		}
	})
}
