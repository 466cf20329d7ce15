package writebacktest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
	"github.com/presence-dev/presence/writeback"
)

// Sink is what every state sink offers; the conformance suite runs against
// each implementation (litestream's RunWithReplicaClient style).
type Sink interface {
	Start(context.Context) error
	Flush(context.Context) error
	Close(context.Context) error
	Metrics() *metrics.Set
	ReadStates(context.Context, []string) ([]engine.DeviceState, error)
}

// Harness is one sink under test.
type Harness struct {
	Sink  Sink
	Label string // the sink label of its metrics
	// HasStatus: the store keeps the status (a Postgres table may not).
	HasStatus bool
	// Monotonic: the store itself refuses an older last_seen, and an
	// online at the same last_seen as a stored offline (Postgres' guard,
	// guarded Redis); plain Redis trusts the engine, whose last_seen is
	// monotonic.
	Monotonic bool
	Proxy     *testenv.Proxy // non-nil when built with ViaProxy
}

// Opts are what a test asks of a harness.
type Opts struct {
	ViaProxy bool                         // connect through a Proxy the test can cut
	Flush    func(*writeback.FlushConfig) // adjusts the test defaults
}

// NewHarness builds a sink over src against a fresh, private store
// namespace (key prefix, table) that is removed when the test ends.
type NewHarness func(t *testing.T, src writeback.Source, o Opts) Harness

// FlushConfig is base made fast: tests must not wait for production
// intervals.
func FlushConfig(t testing.TB, base writeback.FlushConfig, o Opts) writeback.FlushConfig {
	base.Interval = 20 * time.Millisecond
	base.FlushAt = 0
	base.MinBackoff = 10 * time.Millisecond
	base.MaxBackoff = 100 * time.Millisecond
	base.WriteTimeout = 2 * time.Second
	base.Logger = testenv.Logger(t)
	if o.Flush != nil {
		o.Flush(&base)
	}
	return base
}

// T0 is the suite's reference time.
var T0 = time.Date(2025, 12, 14, 10, 30, 45, 123456789, time.UTC)

// Dev is device id's state.
func Dev(id int, st engine.Status, seen time.Time) engine.DeviceState {
	return engine.DeviceState{ID: strconv.Itoa(id), Status: st, LastSeen: seen}
}

func ids(states []engine.DeviceState) []string {
	out := make([]string, len(states))
	for i, s := range states {
		out[i] = s.ID
	}
	return out
}

// checkStored compares the store with want: status (if kept) and last_seen
// truncated to microseconds.
func checkStored(t *testing.T, h Harness, want []engine.DeviceState) {
	t.Helper()
	if err := StoredMismatch(h, want); err != nil {
		t.Fatal(err)
	}
}

// StoredMismatch says how the store differs from want, or nil.
func StoredMismatch(h Harness, want []engine.DeviceState) error {
	got, err := h.Sink.ReadStates(context.Background(), ids(want))
	if err != nil {
		return err
	}
	for i, w := range want {
		g := got[i]
		wantSeen := w.LastSeen.Truncate(time.Microsecond)
		if !g.LastSeen.Equal(wantSeen) {
			return fmt.Errorf("device %s: last_seen %v, want %v", w.ID, g.LastSeen, wantSeen)
		}
		if h.HasStatus && g.Status != w.Status {
			return fmt.Errorf("device %s: status %v, want %v", w.ID, g.Status, w.Status)
		}
	}
	return nil
}

// Counter reads counter name{sink="label"} of set.
func Counter(set *metrics.Set, name, label string) uint64 {
	return set.GetOrCreateCounter(name + `{sink="` + label + `"}`).Get()
}

// RunConformance runs the same behaviour tests against every kind of
// sink, in parallel.
func RunConformance(t *testing.T, kinds map[string]NewHarness) {
	for name, newH := range kinds {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			runConformance(t, newH)
		})
	}
}

func runConformance(t *testing.T, newH NewHarness) {
	ctx := context.Background()

	t.Run("WriteAndReadBack", func(t *testing.T) {
		src := NewFakeSource()
		h := newH(t, src, Opts{})
		want := []engine.DeviceState{
			Dev(1, engine.StatusOnline, T0),
			Dev(2, engine.StatusOffline, T0.Add(-time.Hour)),
			Dev(3, engine.StatusOnline, T0.Add(999*time.Nanosecond)), // truncated to µs
		}
		src.Set(want...)
		if err := h.Sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		checkStored(t, h, want)
		if src.Len() != 0 {
			t.Fatalf("dirty after flush: %d", src.Len())
		}
		if got := Counter(h.Sink.Metrics(), "presence_writeback_devices_written_total", h.Label); got != 3 {
			t.Fatalf("devices_written_total = %d, want 3", got)
		}
	})

	t.Run("CoalescesToLatest", func(t *testing.T) {
		src := NewFakeSource()
		h := newH(t, src, Opts{})
		var last engine.DeviceState
		for i := range 1000 {
			st := engine.StatusOnline
			if i%2 == 1 {
				st = engine.StatusOffline
			}
			last = Dev(7, st, T0.Add(time.Duration(i)*time.Millisecond))
			src.Set(last)
		}
		if err := h.Sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		checkStored(t, h, []engine.DeviceState{last})
		if got := Counter(h.Sink.Metrics(), "presence_writeback_devices_written_total", h.Label); got != 1 {
			t.Fatalf("1000 changes of one device written as %d devices, want 1", got)
		}
	})

	t.Run("StatusChangeKeepsLastSeen", func(t *testing.T) {
		src := NewFakeSource()
		h := newH(t, src, Opts{})
		src.Set(Dev(1, engine.StatusOnline, T0))
		if err := h.Sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		// A timeout: offline, last_seen unchanged.
		want := Dev(1, engine.StatusOffline, T0)
		src.Set(want)
		if err := h.Sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		checkStored(t, h, []engine.DeviceState{want})
	})

	t.Run("LastSeenNeverBackwards", func(t *testing.T) {
		src := NewFakeSource()
		h := newH(t, src, Opts{})
		if !h.Monotonic {
			t.Skip("store trusts the engine's monotonic last_seen")
		}
		newer := Dev(1, engine.StatusOnline, T0)
		src.Set(newer)
		if err := h.Sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		src.Set(Dev(1, engine.StatusOffline, T0.Add(-time.Second))) // a stale writer
		if err := h.Sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		checkStored(t, h, []engine.DeviceState{newer})
	})

	t.Run("OfflineNotUndoneAtSameLastSeen", func(t *testing.T) {
		src := NewFakeSource()
		h := newH(t, src, Opts{})
		if !h.Monotonic || !h.HasStatus {
			t.Skip("store trusts the engine (or has no status)")
		}
		offline := Dev(1, engine.StatusOffline, T0) // a timeout, written by the new owner
		src.Set(offline)
		if err := h.Sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		src.Set(Dev(1, engine.StatusOnline, T0)) // a stale owner that missed it
		if err := h.Sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		checkStored(t, h, []engine.DeviceState{offline})
	})

	t.Run("ZeroLastSeen", func(t *testing.T) {
		src := NewFakeSource()
		h := newH(t, src, Opts{})
		src.Set(Dev(1, engine.StatusOnline, T0))
		if err := h.Sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		src.Set(engine.DeviceState{ID: "1", Status: engine.StatusOffline})
		if err := h.Sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		// last_seen is not cleared; the status is written.
		checkStored(t, h, []engine.DeviceState{Dev(1, engine.StatusOffline, T0)})
	})

	t.Run("UnknownStatusSkipped", func(t *testing.T) {
		src := NewFakeSource()
		h := newH(t, src, Opts{})
		src.Set(engine.DeviceState{ID: "1", Status: engine.StatusUnknown, LastSeen: T0})
		if err := h.Sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		checkStored(t, h, []engine.DeviceState{{ID: "1"}})
		if got := Counter(h.Sink.Metrics(), "presence_writeback_skipped_total", h.Label); got != 1 {
			t.Fatalf("skipped_total = %d, want 1", got)
		}
	})

	t.Run("ManyBatchesConcurrently", func(t *testing.T) {
		src := NewFakeSource()
		h := newH(t, src, Opts{Flush: func(c *writeback.FlushConfig) { c.BatchSize, c.Concurrency = 97, 3 }})
		want := make([]engine.DeviceState, 2000)
		for i := range want {
			want[i] = Dev(i+1, engine.Status(1+i%2), T0.Add(time.Duration(i)*time.Microsecond))
		}
		src.Set(want...)
		if err := h.Sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		checkStored(t, h, want)
	})

	t.Run("RunFlushesOnInterval", func(t *testing.T) {
		src := NewFakeSource()
		h := newH(t, src, Opts{})
		startSink(t, h.Sink)
		want := []engine.DeviceState{Dev(1, engine.StatusOnline, T0), Dev(2, engine.StatusOnline, T0)}
		src.Set(want...)
		testenv.Eventually(t, 5*time.Second, func() error { return StoredMismatch(h, want) })
		want[0] = Dev(1, engine.StatusOffline, T0.Add(time.Second))
		src.Set(want[0])
		testenv.Eventually(t, 5*time.Second, func() error { return StoredMismatch(h, want) })
		if err := h.Sink.Close(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("FlushAtStartsEarly", func(t *testing.T) {
		src := NewFakeSource()
		h := newH(t, src, Opts{Flush: func(c *writeback.FlushConfig) { c.Interval, c.FlushAt = time.Hour, 10 }})
		startSink(t, h.Sink)
		want := make([]engine.DeviceState, 20)
		for i := range want {
			want[i] = Dev(i+1, engine.StatusOnline, T0)
		}
		src.Set(want...)
		testenv.Eventually(t, 5*time.Second, func() error { return StoredMismatch(h, want) })
	})

	t.Run("CloseFlushesPending", func(t *testing.T) {
		src := NewFakeSource()
		h := newH(t, src, Opts{Flush: func(c *writeback.FlushConfig) { c.Interval = time.Hour }})
		startSink(t, h.Sink)
		want := []engine.DeviceState{Dev(1, engine.StatusOnline, T0), Dev(2, engine.StatusOffline, T0)}
		src.Set(want...)
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := h.Sink.Close(cctx); err != nil {
			t.Fatal(err)
		}
		checkStored(t, h, want)
		if err := h.Sink.Close(cctx); err != nil { // idempotent
			t.Fatalf("second Close: %v", err)
		}
		if err := h.Sink.Start(ctx); !errors.Is(err, writeback.ErrClosed) {
			t.Fatalf("Start after Close = %v, want ErrClosed", err)
		}
	})

	t.Run("FailedFlushKeepsDevicesDirty", func(t *testing.T) {
		src := NewFakeSource()
		h := newH(t, src, Opts{ViaProxy: true})
		want := []engine.DeviceState{Dev(1, engine.StatusOnline, T0), Dev(2, engine.StatusOnline, T0)}
		src.Set(want...)
		h.Proxy.Cut()
		if err := h.Sink.Flush(ctx); err == nil {
			t.Fatal("flush through a cut proxy succeeded")
		}
		if src.Len() != 2 {
			t.Fatalf("dirty after failed flush = %d, want 2", src.Len())
		}
		if Counter(h.Sink.Metrics(), "presence_writeback_errors_total", h.Label) == 0 {
			t.Fatal("errors_total not counted")
		}
		want[1] = Dev(2, engine.StatusOffline, T0.Add(time.Second)) // changes while down
		src.Set(want[1])
		h.Proxy.Restore()
		testenv.Eventually(t, 5*time.Second, func() error { return h.Sink.Flush(ctx) })
		checkStored(t, h, want)
	})

	t.Run("CloseReportsUnwritten", func(t *testing.T) {
		src := NewFakeSource()
		h := newH(t, src, Opts{ViaProxy: true})
		h.Proxy.Cut()
		src.Set(Dev(1, engine.StatusOnline, T0), Dev(2, engine.StatusOnline, T0), Dev(3, engine.StatusOnline, T0))
		cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		err := h.Sink.Close(cctx)
		var ue *writeback.UnflushedError
		if !errors.As(err, &ue) || ue.Pending != 3 {
			t.Fatalf("Close = %v, want UnflushedError with 3 pending", err)
		}
	})
}

// startSink starts s and closes it at the end of the test.
func startSink(t *testing.T, s Sink) {
	if err := s.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Close(ctx)
	})
}
