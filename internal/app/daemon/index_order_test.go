package daemon

import (
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/presence-dev/presence/engine"
)

// TestDeliverAfterDrain: when the Redis sink's source returns a device
// that just came online, its online transition has already reached the
// transition sinks (the device index among them), though the engine's
// clock never ticked: the index is written before the device's keys.
func TestDeliverAfterDrain(t *testing.T) {
	var mu sync.Mutex
	var got []engine.Transition
	cfg := engine.DefaultConfig()
	cfg.Logger = slog.New(slog.DiscardHandler)
	cfg.Sink = engine.SinkFunc(func(b []engine.Transition) {
		mu.Lock()
		got = append(got, b...)
		mu.Unlock()
	})
	eng, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := eng.NewTracker()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()

	// Without it: the tracker alone hands over a device whose transition
	// is still queued (what the wrapper is for).
	if err := eng.Touch("before", now); err != nil {
		t.Fatal(err)
	}
	if states := tr.Drain(nil, 10); len(states) != 1 || len(got) != 0 {
		t.Fatalf("plain tracker: drained %v with %d transitions delivered; want 1 device, 0 delivered", states, len(got))
	}
	eng.Deliver()
	mu.Lock()
	got = nil
	mu.Unlock()

	src := deliverAfterDrain{tr, eng}
	for _, id := range []string{"a", "b"} {
		if err := eng.Touch(id, now); err != nil {
			t.Fatal(err)
		}
	}
	states := src.Drain(nil, 10)
	mu.Lock()
	defer mu.Unlock()
	if len(states) != 2 {
		t.Fatalf("drained %v, want a and b", states)
	}
	online := map[string]bool{}
	for _, tr := range got {
		if tr.To == engine.StatusOnline {
			online[tr.ID] = true
		}
	}
	for _, st := range states {
		if !online[st.ID] {
			t.Errorf("%s drained before its online transition was delivered (delivered: %v)", st.ID, got)
		}
	}
}
