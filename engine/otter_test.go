package engine

import (
	"context"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/maypok86/otter/v2"
)

// The strong peer of issue 14: github.com/maypok86/otter/v2, a Go cache
// whose per-entry expiry runs on a hierarchical timer wheel, used as a Go
// engineer would use it for presence: a Set per message with the expiry
// refreshed on write (ExpiryWriting), OnAtomicDeletion observing the
// expiries. Every row runs the engine and otter in the same run, on the
// same workload:
//
//	go test ./engine -run '^$' -bench 'VsOtter' -benchtime 1x -count 3
//	go test ./engine -run '^$' -bench 'VsOtter/touch' -count 6
//
// touch: ns per message touching one of 1M known devices (the engine's
// TouchBatch in batches of 512 as ingest delivers them, and Touch one by
// one; otter's Set). memory: live heap per device after 1M devices and a
// GC. massexpiry: 1M devices with the same deadline: the time from the
// deadline until the last expiry was observed, and the peak of the heap in
// use above the fleet's own meanwhile (what the expiry costs in transient
// memory). idle: 10,000 devices expiring with no other traffic: how late
// (p99) each expiry is observed.

const otterFleet = 1_000_000

func newOtter(b *testing.B, expiry time.Duration, onExpire func(string)) *otter.Cache[string, int64] {
	c, err := otter.New(&otter.Options[string, int64]{
		MaximumSize:      4 * otterFleet,
		InitialCapacity:  otterFleet,
		ExpiryCalculator: otter.ExpiryWriting[string, int64](expiry),
		OnAtomicDeletion: func(e otter.DeletionEvent[string, int64]) {
			if e.Cause == otter.CauseExpiration && onExpire != nil {
				onExpire(e.Key)
			}
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// countingEngine is an engine whose sink counts offline transitions and
// records when each was observed.
func countingEngine(b testing.TB, tick time.Duration, onOffline func(Transition)) *Engine {
	cfg := DefaultConfig()
	cfg.Tick = tick
	cfg.Logger = slog.New(slog.DiscardHandler)
	cfg.Sink = SinkFunc(func(batch []Transition) {
		for i := range batch {
			if batch[i].To == StatusOffline && onOffline != nil {
				onOffline(batch[i])
			}
		}
	})
	e, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	return e
}

func BenchmarkVsOtter(b *testing.B) {
	ids := benchIDs(otterFleet)
	b.Run("touch/engine=TouchBatch", func(b *testing.B) {
		e := countingEngine(b, 100*time.Millisecond, nil)
		now := time.Now()
		batch := make([]Touch, 512)
		for lo := 0; lo < len(ids); lo += len(batch) {
			for i := range batch {
				batch[i] = Touch{ID: ids[(lo+i)%len(ids)], At: now}
			}
			e.TouchBatch(batch)
		}
		b.ResetTimer()
		for n := 0; n < b.N; n += len(batch) {
			at := now.Add(time.Duration(n))
			for i := range batch {
				batch[i] = Touch{ID: ids[(n+i*7919)%len(ids)], At: at}
			}
			e.TouchBatch(batch)
		}
	})
	b.Run("touch/engine=Touch", func(b *testing.B) {
		e := countingEngine(b, 100*time.Millisecond, nil)
		now := time.Now()
		for _, id := range ids {
			_ = e.Touch(id, now)
		}
		b.ResetTimer()
		for n := range b.N {
			_ = e.Touch(ids[(n*7919)%len(ids)], now.Add(time.Duration(n)))
		}
	})
	b.Run("touch/otter=Set", func(b *testing.B) {
		c := newOtter(b, time.Minute, nil)
		now := time.Now().UnixNano()
		for _, id := range ids {
			c.Set(id, now)
		}
		b.ResetTimer()
		for n := range b.N {
			c.Set(ids[(n*7919)%len(ids)], now+int64(n))
		}
	})

	b.Run("memory/engine", func(b *testing.B) {
		before := liveHeap()
		e := countingEngine(b, 100*time.Millisecond, nil)
		now := time.Now()
		for _, id := range ids {
			_ = e.Touch(id, now)
		}
		b.ReportMetric(float64(liveHeap()-before)/otterFleet, "B/device")
		runtime.KeepAlive(e)
	})
	b.Run("memory/otter", func(b *testing.B) {
		before := liveHeap()
		c := newOtter(b, time.Minute, nil)
		now := time.Now().UnixNano()
		for _, id := range ids {
			c.Set(id, now)
		}
		b.ReportMetric(float64(liveHeap()-before)/otterFleet, "B/device")
		runtime.KeepAlive(c)
	})

	b.Run("massexpiry/engine", func(b *testing.B) {
		var obs expiries
		e := countingEngine(b, 10*time.Millisecond, func(Transition) { obs.observe() })
		runEngine(b, e)
		at := time.Now()
		batch := make([]Touch, 0, 512)
		for lo := 0; lo < len(ids); lo += cap(batch) {
			batch = batch[:0]
			for _, id := range ids[lo:min(lo+cap(batch), len(ids))] {
				batch = append(batch, Touch{ID: id, At: at, Timeout: 2 * time.Second})
			}
			e.TouchBatch(batch)
		}
		massExpiry(b, at.Add(2*time.Second), &obs)
	})
	b.Run("massexpiry/otter", func(b *testing.B) {
		var obs expiries
		c := newOtter(b, 2*time.Second, func(string) { obs.observe() })
		at := time.Now()
		for _, id := range ids {
			c.Set(id, at.UnixNano())
		}
		massExpiry(b, at.Add(2*time.Second), &obs)
		runtime.KeepAlive(c)
	})

	idle := ids[:10_000]
	b.Run("idle/engine", func(b *testing.B) {
		var mu sync.Mutex
		var late []time.Duration
		e := countingEngine(b, 10*time.Millisecond, func(t Transition) {
			mu.Lock()
			late = append(late, time.Since(t.At))
			mu.Unlock()
		})
		runEngine(b, e)
		now := time.Now()
		for i, id := range idle { // deadlines spread over 1 s
			_ = e.TouchBatch([]Touch{{ID: id, At: now.Add(time.Duration(i) * 100 * time.Microsecond), Timeout: time.Second}})
		}
		idleLateness(b, &mu, &late, len(idle))
	})
	b.Run("idle/otter", func(b *testing.B) {
		var mu sync.Mutex
		var late []time.Duration
		var deadline sync.Map
		c := newOtter(b, time.Second, func(k string) {
			d, _ := deadline.Load(k)
			mu.Lock()
			late = append(late, time.Since(d.(time.Time)))
			mu.Unlock()
		})
		for _, id := range idle {
			deadline.Store(id, time.Now().Add(time.Second))
			c.Set(id, 0)
			time.Sleep(100 * time.Microsecond) // deadlines spread over ~1 s
		}
		idleLateness(b, &mu, &late, len(idle))
		runtime.KeepAlive(c)
	})
}

// expiries counts observed expiries and when the last one was seen.
type expiries struct{ seen, last atomic.Int64 }

func (x *expiries) observe() {
	x.seen.Add(1)
	x.last.Store(time.Now().UnixNano())
}

// massExpiry waits until every device's expiry was observed, sampling the
// heap in use meanwhile, and reports the time from deadline to the last
// one and the peak of the heap above its level at the deadline.
func massExpiry(b *testing.B, deadline time.Time, obs *expiries) {
	seen, last := &obs.seen, &obs.last
	// The fleet's own garbage (its touches') collected first, so that the
	// heap in use above base is what the expiry itself takes.
	time.Sleep(time.Until(deadline) - time.Second)
	runtime.GC()
	time.Sleep(time.Until(deadline) - 100*time.Millisecond)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base, peak := ms.HeapInuse, ms.HeapInuse
	stop := time.Now().Add(2 * time.Minute)
	for seen.Load() < otterFleet {
		if time.Now().After(stop) {
			b.Fatalf("%d of %d expiries observed after 2 min", seen.Load(), otterFleet)
		}
		runtime.ReadMemStats(&ms)
		peak = max(peak, ms.HeapInuse)
		time.Sleep(5 * time.Millisecond)
	}
	b.ReportMetric(float64(time.Unix(0, last.Load()).Sub(deadline).Milliseconds()), "deadline-to-last-ms")
	b.ReportMetric(float64(peak-base)/(1<<20), "peak-extra-MB")
}

// idleLateness waits for n expiries and reports their lateness.
func idleLateness(b *testing.B, mu *sync.Mutex, late *[]time.Duration, n int) {
	stop := time.Now().Add(time.Minute)
	for {
		mu.Lock()
		got := len(*late)
		mu.Unlock()
		if got >= n {
			break
		}
		if time.Now().After(stop) {
			b.Fatalf("%d of %d expiries observed after 1 min with no other traffic", got, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	l := slices.Clone(*late)
	slices.Sort(l)
	b.ReportMetric(float64(l[len(l)/2].Microseconds())/1000, "p50-late-ms")
	b.ReportMetric(float64(l[len(l)*99/100].Microseconds())/1000, "p99-late-ms")
	b.ReportMetric(float64(l[len(l)-1].Microseconds())/1000, "max-late-ms")
}

// runEngine starts e's clock until the benchmark ends.
func runEngine(b *testing.B, e *Engine) {
	ctx, cancel := context.WithCancel(context.Background())
	if err := e.Start(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cancel()
		_ = e.Close(context.Background())
	})
}
