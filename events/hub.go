package events

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/lifecycle"
	"github.com/presence-dev/presence/internal/queue"
	"github.com/presence-dev/presence/internal/wire"
)

// Hub publishes the engine's transitions, and the alerts derived from
// them, to every configured destination. It implements engine.Sink:
// HandleTransitions copies each batch into one bounded queue per
// destination and returns; one worker per destination sends its queue. A
// full queue drops its oldest events, or, for the destinations that hold
// state for consumers (OnFull Backpressure), makes HandleTransitions wait
// for room while their store is up.
//
// Lifecycle: New builds without I/O; Start starts the workers and the
// alert ticker; Close stops accepting events, sends what is queued within
// its ctx, waits for every goroutine and is idempotent.
type Hub struct {
	cfg   Config
	log   *slog.Logger
	now   func() time.Time
	set   *metrics.Set
	dests []*dest
	sse   *sseHub // nil when disabled
	al    *alerts // nil when both alerts are disabled
	fl    *flaps  // nil when flapping detection is disabled

	// pubMu serializes publishing: HandleTransitions and the alert ticker.
	// It keeps the events of one device in order across the two (an
	// offline_alert is never queued after the device's later online event)
	// and guards the alert state and buf. A push that waits for room
	// (Backpressure) holds it: the alert ticker waits too, and the
	// destinations after the waiting one get the batch later. The wait
	// needs nothing but the destination's own worker, so it cannot
	// deadlock; it ends when there is room, when a send fails, or when
	// Close cancels pushing.
	pubMu sync.Mutex
	buf   []rec
	// pushing is the ctx of the pushes that wait for room; Close cancels
	// it first, so that shutdown never waits on a full queue.
	pushing     context.Context
	stopPushing context.CancelFunc
	// tracked and incident mirror the alert state for the gauges; written
	// under pubMu, read without it.
	tracked  atomic.Int64
	incident atomic.Bool

	run lifecycle.Runner // the alert ticker
}

var _ engine.Sink = (*Hub)(nil)

// UnsentError is returned by Close when events were still queued when its
// context ended (or the hub never started): Unsent counts them per
// destination.
type UnsentError struct {
	Unsent map[string]int
}

func (e *UnsentError) Error() string {
	return fmt.Sprintf("events: events not sent at close: %v", e.Unsent)
}

// New validates cfg and builds a hub. It does no I/O.
func New(cfg Config, deps Deps) (*Hub, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if (cfg.PubSub.Enabled || cfg.Stream.Enabled) && deps.Redis == nil {
		return nil, fmt.Errorf("%w: Redis Pub/Sub or Stream enabled without Deps.Redis", ErrInvalidConfig)
	}
	h := &Hub{
		cfg: cfg,
		log: deps.Logger,
		now: deps.Now,
		set: deps.Metrics,
	}
	h.pushing, h.stopPushing = context.WithCancel(context.Background())
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.now == nil {
		h.now = time.Now
	}
	if h.set == nil {
		h.set = metrics.NewSet()
	}
	if cfg.PubSub.Enabled {
		h.add("pubsub", &pubsubSender{client: deps.Redis, channel: cfg.PubSub.Channel, verb: pubsubVerb(cfg.PubSub.Sharded)}, cfg.PubSub.Delivery)
	}
	if cfg.Stream.Enabled {
		h.add("stream", newStreamSender(deps.Redis, cfg.Stream, time.Now, h.log, h.set), cfg.Stream.Delivery)
	}
	if cfg.MQTT.Enabled {
		h.add("mqtt", newMQTTSender(cfg.MQTT, h.log), cfg.MQTT.Delivery)
	}
	for i, w := range cfg.Webhooks {
		if w.Secret == "" {
			w.Secret = cfg.WebhookSecret
		}
		name := webhookName(w, i)
		h.add(name, newWebhookSender(name, w), w.Delivery)
	}
	if cfg.SSE.Enabled {
		h.sse = newSSEHub(cfg.SSE, h.log, h.set)
		h.add("sse", h.sse, cfg.SSE.Delivery)
	}
	// The destinations that never wait get each batch first: a Stream that
	// pushes back delays the next batch for all, never this one for the
	// live ones.
	slices.SortStableFunc(h.dests, func(a, b *dest) int { return cmp.Compare(a.onFull, b.onFull) })
	if cfg.Alerts.Flapping.enabled() {
		h.fl = newFlaps(cfg.Alerts.Flapping, h.set)
	}
	if cfg.Alerts.OfflineAfter > 0 || cfg.Alerts.Mass.Enabled {
		h.al = newAlerts(cfg.Alerts, deps.FleetSize, h.set)
		if h.fl != nil {
			h.al.quiet = h.fl.flapping
		}
		// Read from atomics: a scrape must not wait for pubMu, which a
		// push waiting for room holds.
		h.set.NewGauge("presence_events_offline_tracked", func() float64 { return float64(h.tracked.Load()) })
		h.set.NewGauge("presence_events_incident_active", func() float64 {
			if h.incident.Load() {
				return 1
			}
			return 0
		})
	}
	return h, nil
}

func (h *Hub) add(name string, s sender, d DeliveryConfig) {
	h.dests = append(h.dests, newDest(name, s, d, h.log, h.set))
}

// Metrics returns the set holding the hub's metrics (Deps.Metrics or the
// one New created), labelled by destination, never by device.
func (h *Hub) Metrics() *metrics.Set { return h.set }

// SSEHandler serves GET /v1/events (mount it with api.Server.Handle behind
// the API's authentication). With SSE disabled it answers 404.
func (h *Hub) SSEHandler() http.Handler {
	if h.sse == nil {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			wire.WriteError(w, http.StatusNotFound, "event stream disabled")
		})
	}
	return h.sse
}

// HandleTransitions implements engine.Sink. It turns the batch into
// events, updates the alerts, and copies the events into each
// destination's queue. A full DropOldest queue drops its oldest events
// and counts them; a full Backpressure queue makes it wait for room while
// that destination's store is up (the engine coalesces per device
// meanwhile), and drops like the others while it is down. It never waits
// for a destination once Close has begun. Safe for concurrent use, though
// the engine calls it from one goroutine.
func (h *Hub) HandleTransitions(batch []engine.Transition) {
	if len(batch) == 0 {
		return
	}
	h.pubMu.Lock()
	buf := h.buf[:0]
	for i := range batch {
		buf = append(buf, statusRec(&batch[i]))
	}
	if h.fl != nil {
		buf = h.fl.observe(batch, buf)
	}
	if h.al != nil {
		n := len(buf)
		buf = h.al.observe(batch, h.now(), buf)
		h.logIncidents(buf[n:])
		h.mirrorAlerts()
	}
	h.publish(buf)
	clear(buf) // drop the id strings
	h.buf = buf[:0]
	h.pubMu.Unlock()
}

// mirrorAlerts copies the alert state the gauges show. Called with pubMu
// held.
func (h *Hub) mirrorAlerts() {
	h.tracked.Store(int64(h.al.tracked()))
	h.incident.Store(h.al.incidentActive())
}

// StopWaitingAfter bounds back-pressure for a shutdown: from d from now
// on, a push no longer waits for room (a full queue drops its oldest,
// counted), so that the engine's last delivery cannot hold up a shutdown,
// even one that began during restart recovery, while the destinations'
// writes are still held. Close stops the waits at once.
func (h *Hub) StopWaitingAfter(d time.Duration) { time.AfterFunc(d, h.stopPushing) }

// publish hands events to every destination. Called with pubMu held.
func (h *Hub) publish(recs []rec) {
	for _, d := range h.dests {
		d.push(h.pushing, recs)
	}
}

func (h *Hub) logIncidents(recs []rec) {
	for i := range recs {
		r := &recs[i]
		switch r.typ {
		case TypeMassOffline:
			h.log.Warn("events: mass offline incident", logKeyIncident, r.inc.id,
				logKeyCount, r.inc.count, "fleet", r.inc.fleet, "share", r.inc.share)
		case TypeMassOfflineRecovered:
			h.log.Info("events: mass offline incident recovered", logKeyIncident, r.inc.id,
				logKeyCount, r.inc.count, "recovered", r.inc.recovered, "still_offline", r.inc.stillOffline)
		}
	}
}

// checkAlerts emits the offline alerts due at now, in chunks so that
// HandleTransitions never waits long for pubMu.
func (h *Hub) checkAlerts(now time.Time) {
	var out []rec
	if h.fl != nil {
		h.pubMu.Lock()
		var rearm func(string, int64, engine.Cause)
		if h.al != nil {
			rearm = h.al.rearm
		}
		if out = h.fl.check(now, out, rearm); len(out) > 0 {
			h.publish(out)
		}
		h.pubMu.Unlock()
		clear(out)
	}
	for more := h.al != nil; more; {
		h.pubMu.Lock()
		out, more = h.al.check(now, out[:0])
		h.mirrorAlerts()
		h.publish(out)
		h.pubMu.Unlock()
		clear(out)
	}
}

// Hold makes every destination's worker wait, once started, until ch is
// closed before it sends (Close does not wait). Call it before Start.
func (h *Hub) Hold(ch <-chan struct{}) {
	for _, d := range h.dests {
		d.q.Hold(ch)
	}
}

// Start connects the destinations that have a connection of their own,
// and starts a worker per destination and the alert ticker. It fails after
// Close or when called twice.
func (h *Hub) Start(ctx context.Context) error {
	var loops []func(context.Context)
	if h.al != nil && h.cfg.Alerts.OfflineAfter > 0 || h.fl != nil {
		loops = append(loops, h.alertLoop)
	}
	if err := h.run.Start(ctx, loops...); errors.Is(err, lifecycle.ErrClosed) {
		return ErrClosed
	} else if err != nil {
		return fmt.Errorf("events: %w", err)
	}
	for _, d := range h.dests {
		if c, ok := d.s.(connector); ok {
			c.connect()
		}
		if err := d.q.Start(ctx); err != nil {
			return fmt.Errorf("events: %s: %w", d.name, err)
		}
	}
	return nil
}

// RedisBacklog is the number of events waiting for the destinations that
// write to Redis (Pub/Sub, the Stream): what the daemon's PostgreSQL
// writers yield to during a burst.
func (h *Hub) RedisBacklog() int {
	n := 0
	for _, d := range h.dests {
		switch d.s.(type) {
		case *pubsubSender, *streamSender:
			n += d.q.Len()
		}
	}
	return n
}

// Flapping reports whether device id is flapping now (FlapConfig); false
// with the detector disabled. Safe for concurrent use; it never waits for
// a destination.
func (h *Hub) Flapping(id string) bool { return h.fl != nil && h.fl.flapping(id) }

// alertLoop emits the offline alerts and flapping_stopped events that are
// due, every CheckInterval.
func (h *Hub) alertLoop(ctx context.Context) {
	lifecycle.Every(ctx, h.cfg.Alerts.CheckInterval, func() { h.checkAlerts(h.now()) })
}

// Close stops every wait for room (from then on a full queue drops), ends
// every SSE stream, stops the alert ticker, and sends what is queued for
// each destination (all in parallel), retrying until ctx is
// done. Events handed over afterwards are dropped and counted. It returns
// an *UnsentError when events were left unsent (a hub never started sends
// nothing: everything queued is unsent). Idempotent.
func (h *Hub) Close(ctx context.Context) error {
	h.stopPushing()
	if h.sse != nil {
		h.sse.close()
	}
	return h.run.Close(ctx, h.drain)
}

func (h *Hub) drain(ctx context.Context) error {
	started := h.run.Started()
	unsent := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, d := range h.dests {
		wg.Go(func() {
			dctx := ctx
			if !started {
				// Never connected: count what is queued as unsent.
				c, cancel := context.WithCancel(ctx)
				cancel()
				dctx = c
			}
			var ue *queue.UnsentError
			if err := d.q.Close(dctx); errors.As(err, &ue) {
				mu.Lock()
				unsent[d.name] = ue.Unsent
				mu.Unlock()
			}
			if c, ok := d.s.(connector); ok && started {
				c.disconnect()
			}
		})
	}
	wg.Wait()
	if len(unsent) > 0 {
		return &UnsentError{Unsent: unsent}
	}
	return nil
}

// pubsubVerb is the command that publishes an event: SPUBLISH when
// sharded.
func pubsubVerb(sharded bool) any {
	if sharded {
		return "spublish"
	}
	return "publish"
}
