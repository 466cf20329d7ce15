package events

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/presence-dev/presence/internal/backoff"
	"github.com/presence-dev/presence/internal/ratelog"
	"github.com/presence-dev/presence/internal/ring"
	"github.com/presence-dev/presence/internal/wire"
)

// sender is one destination's transport. send delivers a whole batch or
// fails; a failed batch is sent again later, so a send that failed half-way
// delivers its first events twice (see "Delivery guarantees" in doc.go).
type sender interface {
	send(ctx context.Context, batch []rec) error
	// accepts reports whether events of type t go to this destination.
	accepts(t Type) bool
}

// lifecycle is implemented by senders with a connection of their own.
type lifecycle interface {
	start(ctx context.Context) // called once by Run before the worker starts
	stop()                     // called once by Close after the worker ended
}

// permanentError marks a batch that retrying cannot deliver (a webhook's
// 4xx): it is dropped and counted instead.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// dest is one destination: a bounded queue fed by the hub and one worker
// that sends it in batches, retrying with backoff. Nothing the worker does
// can block push.
type dest struct {
	name string
	s    sender
	cfg  DeliveryConfig
	log  *slog.Logger
	lim  *ratelog.Limiter[logLine] // send failures, drops

	mu       sync.Mutex      // guards the queue, closed and the drop count
	queue    *ring.Ring[rec] // grows by doubling up to QueueCapacity
	closed   bool
	dropLog  uint64        // drops since the last drop log line
	kick     chan struct{} // 1-buffered: events are waiting
	inflight []rec         // owned by whoever sends (worker, then drain)
	inflN    int           // len(inflight), readable under mu

	m destMetrics
}

type destMetrics struct {
	sent, dropped, errors, retries *metrics.Counter
	dur                            *metrics.Histogram
}

func newDest(name string, s sender, cfg DeliveryConfig, log *slog.Logger, set *metrics.Set) *dest {
	d := &dest{
		name: name, s: s, cfg: cfg,
		log:   log.With(logKeyDest, name),
		lim:   newLogLimiter(),
		kick:  make(chan struct{}, 1),
		queue: ring.New[rec](256, cfg.QueueCapacity),
	}
	label := "{" + wire.Label("dest", name) + "}"
	d.m = destMetrics{
		sent:    set.NewCounter("presence_events_sent_total" + label),
		dropped: set.NewCounter("presence_events_dropped_total" + label),
		errors:  set.NewCounter("presence_events_errors_total" + label),
		retries: set.NewCounter("presence_events_retries_total" + label),
		dur:     set.NewHistogram("presence_events_send_duration_seconds" + label),
	}
	set.NewGauge("presence_events_queued"+label, func() float64 { return float64(d.queued()) })
	return d
}

// push copies the events this destination accepts into its queue. When the
// queue is full the oldest events are dropped and counted. It never waits
// for the worker.
func (d *dest) push(recs []rec) {
	dropped := 0
	d.mu.Lock()
	for i := range recs {
		r := &recs[i]
		if !d.s.accepts(r.typ) {
			continue
		}
		if d.closed {
			dropped++
			continue
		}
		if d.queue.Push(*r) {
			dropped++
		}
	}
	d.dropLog += uint64(dropped)
	d.mu.Unlock()
	if dropped > 0 {
		d.m.dropped.Add(dropped)
		d.logDrops()
	}
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

func (d *dest) logDrops() {
	ok, sup := d.lim.Allow(lineDropped)
	if !ok {
		return
	}
	d.mu.Lock()
	n := d.dropLog
	d.dropLog = 0
	d.mu.Unlock()
	d.log.Warn("events: destination queue full, oldest events dropped",
		logKeyDropped, n, logKeyPending, d.queued(), logKeySuppressed, sup)
}

// queued is the number of events waiting, the batch being sent included.
func (d *dest) queued() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.queue.Len() + d.inflN
}

// fill moves up to BatchSize queued events to inflight, unless inflight
// still holds a failed batch: a batch is retried exactly as it was (a
// webhook retry is byte-identical, with the same batch id).
func (d *dest) fill() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.inflight) > 0 {
		return
	}
	d.inflight = d.queue.PopTo(d.inflight, d.cfg.BatchSize)
	d.inflN = len(d.inflight)
}

// sendInflight makes one attempt at the inflight batch. On success, and on
// a permanent failure (dropped and counted), inflight is emptied.
func (d *dest) sendInflight(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	start := time.Now()
	err := d.s.send(ctx, d.inflight)
	cancel()
	d.m.dur.UpdateDuration(start)
	n := len(d.inflight)
	var perm *permanentError
	switch {
	case err == nil:
		d.m.sent.Add(n)
	case errors.As(err, &perm):
		d.m.errors.Inc()
		d.m.dropped.Add(n)
		if ok, sup := d.lim.Allow(lineSendFailed); ok {
			d.log.Error("events: batch refused by the destination, dropped",
				logKeyErr, err, logKeyDropped, n, logKeySuppressed, sup)
		}
		err = nil
	default:
		d.m.errors.Inc()
		return err
	}
	clear(d.inflight)
	d.inflight = d.inflight[:0]
	d.mu.Lock()
	d.inflN = 0
	d.mu.Unlock()
	return nil
}

// run is the worker: it sends batches as they come until ctx is done or
// stop is closed, and retries a failed batch with backoff. A batch in
// flight when it returns stays in inflight for drain.
func (d *dest) run(ctx context.Context, stop <-chan struct{}) {
	failures := 0
	for {
		d.fill()
		if len(d.inflight) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-stop:
				return
			case <-d.kick:
			}
			continue
		}
		if failures > 0 {
			d.m.retries.Inc()
		}
		err := d.sendInflight(ctx)
		if err == nil {
			if failures > 0 {
				d.log.Info("events: destination recovered", logKeyAttempt, failures+1)
			}
			failures = 0
			continue
		}
		if ctx.Err() != nil {
			return
		}
		failures++
		wait := backoff.Delay(d.cfg.MinBackoff, d.cfg.MaxBackoff, failures)
		if ok, sup := d.lim.Allow(lineSendFailed); ok {
			d.log.Warn("events: send failed, retrying",
				logKeyErr, err, logKeyAttempt, failures, logKeyBackoff, wait,
				logKeyPending, d.queued(), logKeySuppressed, sup)
		}
		if !sleepCtx(ctx, stop, wait) {
			return
		}
	}
}

// drain stops accepting events and sends everything queued, retrying
// until ctx is done. It returns the number of events left unsent.
func (d *dest) drain(ctx context.Context) int {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	for attempt := 0; ctx.Err() == nil; {
		d.fill()
		if len(d.inflight) == 0 {
			return 0
		}
		if attempt > 0 {
			d.m.retries.Inc()
		}
		if err := d.sendInflight(ctx); err != nil {
			attempt++
			if !sleepCtx(ctx, nil, backoff.Delay(d.cfg.MinBackoff, d.cfg.MaxBackoff, attempt)) {
				break
			}
			continue
		}
		attempt = 0
	}
	left := d.queued()
	d.m.dropped.Add(left)
	return left
}
