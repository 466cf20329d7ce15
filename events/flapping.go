package events

import (
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/presence-dev/presence/engine"
)

// FlapConfig configures the flapping detector: a device that changes
// status more than Changes times within Window is flapping. It raises one
// flapping event, and one flapping_stopped event once it has been stable
// (no change) for Window; meanwhile its status events flow as ever, but
// its offline alerts are suppressed.
type FlapConfig struct {
	// Changes: more than this many status changes within Window make a
	// device flapping. Default 5; 0 disables the detector.
	Changes int
	// Window is the span the changes are counted over, and how long a
	// flapping device must stay unchanged to stop flapping. Default 5 min.
	Window time.Duration
	// MaxTracked bounds the devices the detector follows at once, about
	// 150 bytes each. It follows only devices whose status lasted less
	// than Window (a transition's engine.Transition.PrevSince), so a mass
	// outage of long-online devices costs it nothing; a fleet-wide flap
	// (a broker restart) past the bound is counted
	// (presence_events_flapping_untracked_total), not followed. Default
	// 100,000.
	MaxTracked int
}

func (c FlapConfig) enabled() bool { return c.Changes > 0 }

// flapRec is one followed device.
type flapRec struct {
	times    []int64 // µs of its latest changes, oldest first, at most Changes+1
	flapping bool
	started  int64 // µs: when it began flapping
	status   engine.Status
	cause    engine.Cause // of its latest change
}

// flaps is the flapping detector. Its calls come from the hub under pubMu
// (observe, check); mu also lets the API ask (Flapping) without pubMu,
// which a push waiting for room holds.
type flaps struct {
	k         int
	window    int64 // µs
	max       int
	mu        sync.Mutex
	devs      map[string]*flapRec
	nFlapping int

	events    [2]*metrics.Counter // flapping, flapping_stopped
	untracked *metrics.Counter
}

func newFlaps(cfg FlapConfig, set *metrics.Set) *flaps {
	f := &flaps{k: cfg.Changes, window: cfg.Window.Microseconds(), max: cfg.MaxTracked, devs: map[string]*flapRec{}}
	f.events[0] = set.NewCounter(`presence_events_alerts_total{type="flapping"}`)
	f.events[1] = set.NewCounter(`presence_events_alerts_total{type="flapping_stopped"}`)
	f.untracked = set.NewCounter("presence_events_flapping_untracked_total")
	set.NewGauge("presence_events_flapping_devices", func() float64 {
		f.mu.Lock()
		defer f.mu.Unlock()
		return float64(f.nFlapping)
	})
	set.NewGauge("presence_events_flapping_tracked", func() float64 {
		f.mu.Lock()
		defer f.mu.Unlock()
		return float64(len(f.devs))
	})
	return f
}

// observe follows the changes of a batch and appends the flapping events
// they raise to out.
func (f *flaps) observe(batch []engine.Transition, out []rec) []rec {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range batch {
		t := &batch[i]
		if t.To == engine.StatusUnknown { // decommissioned: forgotten
			if r, ok := f.devs[t.ID]; ok {
				f.drop(t.ID, r)
			}
			continue
		}
		at := t.At.UnixMicro()
		r := f.devs[t.ID]
		if r == nil {
			// Followed from its first quick change: the status it ends
			// began less than Window ago.
			if t.PrevSince.IsZero() || at-t.PrevSince.UnixMicro() > f.window {
				continue
			}
			if len(f.devs) >= f.max {
				f.untracked.Inc()
				continue
			}
			r = &flapRec{times: make([]int64, 0, f.k+1)}
			r.times = append(r.times, t.PrevSince.UnixMicro())
			f.devs[strings.Clone(t.ID)] = r
		}
		if len(r.times) == f.k+1 {
			r.times = append(r.times[:0], r.times[1:]...)
		}
		r.times = append(r.times, at)
		r.status, r.cause = t.To, t.Cause
		if !r.flapping && len(r.times) == f.k+1 && at-r.times[0] <= f.window {
			r.flapping, r.started = true, at
			f.nFlapping++
			f.events[0].Inc()
			out = append(out, rec{typ: TypeFlapping, id: t.ID, at: at, since: r.times[0], status: t.To})
		}
	}
	return out
}

func (f *flaps) drop(id string, r *flapRec) {
	if r.flapping {
		f.nFlapping--
	}
	delete(f.devs, id)
}

// check appends the flapping_stopped events due at now (a flapping device
// unchanged for Window) and forgets every device quiet for Window. For a
// device that stops flapping offline it calls offline with the time and
// cause of its going offline: the offline alert suppressed while it
// flapped is its due again.
func (f *flaps) check(now time.Time, out []rec, offline func(id string, sinceUs int64, cause engine.Cause)) []rec {
	nowUs := now.UnixMicro()
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, r := range f.devs {
		last := r.times[len(r.times)-1]
		if nowUs-last < f.window {
			continue
		}
		if r.flapping {
			f.events[1].Inc()
			out = append(out, rec{typ: TypeFlappingStopped, id: id, at: last + f.window, since: r.started, status: r.status})
			if r.status == engine.StatusOffline && offline != nil {
				offline(id, last, r.cause)
			}
		}
		f.drop(id, r)
	}
	return out
}

// flapping reports whether device id is flapping now.
func (f *flaps) flapping(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.devs[id]
	return r != nil && r.flapping
}
