package daemon

import (
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/presence-dev/presence/engine"
)

// fanout hands each batch of transitions to every sink in turn.
type fanout []engine.Sink

func (f fanout) HandleTransitions(b []engine.Transition) {
	for _, s := range f {
		s.HandleTransitions(b)
	}
}

// transitionCounter counts transitions by new status and cause.
type transitionCounter struct {
	counters [3][engine.CauseHandoff + 1]*metrics.Counter // [to][cause]
}

func newTransitionCounter(set *metrics.Set) *transitionCounter {
	t := &transitionCounter{}
	for _, to := range []engine.Status{engine.StatusOnline, engine.StatusOffline} {
		for c := engine.CauseTelemetry; c <= engine.CauseHandoff; c++ {
			t.counters[to][c] = set.NewCounter(`presence_transitions_total{to="` + to.String() + `",cause="` + c.String() + `"}`)
		}
	}
	return t
}

func (t *transitionCounter) HandleTransitions(b []engine.Transition) {
	for i := range b {
		if to, c := b[i].To, b[i].Cause; int(to) < len(t.counters) && int(c) < len(t.counters[to]) && t.counters[to][c] != nil {
			t.counters[to][c].Inc()
		}
	}
}

// metricsSet is the engine's set, made on first use.
func (d *Daemon) metricsSet() *metrics.Set {
	if d.engineMetrics == nil {
		d.engineMetrics = metrics.NewSet()
	}
	return d.engineMetrics
}

// registerEngineMetrics exports the engine's counters. A scrape reads them
// once (Stats locks every shard briefly), however many gauges use them.
func (d *Daemon) registerEngineMetrics() {
	set := d.metricsSet()
	var mu sync.Mutex
	var last time.Time
	var st engine.Stats
	var counts engine.Counts
	read := func() (engine.Stats, engine.Counts) {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(last) > time.Second {
			st, counts, last = d.eng.Stats(), d.eng.Counts(), time.Now()
		}
		return st, counts
	}
	gauge := func(name string, f func(engine.Stats, engine.Counts) float64) {
		set.NewGauge(name, func() float64 { return f(read()) })
	}
	gauge(`presence_devices{status="online"}`, func(_ engine.Stats, c engine.Counts) float64 { return float64(c.Online) })
	gauge(`presence_devices{status="offline"}`, func(_ engine.Stats, c engine.Counts) float64 { return float64(c.Offline) })
	gauge(`presence_engine_touches_total`, func(s engine.Stats, _ engine.Counts) float64 { return float64(s.Touches) })
	gauge(`presence_engine_rejected_total`, func(s engine.Stats, _ engine.Counts) float64 { return float64(s.Rejected) })
	gauge(`presence_engine_stale_total`, func(s engine.Stats, _ engine.Counts) float64 { return float64(s.Stale) })
	gauge(`presence_engine_transitions_queued`, func(s engine.Stats, _ engine.Counts) float64 { return float64(s.Queued) })
	gauge(`presence_engine_transitions_coalesced_total`, func(s engine.Stats, _ engine.Counts) float64 { return float64(s.Coalesced) })
	gauge(`presence_engine_transitions_collapsed_total`, func(s engine.Stats, _ engine.Counts) float64 { return float64(s.Collapsed) })
	gauge(`presence_engine_wheel_entries`, func(s engine.Stats, _ engine.Counts) float64 { return float64(s.WheelEntries) })
}
