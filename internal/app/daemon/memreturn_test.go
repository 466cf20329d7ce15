package daemon

import (
	"io"
	"log/slog"
	"runtime"
	"testing"
)

// After a burst is collected, check returns its free heap to the OS; with
// little free heap it does nothing.
func TestMemReturner(t *testing.T) {
	m := newMemReturner(slog.New(slog.NewTextHandler(io.Discard, nil)))
	burst := make([][]byte, 0, 256)
	for range 256 {
		burst = append(burst, make([]byte, 1<<20)) // 256 MiB
	}
	runtime.KeepAlive(burst)
	burst = nil
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if held := before.HeapIdle - before.HeapReleased; held < memReturnMin {
		t.Skipf("the runtime already returned the burst (%d bytes held)", held)
	}
	m.check()
	runtime.ReadMemStats(&after)
	if held := after.HeapIdle - after.HeapReleased; held >= memReturnMin {
		t.Fatalf("still %d bytes of free heap held from the OS after check (was %d)", held, before.HeapIdle-before.HeapReleased)
	}
	m.check() // nothing worth returning now
	runtime.ReadMemStats(&after)
	if after.NumForcedGC != before.NumForcedGC+1 {
		t.Fatalf("%d forced collections, want 1: the second check should not have run one", after.NumForcedGC-before.NumForcedGC)
	}
}
