package events

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/presence-dev/presence/engine"
)

// encodeSender encodes every event to JSON and discards it: the work of a
// real destination minus its I/O.
type encodeSender struct {
	enc encoder
	buf []byte
}

func (*encodeSender) accepts(Type) bool { return true }
func (s *encodeSender) send(_ context.Context, batch []rec) error {
	for i := range batch {
		s.buf = s.enc.appendJSON(s.buf[:0], &batch[i])
	}
	return nil
}

// benchBatches: 100,000 devices going offline then online, in batches of
// 256 (the engine's batches are up to Config.BatchSize).
func benchBatches() [][]engine.Transition {
	const devices, size = 100_000, 256
	var all []engine.Transition
	for _, to := range []engine.Status{engine.StatusOffline, engine.StatusOnline} {
		for i := range devices {
			from := engine.StatusOnline
			cause := engine.CauseTimeout
			if to == engine.StatusOnline {
				from, cause = engine.StatusOffline, engine.CauseTelemetry
			}
			all = append(all, engine.Transition{ID: fmt.Sprintf("device-%07d", i), From: from, To: to, At: t0.Add(time.Duration(i) * time.Millisecond), Cause: cause})
		}
	}
	var out [][]engine.Transition
	for len(all) > 0 {
		n := min(size, len(all))
		out = append(out, all[:n])
		all = all[n:]
	}
	return out
}

// BenchmarkHandleTransitions is the engine-side cost of the hub per
// transition (one op = one transition, handed over in batches of 256),
// beside two baselines: a plain buffered channel send per transition to a
// consumer goroutine, and copying the batch under a mutex (the least any
// queueing sink does).
func BenchmarkHandleTransitions(b *testing.B) {
	batches := benchBatches()
	runOn := func(b *testing.B, batches [][]engine.Transition, handle func([]engine.Transition)) {
		b.ReportAllocs()
		b.ResetTimer()
		for n, i := 0, 0; n < b.N; i++ {
			batch := batches[i%len(batches)]
			if rest := b.N - n; rest < len(batch) {
				batch = batch[:rest]
			}
			handle(batch)
			n += len(batch)
		}
	}
	run := func(b *testing.B, handle func([]engine.Transition)) { runOn(b, batches, handle) }

	b.Run("baseline=chan", func(b *testing.B) {
		ch := make(chan engine.Transition, 1<<16)
		done := make(chan struct{})
		go func() {
			for range ch {
			}
			close(done)
		}()
		run(b, func(batch []engine.Transition) {
			for i := range batch {
				ch <- batch[i]
			}
		})
		close(ch)
		<-done
	})
	b.Run("baseline=copy", func(b *testing.B) {
		var mu sync.Mutex
		var q []engine.Transition
		run(b, func(batch []engine.Transition) {
			mu.Lock()
			q = append(q[:0], batch...)
			mu.Unlock()
		})
	})

	hub := func(b *testing.B, dests int, alerts, workers bool) {
		cfg := bareConfig()
		if alerts {
			cfg.Alerts = DefaultConfig().Alerts
		}
		h, err := New(cfg, Deps{Logger: quietLog(), FleetSize: func() int { return 1_000_000 }})
		if err != nil {
			b.Fatal(err)
		}
		for i := range dests {
			h.add(fmt.Sprint("d", i), &encodeSender{}, defaultDelivery())
		}
		ctx := context.Background()
		if workers {
			h.Start(ctx)
		}
		run(b, h.HandleTransitions)
		b.StopTimer()
		if workers {
			_ = h.Close(ctx)
		}
	}
	// The flapping detector alone, off and on: with every transition a
	// quick change (its previous status began a second before), the worst
	// case, every device of the 100,000 followed.
	flapHub := func(b *testing.B, on bool) {
		cfg := bareConfig()
		if on {
			cfg.Alerts.Flapping = DefaultConfig().Alerts.Flapping
		}
		h, err := New(cfg, Deps{Logger: quietLog()})
		if err != nil {
			b.Fatal(err)
		}
		quick := make([][]engine.Transition, len(batches))
		for i, batch := range batches {
			quick[i] = slices.Clone(batch)
			for j := range quick[i] {
				quick[i][j].PrevSince = quick[i][j].At.Add(-time.Second)
			}
		}
		runOn(b, quick, h.HandleTransitions)
	}
	b.Run("hub/dests=0/flapping=off", func(b *testing.B) { flapHub(b, false) })
	b.Run("hub/dests=0/flapping=on", func(b *testing.B) { flapHub(b, true) })
	b.Run("hub/dests=0/alerts=off", func(b *testing.B) { hub(b, 0, false, false) })
	b.Run("hub/dests=0/alerts=on", func(b *testing.B) { hub(b, 0, true, false) })
	b.Run("hub/dests=1/alerts=off", func(b *testing.B) { hub(b, 1, false, true) })
	b.Run("hub/dests=4/alerts=off", func(b *testing.B) { hub(b, 4, false, true) })
	b.Run("hub/dests=4/alerts=on", func(b *testing.B) { hub(b, 4, true, true) })
	// Destinations dead (no worker): every queue full, every event dropped
	// and counted. The engine-side cost must not grow.
	b.Run("hub/dests=4/dead", func(b *testing.B) { hub(b, 4, false, false) })
}
