package events

import (
	"context"
	"log/slog"

	"github.com/VictoriaMetrics/metrics"

	"github.com/presence-dev/presence/internal/queue"
	"github.com/presence-dev/presence/internal/wire"
)

// sender is one destination's transport. send delivers a whole batch or
// fails; a failed batch is sent again later, so a send that failed half-way
// delivers its first events twice (see "Delivery and back-pressure" in docs/EVENTS.md). A
// batch that retrying cannot deliver (a webhook's 4xx) fails with
// queue.Permanent: it is dropped and counted instead.
type sender interface {
	send(ctx context.Context, batch []rec) error
	// accepts reports whether events of type t go to this destination.
	accepts(t Type) bool
}

// connector is implemented by senders with a connection of their own.
type connector interface {
	connect()    // called once by Start, before the destination's worker starts
	disconnect() // called once by Close, after its queue is drained
}

// dest is one destination: a bounded queue fed by the hub and the worker
// that sends it in batches, retrying with backoff (internal/queue). With
// OnFull DropOldest nothing the worker does can block push; with
// Backpressure push waits for room while the worker's sends succeed.
type dest struct {
	name   string
	s      sender
	all    bool // s accepts every type: push copies without asking
	onFull OnFull
	q      *queue.Queue[rec]
	m      queue.Metrics
}

func newDest(name string, s sender, cfg DeliveryConfig, log *slog.Logger, set *metrics.Set) *dest {
	label := "{" + wire.Label("dest", name) + "}"
	d := &dest{name: name, s: s, all: acceptsAll(s), onFull: cfg.OnFull, m: queue.Metrics{
		Sent:     set.NewCounter("presence_events_sent_total" + label),
		Dropped:  set.NewCounter("presence_events_dropped_total" + label),
		Errors:   set.NewCounter("presence_events_errors_total" + label),
		Retries:  set.NewCounter("presence_events_retries_total" + label),
		Duration: set.NewHistogram("presence_events_send_duration_seconds" + label),
		Waited:   set.NewFloatCounter("presence_events_blocked_seconds_total" + label),
	}}
	full := queue.DropOldest
	if cfg.OnFull == Backpressure {
		full = queue.Wait
	}
	d.q = queue.New(queue.Config{
		Name:       "events",
		Capacity:   cfg.QueueCapacity,
		Full:       full,
		BatchSize:  cfg.BatchSize,
		MinBackoff: cfg.MinBackoff,
		MaxBackoff: cfg.MaxBackoff,
		Timeout:    cfg.Timeout,
		LogEvery:   errLogEvery,
		Logger:     log.With(logKeyDest, name),
		Metrics:    d.m,
	}, s.send)
	set.NewGauge("presence_events_queued"+label, func() float64 { return float64(d.q.Len()) })
	return d
}

// push copies the events this destination accepts into its queue. When the
// queue is full, a DropOldest destination drops the oldest events, counted,
// and never waits for the worker; a Backpressure one waits for room while
// its store is up and ctx is not done (queue.Wait), and drops otherwise.
func (d *dest) push(ctx context.Context, recs []rec) {
	if d.all {
		d.q.PushWait(ctx, recs...)
		return
	}
	d.q.PushFuncWait(ctx, len(recs), func(i int) (rec, bool) { return recs[i], d.s.accepts(recs[i].typ) })
}

func acceptsAll(s sender) bool {
	for t := Type(1); t <= numTypes; t++ { // the types are 1..numTypes
		if !s.accepts(t) {
			return false
		}
	}
	return true
}
