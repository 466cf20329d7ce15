package writeback_test

import (
	"context"
	"sync/atomic"
	"testing"
	"testing/synctest"
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

// A loop that yields (a more urgent writer is busy) puts its flushes off,
// for at most MaxYield in a row; the devices wait in the source, and are
// written at once when it stops yielding, or when MaxYield has passed.
func TestFlusherYield(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := writebacktest.NewFakeSource()
		var written atomic.Int64
		write := func(_ context.Context, states []engine.DeviceState) (writeback.WriteResult, error) {
			written.Add(int64(len(states)))
			return writeback.WriteResult{Units: len(states)}, nil
		}
		var busy atomic.Bool
		busy.Store(true)
		cfg := writeback.FlushConfig{Interval: 100 * time.Millisecond, BatchSize: 10, Concurrency: 1,
			MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond, WriteTimeout: time.Second,
			Yield: busy.Load, MaxYield: 10 * time.Second}
		f := writeback.NewFlusher("test", "rows", src, cfg, write)
		if err := f.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		defer f.Close(context.Background())
		check := func(after time.Duration, want int64) {
			t.Helper()
			time.Sleep(after)
			synctest.Wait()
			if got := written.Load(); got != want {
				t.Fatalf("written %d, want %d", got, want)
			}
		}
		src.Set(writebacktest.Dev(1, engine.StatusOnline, writebacktest.T0))
		check(5*time.Second, 0) // yielding
		busy.Store(false)
		check(200*time.Millisecond, 1) // written once the urgent writer is done
		busy.Store(true)
		src.Set(writebacktest.Dev(2, engine.StatusOnline, writebacktest.T0))
		check(9*time.Second, 1)
		check(2*time.Second, 2) // MaxYield passed: never starved
		src.Set(writebacktest.Dev(3, engine.StatusOnline, writebacktest.T0))
		check(200*time.Millisecond, 3) // and no new wait while the streak lasts
		if got := writebacktest.Counter(f.Metrics(), "presence_writeback_yields_total", "test"); got != 2 {
			t.Fatalf("yields_total = %d, want 2", got)
		}
	})
}

// A flush with nothing dirty allocates nothing, whatever Concurrency: a
// daemon at rest flushes every Interval, and the memory returner counts
// what it allocates (a Postgres flush used to make 3 batch buffers of
// 20,000 states per worker each time).
func TestFlushAtRestAllocatesNothing(t *testing.T) {
	src := writebacktest.NewFakeSource()
	write := func(_ context.Context, states []engine.DeviceState) (writeback.WriteResult, error) {
		return writeback.WriteResult{Units: len(states)}, nil
	}
	cfg := writeback.FlushConfig{Interval: time.Second, BatchSize: 20000, Concurrency: 2,
		MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond, WriteTimeout: time.Second}
	f := writeback.NewFlusher("test", "rows", src, cfg, write)
	ctx := context.Background()
	src.Set(writebacktest.Dev(1, engine.StatusOnline, writebacktest.T0))
	if err := f.Flush(ctx); err != nil || src.Len() != 0 {
		t.Fatalf("Flush = %v, %d left", err, src.Len())
	}
	if n := testing.AllocsPerRun(100, func() { f.Flush(ctx) }); n > 0 {
		t.Fatalf("a flush at rest allocates %.0f times", n)
	}
}
