package daemon

import (
	"io"
	"log/slog"
	"runtime"
	"testing"
)

// A burst's memory goes back to the OS once the daemon is at rest: not
// in the interval that allocated it (under load), at the next check, and
// not again when nothing is left to return.
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
	if m.check() {
		t.Fatal("check returned memory in the interval that allocated 256 MiB")
	}
	if !m.check() {
		t.Fatal("check at rest did not return the burst's free heap")
	}
	runtime.ReadMemStats(&after)
	if held := after.HeapIdle - after.HeapReleased; held >= memReturnMin {
		t.Fatalf("still %d bytes of free heap held from the OS after check (was %d)", held, before.HeapIdle-before.HeapReleased)
	}
	if m.check() {
		t.Fatal("check returned memory again with nothing worth returning")
	}
	runtime.ReadMemStats(&after)
	if after.NumForcedGC != before.NumForcedGC+1 {
		t.Fatalf("%d forced collections, want 1", after.NumForcedGC-before.NumForcedGC)
	}
}
