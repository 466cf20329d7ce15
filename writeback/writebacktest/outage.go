package writebacktest

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// RunOutage cuts the connection to the store (a TCP proxy the
// test controls) while devices keep changing, and shows that (1) the
// engine-side dirty set stays bounded by the device count, however many
// changes happen during the outage, and (2) after the store returns it
// converges to the engine's latest state.
func RunOutage(t *testing.T, kinds map[string]NewHarness) {
	for name, newH := range kinds {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			const devices = 300
			src := NewFakeSource()
			h := newH(t, src, Opts{ViaProxy: true})
			startSink(t, h.Sink)
			errorsTotal := func() uint64 {
				return Counter(h.Sink.Metrics(), "presence_writeback_errors_total", h.Label)
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
					src.Set(Dev(1+rand.IntN(devices), st, T0.Add(time.Duration(i)*time.Millisecond)))
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
			h.Proxy.Cut()
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
			h.Proxy.Restore()
			time.Sleep(200 * time.Millisecond)
			close(stop)
			wg.Wait()

			testenv.Eventually(t, 10*time.Second, func() error { return StoredMismatch(h, src.Snapshot()) })
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
