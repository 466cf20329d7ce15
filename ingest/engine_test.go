package ingest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/presence-dev/presence/engine"
)

// The engine is the Handler the daemon passes to New.
var _ Handler = (*engine.Engine)(nil)

// TestIntegrationWithEngine runs broker -> ingest -> engine: telemetry makes
// a device online with the pattern's timeout, a status "offline" turns it
// offline at once with cause last_will, and a Last Will of an unknown
// device is counted, not an error.
func TestIntegrationWithEngine(t *testing.T) {
	e := newTestEnv(t)
	var mu sync.Mutex
	var got []engine.Transition
	cfgE := engine.DefaultConfig()
	cfgE.Tick = 10 * time.Millisecond
	cfgE.Sink = engine.SinkFunc(func(b []engine.Transition) {
		mu.Lock()
		got = append(got, b...)
		mu.Unlock()
	})
	eng, err := engine.New(cfgE)
	if err != nil {
		t.Fatal(err)
	}
	c := e.config()
	in, err := New(c, eng)
	if err != nil {
		t.Fatal(err)
	}
	e.h = nil // not used: the engine is the handler
	if err := in.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(context.Background()) })
	waitFor(t, "ready", in.Ready)

	before := time.Now()
	e.publish(e.prefix+"slow/lp-1/telemetry", []byte("x"))
	e.publish(e.prefix+"devices/d-1/telemetry", []byte("x"))
	// The status after the telemetry (they may travel on different
	// subscriber connections).
	waitFor(t, "the telemetry", func() bool { return in.Stats().Touches == 2 })
	e.publish(e.prefix+"devices/d-1/status", []byte("offline"))
	e.publish(e.prefix+"devices/ghost/status", []byte("offline"))
	waitFor(t, "messages handed over", func() bool {
		st := in.Stats()
		return st.Touches == 2 && st.Offline == 2
	})
	lp, err := eng.Device("lp-1")
	if err != nil || lp.Status != engine.StatusOnline || lp.Timeout != 10*time.Minute || lp.LastSeen.Before(before) {
		t.Errorf("lp-1: %+v, %v; want online with the slow pattern's 10m timeout", lp, err)
	}
	d, err := eng.Device("d-1")
	if err != nil || d.Status != engine.StatusOffline {
		t.Errorf("d-1: %+v, %v; want offline", d, err)
	}
	if st := in.Stats(); st.OfflineUnknown != 1 {
		t.Errorf("offline of an unknown device: %+v", st)
	}
	eng.Advance(time.Now())
	eng.Deliver()
	mu.Lock()
	defer mu.Unlock()
	var lastWill bool
	for _, tr := range got {
		if tr.ID == "d-1" && tr.To == engine.StatusOffline && tr.Cause == engine.CauseLastWill {
			lastWill = true
		}
	}
	if !lastWill {
		t.Errorf("no last_will transition for d-1 in %+v", got)
	}
}
