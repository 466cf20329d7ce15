// Package queue is the bounded queue with a retrying batch worker that
// every write-behind consumer of transitions runs on: each event
// destination, the status history, the cluster's device index. By default
// pushing never blocks the engine: a full queue drops its oldest items,
// counted, so that an outage costs bounded memory and loses the oldest news
// first. A queue whose consumers hold state (Config.Full Wait) instead
// makes PushWait wait for room while its store is up, and drops only while
// it is down. One worker sends the queue in batches and retries a failed
// batch, exactly as it was, with backoff, until it goes through or the
// queue is closed.
package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/presence-dev/presence/internal/backoff"
	"github.com/presence-dev/presence/internal/lifecycle"
	"github.com/presence-dev/presence/internal/ratelog"
)

// Config is one queue's bounds and retry policy. Owners validate their own
// configuration and map it onto this one; New panics on an invalid Config
// (a programmer error).
type Config struct {
	// Name starts every log line ("events", "writeback: history").
	Name string
	// Capacity is the most items waiting; what a push does when the queue
	// is full is Full.
	Capacity int
	// Full is what a push does when the queue holds Capacity items: drop
	// the oldest (DropOldest, the zero value) or wait for room (Wait).
	Full Full
	// Initial is how many items the queue allocates when the first arrives
	// (it then grows by doubling up to Capacity). 0: 256.
	Initial int
	// BatchSize is the most items per send.
	BatchSize int
	// Interval: 0 sends as soon as an item waits. Otherwise the queue is
	// sent every Interval, and as soon as BatchSize items wait.
	Interval time.Duration
	// MinBackoff and MaxBackoff bound the exponential backoff (with
	// jitter) between the retries of a failed batch.
	MinBackoff, MaxBackoff time.Duration
	// Timeout bounds one send.
	Timeout time.Duration
	// DownAfter is how long sends must keep failing before a Wait queue
	// stops waiting for room (the store is taken for down, and pushes drop
	// the oldest): a blip, or a destination still connecting at start,
	// slows its callers instead of losing items. 0: 5 s.
	DownAfter time.Duration
	// LogEvery is the rate limit of the queue's warnings (drops, failed
	// sends): one line per kind per interval, with the number held back.
	// 0: 5 s.
	LogEvery time.Duration
	// Yield, when set, lets more urgent writers go first: while it reports
	// true the worker puts its sends off, for at most MaxYield in a row
	// (then it sends as usual until Yield turns false), and never while
	// the queue is half full: yielding must not make it drop. Flush and
	// Close do not yield.
	// Not with Full Wait (its pushes would wait for the urgent writers).
	Yield func() bool
	// MaxYield bounds how long Yield may put sends off in a row; 0 never
	// puts them off.
	MaxYield time.Duration
	// Logger: nil is slog.Default().
	Logger *slog.Logger
	// Metrics are the owner's counters; a nil one is not counted.
	Metrics Metrics
}

// Full is a queue's policy when it is full.
type Full uint8

const (
	// DropOldest drops the oldest items to make room, counted: a push never
	// waits. For consumers that can lose news (live subscribers, webhooks).
	DropOldest Full = iota
	// Wait makes PushWait and PushFuncWait wait for room while the queue
	// can make progress: it is started (held or not: Hold) and not closed,
	// and its sends have not been failing for Config.DownAfter. Otherwise (the store is down, the
	// queue is closing, or the push's ctx is done) they drop the oldest
	// like DropOldest. The caller is slowed to the store's pace, never
	// stopped for longer than a send can take (Config.Timeout, after which
	// the send fails). Push and PushFunc never wait.
	Wait
)

func (f Full) String() string {
	if f == Wait {
		return "wait"
	}
	return "drop-oldest"
}

// Metrics are the counters a queue keeps, under its owner's names.
type Metrics struct {
	Sent     *metrics.Counter   // items sent
	Dropped  *metrics.Counter   // dropped: queue full, refused, or left at Close
	Errors   *metrics.Counter   // failed sends
	Retries  *metrics.Counter   // sends that retried a failed batch
	Duration *metrics.Histogram // of each send
	// Waited is the seconds pushes spent waiting for room (Full Wait).
	Waited *metrics.FloatCounter
	// Yields counts the times the worker began putting sends off (Yield).
	Yields *metrics.Counter
}

// Permanent marks an error that retrying cannot fix (a webhook's 4xx): the
// batch is dropped, counted and logged instead of retried.
func Permanent(err error) error { return &permanentError{err} }

// IsPermanent reports whether err was marked with Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// UnsentError is Close's error when items were left unsent (counted as
// dropped): the store kept failing until Close's ctx ended.
type UnsentError struct {
	Unsent int
	Err    error // the last failure, or the ctx's error
}

func (e *UnsentError) Error() string { return fmt.Sprintf("%d not sent at close: %v", e.Unsent, e.Err) }
func (e *UnsentError) Unwrap() error { return e.Err }

type logLine uint8

const (
	lineDropped logLine = iota
	lineFailed
	lineWaiting
)

// Queue is a bounded FIFO of T with one worker that hands it to send in
// batches. New builds it; Start starts the worker; Close sends what is left
// within its ctx. Push, PushWait, Len and Flush are safe for concurrent use.
type Queue[T any] struct {
	cfg  Config
	send func(ctx context.Context, batch []T) error
	log  *slog.Logger
	lim  *ratelog.Limiter[logLine]
	run  lifecycle.Runner

	mu   sync.Mutex // guards buf, keys, closed, dropLog, inflN and the wait state
	buf  *ring[T]
	key  func(T) string      // NewCoalescing's; nil: every item is queued
	keys map[string]struct{} // with key: the keys waiting or in flight
	// keysPeak is the most keys held since keys was made (for shrinking).
	keysPeak int
	closed   bool
	dropLog  int           // drops since the last drop line
	inflN    int           // len(inflight), readable under mu
	kick     chan struct{} // 1-buffered: something to send

	// The wait state (Full Wait).
	live      bool          // the worker runs (Start until it returns)
	failing   bool          // the last send failed and was not retried successfully yet
	failSince time.Time     // when the failing streak began
	waiters   int           // pushes waiting for room
	room      chan struct{} // closed (and replaced) when a waiter may go on

	hold <-chan struct{} // the worker waits for it before its first send (Hold)

	yieldSince time.Time // when the worker began putting sends off (Yield); the worker's own

	sendMu   sync.Mutex // one send at a time (the worker, Flush, Close); guards inflight
	inflight []T        // the batch being sent, or the failed one, sent again as it was
}

// New returns an empty queue whose batches go to send. send delivers the
// whole batch or fails; after a failure the same batch (same items, same
// order) is sent again. It must not keep the slice.
func New[T any](cfg Config, send func(ctx context.Context, batch []T) error) *Queue[T] {
	switch {
	case cfg.Capacity <= 0, cfg.BatchSize <= 0, cfg.Interval < 0, cfg.Timeout <= 0,
		cfg.MinBackoff <= 0, cfg.MaxBackoff < cfg.MinBackoff, cfg.Full > Wait, send == nil,
		cfg.MaxYield < 0, cfg.Yield != nil && cfg.Full == Wait:
		panic(fmt.Sprintf("queue %s: invalid config %+v", cfg.Name, cfg))
	}
	if cfg.Initial <= 0 {
		cfg.Initial = 256
	}
	if cfg.LogEvery <= 0 {
		cfg.LogEvery = 5 * time.Second
	}
	if cfg.DownAfter <= 0 {
		cfg.DownAfter = 5 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	q := &Queue[T]{
		cfg:  cfg,
		send: send,
		log:  log,
		lim:  ratelog.New[logLine](cfg.LogEvery, nil),
		buf:  newRing[T](cfg.Initial, cfg.Capacity),
		kick: make(chan struct{}, 1),
		room: make(chan struct{}),
	}
	return q
}

// NewCoalescing is New for a queue that holds each key once: an item whose
// key (by key) is already waiting, or being sent, is not queued again. So
// the queue holds one entry per key (the device index: one id per device,
// however often it comes online), and a full queue means that many keys.
func NewCoalescing[T any](cfg Config, key func(T) string, send func(ctx context.Context, batch []T) error) *Queue[T] {
	q := New(cfg, send)
	q.key, q.keys = key, make(map[string]struct{})
	return q
}

// Push appends items. It never waits, whatever Config.Full: when the
// queue is full the oldest items are dropped (counted, and logged at a
// limited rate), and after Close every item is dropped. In a coalescing
// queue an item whose key waits already is left out (not a drop). It
// returns how many were dropped.
func (q *Queue[T]) Push(items ...T) int { return q.pushAll(nil, items) }

// PushFunc is Push of item(0..n-1), leaving out those for which item
// returns false, under one lock.
func (q *Queue[T]) PushFunc(n int, item func(i int) (T, bool)) int { return q.pushFunc(nil, n, item) }

// PushWait is Push, except that in a queue with Config.Full Wait it waits
// for room while the queue can make progress (see Wait) and ctx is not
// done; then it drops the oldest as Push does. In a DropOldest queue it is
// Push.
func (q *Queue[T]) PushWait(ctx context.Context, items ...T) int { return q.pushAll(ctx, items) }

// PushFuncWait is PushFunc that waits for room as PushWait does.
func (q *Queue[T]) PushFuncWait(ctx context.Context, n int, item func(i int) (T, bool)) int {
	return q.pushFunc(ctx, n, item)
}

// pushAll queues items under mu (a loop without a callback per item: the
// hot path of a destination that takes every event). With a ctx (the Wait
// variants) a full Wait queue waits for room (makeRoom).
func (q *Queue[T]) pushAll(ctx context.Context, items []T) int {
	wait := ctx != nil && q.cfg.Full == Wait
	var waited time.Duration
	q.mu.Lock()
	dropped, pushed := 0, false
	for i := range items {
		if wait && q.buf.Len() >= q.cfg.Capacity {
			waited += q.makeRoom(ctx, items[i])
		}
		d, p := q.pushLocked(items[i])
		dropped, pushed = dropped+d, pushed || p
	}
	return q.pushed(dropped, pushed, waited)
}

// pushFunc is pushAll of item(0..n-1), those for which item returns true.
func (q *Queue[T]) pushFunc(ctx context.Context, n int, item func(i int) (T, bool)) int {
	wait := ctx != nil && q.cfg.Full == Wait
	var waited time.Duration
	q.mu.Lock()
	dropped, pushed := 0, false
	for i := range n {
		v, ok := item(i)
		if !ok {
			continue
		}
		if wait && q.buf.Len() >= q.cfg.Capacity {
			waited += q.makeRoom(ctx, v)
		}
		d, p := q.pushLocked(v)
		dropped, pushed = dropped+d, pushed || p
	}
	return q.pushed(dropped, pushed, waited)
}

// makeRoom waits, with mu held (released while it waits), until the full
// queue has room for v or may not wait any longer (mayWaitLocked), and
// returns how long it waited.
func (q *Queue[T]) makeRoom(ctx context.Context, v T) time.Duration {
	var waited time.Duration
	for q.buf.Len() >= q.cfg.Capacity && q.mayWaitLocked(ctx, v) {
		waited += q.waitLocked(ctx)
	}
	return waited
}

// mayWaitLocked reports, with mu held, whether a push of v into the full
// queue should wait for room: the queue can make progress, ctx is not done,
// and v would be queued (not a duplicate key).
func (q *Queue[T]) mayWaitLocked(ctx context.Context, v T) bool {
	if q.closed || !q.live || ctx.Err() != nil {
		return false
	}
	if q.failing && time.Since(q.failSince) >= q.cfg.DownAfter {
		return false // down: drop rather than hold the caller back
	}
	if q.key != nil {
		if _, dup := q.keys[q.key(v)]; dup {
			return false
		}
	}
	return true
}

// waitLocked waits, releasing mu meanwhile, until the worker took items,
// the queue's state changed, or ctx is done; it returns how long. Called
// with mu held, returns with mu held.
func (q *Queue[T]) waitLocked(ctx context.Context) time.Duration {
	room := q.room
	q.waiters++
	q.mu.Unlock()
	select { // the queue is full: there is something to send
	case q.kick <- struct{}{}:
	default:
	}
	if ok, sup := q.lim.Allow(lineWaiting); ok {
		q.log.Info(q.cfg.Name+": queue full, waiting for room (back-pressure)", "capacity", q.cfg.Capacity, "suppressed", sup)
	}
	start := time.Now()
	select {
	case <-room:
	case <-ctx.Done():
	}
	d := time.Since(start)
	q.mu.Lock()
	q.waiters--
	return d
}

// wakeLocked lets the waiting pushes look again: items were taken, or the
// queue's state changed. Called with mu held.
func (q *Queue[T]) wakeLocked() {
	if q.waiters > 0 {
		close(q.room)
		q.room = make(chan struct{})
	}
}

// setState updates the wait state under mu and wakes the waiters.
func (q *Queue[T]) setState(f func()) {
	q.mu.Lock()
	f()
	q.wakeLocked()
	q.mu.Unlock()
}

// pushLocked queues v, with mu held: dropped is 1 if v, or the oldest item
// to make room for it, was dropped; pushed whether v was queued.
func (q *Queue[T]) pushLocked(v T) (dropped int, pushed bool) {
	if q.closed {
		return 1, false
	}
	if q.key != nil {
		k := q.key(v)
		if _, dup := q.keys[k]; dup {
			return 0, false
		}
		q.keys[k] = struct{}{}
		q.keysPeak = max(q.keysPeak, len(q.keys))
	}
	if old, full := q.buf.Push(v); full {
		dropped = 1
		if q.key != nil {
			delete(q.keys, q.key(old))
		}
	}
	return dropped, true
}

// keysShrinkAt: a coalescing queue's key set is replaced once empty after
// holding at least this many keys.
const keysShrinkAt = 4096

// pushed ends a push: it unlocks mu, counts the time waited, counts and
// logs the drops, and wakes the worker.
func (q *Queue[T]) pushed(dropped int, pushed bool, waited time.Duration) int {
	q.dropLog += dropped
	full := q.buf.Len() >= q.cfg.BatchSize
	q.mu.Unlock()
	if waited > 0 && q.cfg.Metrics.Waited != nil {
		q.cfg.Metrics.Waited.Add(waited.Seconds())
	}
	if dropped > 0 {
		add(q.cfg.Metrics.Dropped, dropped)
		q.logDrops()
	}
	if pushed && (q.cfg.Interval == 0 || full) {
		select {
		case q.kick <- struct{}{}:
		default:
		}
	}
	return dropped
}

func (q *Queue[T]) logDrops() {
	ok, sup := q.lim.Allow(lineDropped)
	if !ok {
		return
	}
	q.mu.Lock()
	n := q.dropLog
	q.dropLog = 0
	q.mu.Unlock()
	q.log.Warn(q.cfg.Name+": queue full (or closed), items dropped", "dropped", n, "pending", q.Len(), "suppressed", sup)
}

// Len is the number of items waiting, the batch in flight included.
func (q *Queue[T]) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.buf.Len() + q.inflN
}

// Hold makes the worker wait, once started, until ch is closed before it
// sends anything (Flush and Close do not wait). Call it before Start.
func (q *Queue[T]) Hold(ch <-chan struct{}) { q.hold = ch }

// Start starts the worker. ctx's values are kept, not its cancellation:
// the worker runs until Close.
func (q *Queue[T]) Start(ctx context.Context) error {
	if err := q.run.Start(ctx, q.worker); err != nil {
		return err
	}
	q.setState(func() { q.live = !q.closed }) // pushes may wait from here on
	return nil
}

// Flush sends, now, every item that was waiting when it was called (and
// the failed batch first), and returns the first error; the batch that
// failed stays first in line. When it returns nil, everything pushed
// before the call has been sent, by this call or by the worker.
func (q *Queue[T]) Flush(ctx context.Context) error { return q.sendPending(ctx, ctx) }

// Close stops accepting items, stops the worker (a send in flight is
// awaited within ctx), and sends what is left, retrying with backoff until
// ctx ends. Items left then are dropped, counted, and reported as an
// *UnsentError. Idempotent.
func (q *Queue[T]) Close(ctx context.Context) error {
	q.setState(func() { q.live = false }) // no push waits from here on
	return q.run.Close(ctx, func(ctx context.Context) error {
		q.setState(func() { q.closed = true })
		var err error
		for attempt := 1; ; attempt++ {
			if err = ctx.Err(); err != nil {
				break
			}
			if err = q.Flush(ctx); err == nil {
				return nil
			}
			inc(q.cfg.Metrics.Retries)
			d := backoff.Delay(q.cfg.MinBackoff, q.cfg.MaxBackoff, attempt)
			if ok, sup := q.lim.Allow(lineFailed); ok {
				q.log.Warn(q.cfg.Name+": final send failed, retrying until the close deadline",
					"err", err, "attempt", attempt, "backoff", d, "suppressed", sup)
			}
			if !sleep(ctx, d) {
				err = ctx.Err()
				break
			}
		}
		left := q.discard()
		if left == 0 {
			return nil
		}
		add(q.cfg.Metrics.Dropped, left)
		q.log.Error(q.cfg.Name+": closed with items not sent", "pending", left, "err", err)
		return &UnsentError{Unsent: left, Err: err}
	})
}

// discard empties the queue and returns how many items it held.
func (q *Queue[T]) discard() int {
	q.sendMu.Lock()
	defer q.sendMu.Unlock()
	q.mu.Lock()
	defer q.mu.Unlock()
	n := q.buf.Len() + len(q.inflight)
	q.buf = newRing[T](q.cfg.Initial, q.cfg.Capacity)
	clear(q.keys)
	clear(q.inflight)
	q.inflight, q.inflN = q.inflight[:0], 0
	return n
}

// worker sends the queue when there is something to send (Interval 0), or
// every Interval and when a batch is full, and retries with backoff.
func (q *Queue[T]) worker(ctx context.Context) {
	defer q.setState(func() { q.live = false })
	if q.hold != nil {
		select {
		case <-q.hold:
		case <-ctx.Done():
			return
		}
	}
	var tick <-chan time.Time
	if q.cfg.Interval > 0 {
		t := time.NewTicker(q.cfg.Interval)
		defer t.Stop()
		tick = t.C
	}
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-q.kick:
		case <-tick:
		}
		if !q.waitYield(ctx) {
			return
		}
		for {
			// Sends run under the Runner's work context: stopping the loop
			// does not cut a send short (a write cancelled after it was
			// applied would be applied again by Close's drain).
			err := q.sendPending(ctx, q.run.Work())
			if ctx.Err() != nil {
				return // Close sends the rest
			}
			if err == nil {
				if failures > 0 {
					q.log.Info(q.cfg.Name+": recovered", "attempt", failures+1)
				}
				failures = 0
				break
			}
			failures++
			d := backoff.Delay(q.cfg.MinBackoff, q.cfg.MaxBackoff, failures)
			if ok, sup := q.lim.Allow(lineFailed); ok {
				q.log.Warn(q.cfg.Name+": send failed, retrying", "err", err, "attempt", failures,
					"backoff", d, "pending", q.Len(), "suppressed", sup)
			}
			if !sleep(ctx, d) {
				return
			}
			inc(q.cfg.Metrics.Retries)
		}
	}
}

// yieldPoll is how often a yielding worker asks Config.Yield again.
const yieldPoll = 25 * time.Millisecond

// waitYield waits while the worker yields to more urgent writers
// (Config.Yield), at most MaxYield in a row and while the queue is less
// than half full; false when ctx ended.
func (q *Queue[T]) waitYield(ctx context.Context) bool {
	if q.cfg.Yield == nil || q.cfg.MaxYield == 0 {
		return true
	}
	for q.cfg.Yield() && q.Len() < q.cfg.Capacity/2 {
		if q.yieldSince.IsZero() {
			q.yieldSince = time.Now()
			inc(q.cfg.Metrics.Yields)
		}
		if time.Since(q.yieldSince) >= q.cfg.MaxYield {
			return true
		}
		if !sleep(ctx, yieldPoll) {
			return false
		}
	}
	q.yieldSince = time.Time{}
	return true
}

// sendPending sends batches until what waited at the call is sent, a send
// fails (its error is returned) or stop is done. Sends use ctx.
func (q *Queue[T]) sendPending(stop, ctx context.Context) error {
	q.sendMu.Lock()
	defer q.sendMu.Unlock()
	budget := q.Len() + q.cfg.BatchSize
	for budget > 0 && stop.Err() == nil {
		n := q.fill()
		if n == 0 {
			return nil
		}
		budget -= n
		if err := q.sendInflight(ctx); err != nil {
			return err
		}
	}
	return stop.Err()
}

// fill moves up to BatchSize waiting items to inflight, unless inflight
// still holds a failed batch: a batch is retried exactly as it was (a
// webhook retry is byte-identical, with the same batch id). Called with
// sendMu held.
func (q *Queue[T]) fill() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.inflight) == 0 {
		q.inflight = q.buf.PopTo(q.inflight, q.cfg.BatchSize)
		q.inflN = len(q.inflight)
		q.wakeLocked()
	}
	return len(q.inflight)
}

// sendInflight makes one attempt at the inflight batch. On success, and on
// a permanent failure (dropped and counted), inflight is emptied. Called
// with sendMu held.
func (q *Queue[T]) sendInflight(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, q.cfg.Timeout)
	start := time.Now()
	err := q.send(ctx, q.inflight)
	cancel()
	if h := q.cfg.Metrics.Duration; h != nil {
		h.UpdateDuration(start)
	}
	n := len(q.inflight)
	var perm *permanentError
	switch {
	case err == nil:
		add(q.cfg.Metrics.Sent, n)
	case errors.As(err, &perm):
		inc(q.cfg.Metrics.Errors)
		add(q.cfg.Metrics.Dropped, n)
		if ok, sup := q.lim.Allow(lineFailed); ok {
			q.log.Error(q.cfg.Name+": batch refused, dropped", "err", err, "dropped", n, "suppressed", sup)
		}
	default:
		inc(q.cfg.Metrics.Errors)
		q.setState(func() {
			if !q.failing {
				q.failing, q.failSince = true, time.Now()
			}
		})
		return err
	}
	q.mu.Lock()
	if q.failing { // the store answered (a permanent failure too)
		q.failing = false
		q.wakeLocked()
	}
	if q.key != nil {
		for _, v := range q.inflight {
			delete(q.keys, q.key(v)) // queued again from now on
		}
		if len(q.keys) == 0 && q.keysPeak >= keysShrinkAt {
			// Go maps never shrink: once a burst (a million devices
			// coming online) has drained, start a new one.
			q.keys, q.keysPeak = make(map[string]struct{}), 0
		}
	}
	q.inflN = 0
	q.mu.Unlock()
	clear(q.inflight) // release what the items reference
	q.inflight = q.inflight[:0]
	return nil
}

// sleep waits d or until ctx is done (false then).
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func inc(c *metrics.Counter) {
	if c != nil {
		c.Inc()
	}
}

func add(c *metrics.Counter, n int) {
	if c != nil && n > 0 {
		c.Add(n)
	}
}
