package daemon

import (
	"context"
	"log/slog"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"github.com/presence-dev/presence/internal/lifecycle"
)

// memReturner gives the memory a burst has freed back to the operating
// system once the daemon is at rest. A mass expiry or a first-message
// storm briefly needs memory far beyond the fleet's own (transitions on
// their way to the sinks, pipelines, batches). The Go runtime keeps freed
// heap for reuse up to about its next collection goal, twice the live heap
// with GOGC=100: right under load, but at rest it holds the RSS of a 10M
// fleet at more than twice its live heap for good.
//
// Every memReturnEvery it reads the runtime's metrics. When the heap
// allocated since the last look is small (under memReturnQuiet of the
// live heap, at least memReturnMin: the daemon is at rest; under load the
// runtime's own policy is the right one and a forced collection would only
// cost CPU), and what a collection would give back (the free heap still
// held from the OS, plus the heap that was not live at the last
// collection) is at least memReturnMin, it returns it: debug.FreeOSMemory,
// one collection, then the pages.
type memReturner struct {
	log        *slog.Logger
	run        lifecycle.Runner
	samples    []metrics.Sample
	lastAllocs uint64
}

const (
	memReturnEvery = 10 * time.Second
	memReturnMin   = 32 << 20
	memReturnQuiet = 8 // at rest: allocated less than 1/8 of the live heap in memReturnEvery
)

// The metrics check reads, in this order.
var memReturnMetrics = []string{
	"/gc/heap/allocs:bytes",
	"/gc/heap/live:bytes",
	"/memory/classes/heap/objects:bytes",
	"/memory/classes/heap/free:bytes",
}

func newMemReturner(log *slog.Logger) *memReturner {
	m := &memReturner{log: log, samples: make([]metrics.Sample, len(memReturnMetrics))}
	for i, name := range memReturnMetrics {
		m.samples[i].Name = name
	}
	m.lastAllocs = m.read()[0]
	return m
}

func (m *memReturner) Start(ctx context.Context) error {
	return m.run.Start(ctx, func(ctx context.Context) {
		lifecycle.Every(ctx, memReturnEvery, func() { m.check() })
	})
}

// read returns the values of memReturnMetrics (0 for one this Go does not
// have).
func (m *memReturner) read() [4]uint64 {
	metrics.Read(m.samples)
	var v [4]uint64
	for i, s := range m.samples {
		if s.Value.Kind() == metrics.KindUint64 {
			v[i] = s.Value.Uint64()
		}
	}
	return v
}

// check returns the memory a collection would free to the OS if the
// daemon is at rest and it is worth it; it reports whether it did.
func (m *memReturner) check() bool {
	v := m.read()
	allocs, live, objects, free := v[0], v[1], v[2], v[3]
	allocated := allocs - m.lastAllocs
	m.lastAllocs = allocs
	reclaimable := free + objects - min(live, objects)
	if allocated >= max(memReturnMin, live/memReturnQuiet) || reclaimable < memReturnMin {
		return false
	}
	debug.FreeOSMemory()
	m.lastAllocs = m.read()[0]
	m.log.Debug("returned free heap to the OS", "bytes", reclaimable, "live_heap", live)
	return true
}

func (m *memReturner) Close(ctx context.Context) error { return m.run.Close(ctx, nil) }
