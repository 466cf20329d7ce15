package daemon

import (
	"io"

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
	counters [3][engine.CauseAPI + 1]*metrics.Counter // [to][cause]
}

func newTransitionCounter(set *metrics.Set) *transitionCounter {
	t := &transitionCounter{}
	for _, to := range []engine.Status{engine.StatusOnline, engine.StatusOffline} {
		for c := engine.CauseTelemetry; c <= engine.CauseAPI; c++ {
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

// registerEngineMetrics exports the engine's counts and counters into set.
// A scrape reads them once (Stats and Counts lock every shard briefly),
// however many series use them; the counters are counters.
func registerEngineMetrics(set *metrics.Set, eng *engine.Engine) {
	set.RegisterMetricsWriter(func(w io.Writer) {
		st, c := eng.Stats(), eng.Counts()
		metrics.WriteGaugeUint64(w, `presence_devices{status="online"}`, uint64(c.Online))
		metrics.WriteGaugeUint64(w, `presence_devices{status="offline"}`, uint64(c.Offline))
		metrics.WriteCounterUint64(w, "presence_engine_touches_total", st.Touches)
		metrics.WriteCounterUint64(w, "presence_engine_rejected_total", st.Rejected)
		metrics.WriteCounterUint64(w, "presence_engine_stale_total", st.Stale)
		metrics.WriteCounterUint64(w, "presence_engine_decommissioned_total", st.Decommissioned)
		metrics.WriteGaugeUint64(w, "presence_engine_transitions_queued", uint64(st.Queued))
		metrics.WriteCounterUint64(w, "presence_engine_transitions_coalesced_total", st.Coalesced)
		metrics.WriteCounterUint64(w, "presence_engine_transitions_collapsed_total", st.Collapsed)
		metrics.WriteGaugeUint64(w, "presence_engine_wheel_entries", uint64(st.WheelEntries))
	})
}
