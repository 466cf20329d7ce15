package writeback_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/writeback"
	"github.com/presence-dev/presence/writeback/writebacktest"
)

// A held loop writes nothing until the hold is released; Flush and Close
// do not wait for it.
func TestFlusherHold(t *testing.T) {
	src := writebacktest.NewFakeSource()
	var written atomic.Int64
	write := func(_ context.Context, states []engine.DeviceState) (writeback.WriteResult, error) {
		written.Add(int64(len(states)))
		return writeback.WriteResult{Units: len(states)}, nil
	}
	cfg := writeback.FlushConfig{Interval: 5 * time.Millisecond, BatchSize: 10, Concurrency: 1,
		MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond, WriteTimeout: time.Second}
	f := writeback.NewFlusher("test", "keys", src, cfg, write)
	hold := make(chan struct{})
	f.Hold(hold)
	if err := f.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	src.Set(writebacktest.Dev(1, engine.StatusOnline, writebacktest.T0))
	time.Sleep(50 * time.Millisecond)
	if n := written.Load(); n != 0 {
		t.Fatalf("%d written while held", n)
	}
	close(hold)
	deadline := time.Now().Add(5 * time.Second)
	for written.Load() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("not written after the hold was released")
		}
		time.Sleep(time.Millisecond)
	}
	src.Set(writebacktest.Dev(2, engine.StatusOnline, writebacktest.T0))
	if err := f.Close(context.Background()); err != nil || written.Load() != 2 {
		t.Fatalf("Close = %v, written %d", err, written.Load())
	}
}
