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
