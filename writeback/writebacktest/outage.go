package writeback

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// TestOutageConvergence cuts the connection to the store (a TCP proxy the
// test controls) while devices keep changing, and shows that (1) the
// engine-side dirty set stays bounded by the device count, however many
// changes happen during the outage, and (2) after the store returns it
// converges to the engine's latest state.
func TestOutageConvergence(t *testing.T) {
	for name, newH := range sinkKinds() {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			const devices = 300
			src := newFakeSource()
			h := newH(t, src, harnessOpts{viaProxy: true})
			runSink(t, h.sink)
			errorsTotal := func() uint64 {
				return counter(h.sink.Metrics(), "presence_writeback_errors_total", h.label)
			}

			var (
				stop    = make(chan struct{})
				wg      sync.WaitGroup
				changes sync.Map // phase -> count
			)
			phase := func() string { v, _ := changes.Load("phase"); return v.(string) }
			changes.Store("phase", "before")
			counts := map[string]int{}
			var countsMu sync.Mutex
			wg.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					st := engine.StatusOnline
					if rand.IntN(4) == 0 {
						st = engine.StatusOffline
					}
					// A global clock: each device's last_seen only grows.
					src.Set(dev(1+rand.IntN(devices), st, t0.Add(time.Duration(i)*time.Millisecond)))
					countsMu.Lock()
					counts[phase()]++
					countsMu.Unlock()
					if i%20 == 0 {
						time.Sleep(200 * time.Microsecond)
					}
				}
			})

			time.Sleep(200 * time.Millisecond)
			changes.Store("phase", "outage")
			h.proxy.Cut()
			before := errorsTotal()
			deadline := time.Now().Add(700 * time.Millisecond)
			for time.Now().Before(deadline) {
				if n := src.Len(); n > devices {
					t.Fatalf("dirty set %d > %d devices during the outage", n, devices)
				}
				time.Sleep(10 * time.Millisecond)
			}
			if errorsTotal() == before {
				t.Fatal("no write failed while the store was cut off")
			}
			changes.Store("phase", "after")
			h.proxy.Restore()
			time.Sleep(200 * time.Millisecond)
			close(stop)
			wg.Wait()

			testenv.Eventually(t, 10*time.Second, func() error { return storedMismatch(h, src.Snapshot()) })
			if m := src.MaxLen(); m > devices {
				t.Fatalf("dirty set peaked at %d > %d devices", m, devices)
			}
			countsMu.Lock()
			defer countsMu.Unlock()
			if counts["outage"] <= devices {
				t.Fatalf("only %d changes during the outage; the test proves nothing", counts["outage"])
			}
			t.Logf("changes before/outage/after: %d/%d/%d, dirty peak %d of %d devices, failed writes %d",
				counts["before"], counts["outage"], counts["after"], src.MaxLen(), devices, errorsTotal())
		})
	}
}

// TestHistoryOutage: while Postgres is cut off, transitions queue up to
// the capacity and the oldest are dropped and counted; after it returns
// every transition is either written or counted as dropped.
func TestHistoryOutage(t *testing.T) {
	px := testenv.NewProxy(t, pgAddr(t))
	const capacity = 2000
	h, table := newTestHistory(t, newPool(t, px.Addr()), func(c *HistoryConfig) {
		c.QueueCapacity = capacity
		c.BatchSize = 500
	})
	runDone := make(chan struct{})
	go func() { defer close(runDone); _ = h.Run(context.Background()) }()
	send := func(n int, from int) {
		for i := range n {
			h.HandleTransitions([]engine.Transition{transition("d", engine.StatusOnline, t0.Add(time.Duration(from+i)*time.Microsecond), engine.CauseTelemetry)})
		}
	}
	send(1000, 0)
	testenv.Eventually(t, 5*time.Second, func() error {
		if h.Queued() > 0 {
			return errNotYet
		}
		return nil
	})
	px.Cut()
	send(5000, 1000)
	if q := h.Queued(); q > capacity+500 {
		t.Fatalf("Queued = %d during the outage, capacity %d (+ one batch in flight)", q, capacity)
	}
	time.Sleep(200 * time.Millisecond) // a few failed retries
	px.Restore()
	testenv.Eventually(t, 10*time.Second, func() error {
		if h.Queued() > 0 {
			return errNotYet
		}
		return nil
	})
	dropped := h.Metrics().GetOrCreateCounter("presence_writeback_history_dropped_total").Get()
	written := len(readHistory(t, table))
	if written+int(dropped) != 6000 || dropped == 0 {
		t.Fatalf("written %d + dropped %d != 6000 sent (or nothing dropped)", written, dropped)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	<-runDone
}
