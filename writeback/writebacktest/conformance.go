package writeback

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// stateSink is what every state sink offers; the conformance suite runs
// against each implementation (litestream's RunWithReplicaClient style).
type stateSink interface {
	Run(context.Context) error
	Flush(context.Context) error
	Close(context.Context) error
	Metrics() *metrics.Set
	ReadStates(context.Context, []string) ([]engine.DeviceState, error)
}

var (
	_ stateSink = (*Redis)(nil)
	_ stateSink = (*Postgres)(nil)
)

// harness is one sink under test.
type harness struct {
	sink  stateSink
	label string // the sink label of its metrics
	// hasStatus: the store keeps the status (a Postgres table may not).
	hasStatus bool
	// monotonic: the store itself refuses an older last_seen, and an online
	// at the same last_seen as a stored offline (Postgres' guard, guarded
	// Redis); plain Redis trusts the engine, whose last_seen is monotonic.
	monotonic bool
	proxy     *testenv.Proxy // non-nil when built with viaProxy
}

type harnessOpts struct {
	viaProxy bool
	flush    func(*FlushConfig) // adjusts the test defaults
}

// newHarnessFunc builds a sink over src against a fresh, private store
// namespace (key prefix, table) that is removed when the test ends.
type newHarnessFunc func(t *testing.T, src Source, o harnessOpts) harness

// testFlushConfig is fast: tests must not wait for production intervals.
func testFlushConfig(t testing.TB, base FlushConfig, o harnessOpts) FlushConfig {
	base.Interval = 20 * time.Millisecond
	base.FlushAt = 0
	base.MinBackoff = 10 * time.Millisecond
	base.MaxBackoff = 100 * time.Millisecond
	base.WriteTimeout = 2 * time.Second
	base.Logger = testLogger(t)
	if o.flush != nil {
		o.flush(&base)
	}
	return base
}

// sinkKinds are every sink implementation and table flavour.
func sinkKinds() map[string]newHarnessFunc {
	return map[string]newHarnessFunc{
		"redis":                   newRedisHarness,
		"redis/guarded":           newGuardedRedisHarness,
		"postgres/bigint+status":  newPostgresHarness("bigint", ", status text", false),
		"postgres/text-no-status": newPostgresHarness("text", "", false),
		"postgres/insert-unknown": newPostgresHarness("bigint", ", status varchar(16)", true),
	}
}

// TestSinkConformance runs the same behaviour tests against every sink.
func TestSinkConformance(t *testing.T) {
	for name, newH := range sinkKinds() {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			runSinkConformance(t, newH)
		})
	}
}

var t0 = time.Date(2025, 12, 14, 10, 30, 45, 123456789, time.UTC)

func dev(id int, st engine.Status, seen time.Time) engine.DeviceState {
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
func checkStored(t *testing.T, h harness, want []engine.DeviceState) {
	t.Helper()
	if err := storedMismatch(h, want); err != nil {
		t.Fatal(err)
	}
}

func storedMismatch(h harness, want []engine.DeviceState) error {
	got, err := h.sink.ReadStates(context.Background(), ids(want))
	if err != nil {
		return err
	}
	for i, w := range want {
		g := got[i]
		wantSeen := w.LastSeen.Truncate(time.Microsecond)
		if !g.LastSeen.Equal(wantSeen) {
			return fmt.Errorf("device %s: last_seen %v, want %v", w.ID, g.LastSeen, wantSeen)
		}
		if h.hasStatus && g.Status != w.Status {
			return fmt.Errorf("device %s: status %v, want %v", w.ID, g.Status, w.Status)
		}
	}
	return nil
}

func counter(set *metrics.Set, name, label string) uint64 {
	return set.GetOrCreateCounter(name + `{sink="` + label + `"}`).Get()
}

func runSinkConformance(t *testing.T, newH newHarnessFunc) {
	ctx := context.Background()

	t.Run("WriteAndReadBack", func(t *testing.T) {
		src := newFakeSource()
		h := newH(t, src, harnessOpts{})
		want := []engine.DeviceState{
			dev(1, engine.StatusOnline, t0),
			dev(2, engine.StatusOffline, t0.Add(-time.Hour)),
			dev(3, engine.StatusOnline, t0.Add(999*time.Nanosecond)), // truncated to µs
		}
		src.Set(want...)
		if err := h.sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		checkStored(t, h, want)
		if src.Len() != 0 {
			t.Fatalf("dirty after flush: %d", src.Len())
		}
		if got := counter(h.sink.Metrics(), "presence_writeback_devices_written_total", h.label); got != 3 {
			t.Fatalf("devices_written_total = %d, want 3", got)
		}
	})

	t.Run("CoalescesToLatest", func(t *testing.T) {
		src := newFakeSource()
		h := newH(t, src, harnessOpts{})
		var last engine.DeviceState
		for i := range 1000 {
			st := engine.StatusOnline
			if i%2 == 1 {
				st = engine.StatusOffline
			}
			last = dev(7, st, t0.Add(time.Duration(i)*time.Millisecond))
			src.Set(last)
		}
		if err := h.sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		checkStored(t, h, []engine.DeviceState{last})
		if got := counter(h.sink.Metrics(), "presence_writeback_devices_written_total", h.label); got != 1 {
			t.Fatalf("1000 changes of one device written as %d devices, want 1", got)
		}
	})

	t.Run("StatusChangeKeepsLastSeen", func(t *testing.T) {
		src := newFakeSource()
		h := newH(t, src, harnessOpts{})
		src.Set(dev(1, engine.StatusOnline, t0))
		if err := h.sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		// A timeout: offline, last_seen unchanged.
		want := dev(1, engine.StatusOffline, t0)
		src.Set(want)
		if err := h.sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		checkStored(t, h, []engine.DeviceState{want})
	})

	t.Run("LastSeenNeverBackwards", func(t *testing.T) {
		src := newFakeSource()
		h := newH(t, src, harnessOpts{})
		if !h.monotonic {
			t.Skip("store trusts the engine's monotonic last_seen")
		}
		newer := dev(1, engine.StatusOnline, t0)
		src.Set(newer)
		if err := h.sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		src.Set(dev(1, engine.StatusOffline, t0.Add(-time.Second))) // a stale writer
		if err := h.sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		checkStored(t, h, []engine.DeviceState{newer})
	})

	t.Run("OfflineNotUndoneAtSameLastSeen", func(t *testing.T) {
		src := newFakeSource()
		h := newH(t, src, harnessOpts{})
		if !h.monotonic || !h.hasStatus {
			t.Skip("store trusts the engine (or has no status)")
		}
		offline := dev(1, engine.StatusOffline, t0) // a timeout, written by the new owner
		src.Set(offline)
		if err := h.sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		src.Set(dev(1, engine.StatusOnline, t0)) // a stale owner that missed it
		if err := h.sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		checkStored(t, h, []engine.DeviceState{offline})
	})

	t.Run("ZeroLastSeen", func(t *testing.T) {
		src := newFakeSource()
		h := newH(t, src, harnessOpts{})
		src.Set(dev(1, engine.StatusOnline, t0))
		if err := h.sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		src.Set(engine.DeviceState{ID: "1", Status: engine.StatusOffline})
		if err := h.sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		// last_seen is not cleared; the status is written.
		checkStored(t, h, []engine.DeviceState{dev(1, engine.StatusOffline, t0)})
	})

	t.Run("UnknownStatusSkipped", func(t *testing.T) {
		src := newFakeSource()
		h := newH(t, src, harnessOpts{})
		src.Set(engine.DeviceState{ID: "1", Status: engine.StatusUnknown, LastSeen: t0})
		if err := h.sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		checkStored(t, h, []engine.DeviceState{{ID: "1"}})
		if got := counter(h.sink.Metrics(), "presence_writeback_skipped_total", h.label); got != 1 {
			t.Fatalf("skipped_total = %d, want 1", got)
		}
	})

	t.Run("ManyBatchesConcurrently", func(t *testing.T) {
		src := newFakeSource()
		h := newH(t, src, harnessOpts{flush: func(c *FlushConfig) { c.BatchSize, c.Concurrency = 97, 3 }})
		want := make([]engine.DeviceState, 2000)
		for i := range want {
			want[i] = dev(i+1, engine.Status(1+i%2), t0.Add(time.Duration(i)*time.Microsecond))
		}
		src.Set(want...)
		if err := h.sink.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		checkStored(t, h, want)
	})

	t.Run("RunFlushesOnInterval", func(t *testing.T) {
		src := newFakeSource()
		h := newH(t, src, harnessOpts{})
		done := runSink(t, h.sink)
		want := []engine.DeviceState{dev(1, engine.StatusOnline, t0), dev(2, engine.StatusOnline, t0)}
		src.Set(want...)
		testenv.Eventually(t, 5*time.Second, func() error { return storedMismatch(h, want) })
		want[0] = dev(1, engine.StatusOffline, t0.Add(time.Second))
		src.Set(want[0])
		testenv.Eventually(t, 5*time.Second, func() error { return storedMismatch(h, want) })
		if err := h.sink.Close(ctx); err != nil {
			t.Fatal(err)
		}
		<-done
	})

	t.Run("FlushAtStartsEarly", func(t *testing.T) {
		src := newFakeSource()
		h := newH(t, src, harnessOpts{flush: func(c *FlushConfig) { c.Interval, c.FlushAt = time.Hour, 10 }})
		runSink(t, h.sink)
		want := make([]engine.DeviceState, 20)
		for i := range want {
			want[i] = dev(i+1, engine.StatusOnline, t0)
		}
		src.Set(want...)
		testenv.Eventually(t, 5*time.Second, func() error { return storedMismatch(h, want) })
	})

	t.Run("CloseFlushesPending", func(t *testing.T) {
		src := newFakeSource()
		h := newH(t, src, harnessOpts{flush: func(c *FlushConfig) { c.Interval = time.Hour }})
		done := runSink(t, h.sink)
		want := []engine.DeviceState{dev(1, engine.StatusOnline, t0), dev(2, engine.StatusOffline, t0)}
		src.Set(want...)
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := h.sink.Close(cctx); err != nil {
			t.Fatal(err)
		}
		<-done
		checkStored(t, h, want)
		if err := h.sink.Close(cctx); err != nil { // idempotent
			t.Fatalf("second Close: %v", err)
		}
		if err := h.sink.Run(ctx); !errors.Is(err, ErrClosed) {
			t.Fatalf("Run after Close = %v, want ErrClosed", err)
		}
	})

	t.Run("FailedFlushKeepsDevicesDirty", func(t *testing.T) {
		src := newFakeSource()
		h := newH(t, src, harnessOpts{viaProxy: true})
		want := []engine.DeviceState{dev(1, engine.StatusOnline, t0), dev(2, engine.StatusOnline, t0)}
		src.Set(want...)
		h.proxy.Cut()
		if err := h.sink.Flush(ctx); err == nil {
			t.Fatal("flush through a cut proxy succeeded")
		}
		if src.Len() != 2 {
			t.Fatalf("dirty after failed flush = %d, want 2", src.Len())
		}
		if counter(h.sink.Metrics(), "presence_writeback_errors_total", h.label) == 0 {
			t.Fatal("errors_total not counted")
		}
		want[1] = dev(2, engine.StatusOffline, t0.Add(time.Second)) // changes while down
		src.Set(want[1])
		h.proxy.Restore()
		testenv.Eventually(t, 5*time.Second, func() error { return h.sink.Flush(ctx) })
		checkStored(t, h, want)
	})

	t.Run("CloseReportsUnwritten", func(t *testing.T) {
		src := newFakeSource()
		h := newH(t, src, harnessOpts{viaProxy: true})
		h.proxy.Cut()
		src.Set(dev(1, engine.StatusOnline, t0), dev(2, engine.StatusOnline, t0), dev(3, engine.StatusOnline, t0))
		cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		err := h.sink.Close(cctx)
		var ue *UnflushedError
		if !errors.As(err, &ue) || ue.Pending != 3 {
			t.Fatalf("Close = %v, want UnflushedError with 3 pending", err)
		}
	})
}

// runSink starts Run and closes the sink at the end of the test; the
// returned channel is closed when Run returns.
func runSink(t *testing.T, s stateSink) <-chan struct{} {
	done := make(chan struct{})
	var once sync.Once
	go func() {
		defer close(done)
		if err := s.Run(context.Background()); err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("Run: %v", err)
		}
	}()
	t.Cleanup(func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = s.Close(ctx)
			<-done
		})
	})
	return done
}
