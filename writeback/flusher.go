package writeback

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/backoff"
	"github.com/presence-dev/presence/internal/lifecycle"
	"github.com/presence-dev/presence/internal/ratelog"
	"github.com/presence-dev/presence/internal/wire"
)

// Constant log attribute keys (STYLE.md: constant keys).
const (
	logKeySink       = "sink"
	logKeyErr        = "err"
	logKeyPending    = "pending"
	logKeyAttempt    = "attempt"
	logKeyBackoff    = "backoff"
	logKeySuppressed = "suppressed"
	logKeyDropped    = "dropped"
)

// errLogEvery is the rate limit of error logs in retry loops: at most one
// line per sink per interval, carrying the number of suppressed ones.
const errLogEvery = 5 * time.Second

// flushAtPoll is how often the loop checks the dirty count against FlushAt.
const flushAtPoll = 25 * time.Millisecond

// WriteResult counts what one batch write did, for metrics.
type WriteResult struct {
	Units   int // Redis keys or Postgres rows written
	Skipped int // devices skipped as unwritable (bad id, unknown status)
}

// WriteFunc is one backend's write path; the Flusher drives it. A batch
// write is all or nothing from the Flusher's point of view: on error every
// device of the batch is marked dirty again. Writes must be idempotent
// (SET, a guarded UPDATE), so that rewriting a partially applied batch is
// harmless.
type WriteFunc func(ctx context.Context, states []engine.DeviceState) (WriteResult, error)

// Flusher is the write-behind loop every state sink runs on: it drains the
// Source in batches, writes them with a WriteFunc, and on failure puts
// the devices back into the Source and backs off. It holds no device state
// of its own between flushes, so its memory does not grow while a store is
// down.
type Flusher struct {
	name string
	src  Source
	cfg  FlushConfig
	w    WriteFunc
	log  *slog.Logger
	lim  *ratelog.Limiter[struct{}] // one key: the retry loop's warnings
	seed maphash.Seed               // routes devices to workers
	m    flushMetrics

	mu    sync.Mutex // serializes flushes (the loop, Flush, Close); guards bufs
	bufs  [][]engine.DeviceState
	idsMu sync.Mutex // guards ids (workers mark failed batches dirty)
	ids   []string

	run  lifecycle.Runner
	hold <-chan struct{} // the loop's first flush waits for it (Hold)

	yieldSince time.Time // when the loop began putting flushes off (Yield); the loop's own
}

type flushMetrics struct {
	set      *metrics.Set
	duration *metrics.Histogram
	devices  *metrics.Counter
	units    *metrics.Counter
	skipped  *metrics.Counter
	retries  *metrics.Counter
	errors   *metrics.Counter
	yields   *metrics.Counter
}

// NewFlusher returns the loop of the sink name (the metrics' sink label)
// over src, writing with w; unit names what w writes ("keys", "rows": the
// metric presence_writeback_{unit}_written_total). cfg must be valid
// (FlushConfig.Validate).
func NewFlusher(name, unit string, src Source, cfg FlushConfig, w WriteFunc) *Flusher {
	f := &Flusher{
		name: name,
		src:  src,
		cfg:  cfg,
		w:    w,
		log:  cfg.Logger,
		lim:  ratelog.New[struct{}](errLogEvery, nil),
		bufs: make([][]engine.DeviceState, 1),
		seed: maphash.MakeSeed(),
	}
	if f.log == nil {
		f.log = slog.Default()
	}
	f.log = f.log.With(logKeySink, name)
	set := cfg.Metrics
	if set == nil {
		set = metrics.NewSet()
	}
	label := "{" + wire.Label("sink", name) + "}"
	f.m = flushMetrics{
		set:      set,
		duration: set.NewHistogram("presence_writeback_flush_duration_seconds" + label),
		devices:  set.NewCounter("presence_writeback_devices_written_total" + label),
		units:    set.NewCounter("presence_writeback_" + unit + "_written_total" + label),
		skipped:  set.NewCounter("presence_writeback_skipped_total" + label),
		retries:  set.NewCounter("presence_writeback_retries_total" + label),
		errors:   set.NewCounter("presence_writeback_errors_total" + label),
		yields:   set.NewCounter("presence_writeback_yields_total" + label),
	}
	set.NewGauge("presence_writeback_dirty_devices"+label, func() float64 { return float64(src.Len()) })
	return f
}

// Metrics is the set holding the loop's metrics.
func (f *Flusher) Metrics() *metrics.Set { return f.m.set }

// Logger is the sink's logger (with its sink attribute).
func (f *Flusher) Logger() *slog.Logger { return f.log }

// Hold makes the loop wait, once started, until ch is closed before its
// first flush (Flush and Close do not wait). The daemon holds the Redis
// writes while restart recovery reads Redis, so that the rebuild, during
// which no message is heard, has Redis to itself. Call it before Start.
func (f *Flusher) Hold(ch <-chan struct{}) { f.hold = ch }

// Start starts the loop: a flush every Interval, earlier once FlushAt
// devices are dirty. Failed flushes are retried with backoff; the loop
// never stops on store errors. It fails after Close or when called twice.
func (f *Flusher) Start(ctx context.Context) error {
	if err := f.run.Start(ctx, f.loop); errors.Is(err, lifecycle.ErrClosed) {
		return ErrClosed
	} else if err != nil {
		return fmt.Errorf("writeback: %s: %w", f.name, err)
	}
	return nil
}

func (f *Flusher) loop(ctx context.Context) {
	// Close does not cancel a write in flight (it waits for it, within its
	// own deadline): a cancelled COPY may have been applied anyway. So the
	// flushes run under the Runner's work context, and ctx only stops the
	// loop between them.
	work := f.run.Work()
	if f.hold != nil {
		select {
		case <-f.hold:
		case <-ctx.Done():
			return
		}
	}

	// Wake up often enough to notice FlushAt (Len is cheap); otherwise
	// once per Interval.
	poll := f.cfg.Interval
	if f.cfg.FlushAt > 0 {
		poll = min(poll, flushAtPoll)
	}
	ticker := time.NewTicker(poll)
	defer ticker.Stop()

	var (
		last     = time.Now()
		next     time.Time // no attempt before this (backoff)
		failures int
	)
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		now := time.Now()
		if now.Before(next) {
			continue
		}
		if failures == 0 && now.Sub(last) < f.cfg.Interval && (f.cfg.FlushAt == 0 || f.src.Len() < f.cfg.FlushAt) {
			continue
		}
		if f.yielding(now) {
			continue
		}
		last = now
		if failures > 0 {
			f.m.retries.Inc()
		}
		err := f.Flush(work)
		if err == nil {
			if failures > 0 {
				f.log.Info("writeback: store recovered", logKeyAttempt, failures+1)
			}
			failures = 0
			continue
		}
		if ctx.Err() != nil {
			return
		}
		failures++
		d := backoff.Delay(f.cfg.MinBackoff, f.cfg.MaxBackoff, failures)
		next = now.Add(d)
		if ok, n := f.lim.AllowAt(struct{}{}, now); ok {
			f.log.Warn("writeback: flush failed, devices stay dirty in the engine",
				logKeyErr, err, logKeyAttempt, failures, logKeyBackoff, d,
				logKeyPending, f.src.Len(), logKeySuppressed, n)
		}
	}
}

// yielding reports whether the loop puts a flush off for more urgent
// writers (FlushConfig.Yield), at most MaxYield in a row.
func (f *Flusher) yielding(now time.Time) bool {
	if f.cfg.Yield == nil || f.cfg.MaxYield == 0 || !f.cfg.Yield() {
		f.yieldSince = time.Time{}
		return false
	}
	if f.yieldSince.IsZero() {
		f.yieldSince = now
		f.m.yields.Inc()
	}
	return now.Sub(f.yieldSince) < f.cfg.MaxYield
}

// Pending is the number of dirty devices waiting for this sink.
func (f *Flusher) Pending() int { return f.src.Len() }

// Flush writes every device that is dirty now and returns the first
// error; the devices of failed batches are dirty again. Safe to call
// concurrently with the loop (flushes are serialized).
//
// With Concurrency > 1 the drained devices are routed to the workers by a
// hash of their id, each worker writing its batches in order on its own
// connection. A device is thus never in flight on two connections at once,
// so a later state can never be overtaken by an earlier one (Redis has no
// last_seen guard), and the store is never idle between batches.
func (f *Flusher) Flush(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	start := time.Now()
	defer f.m.duration.UpdateDuration(start)

	// Bound the work of one flush to what is dirty now (plus one batch), so
	// a source that changes faster than we write cannot keep one flush
	// going forever.
	budget := f.src.Len() + f.cfg.BatchSize
	if f.cfg.Concurrency == 1 {
		for budget > 0 && ctx.Err() == nil {
			f.bufs[0] = f.src.Drain(f.bufs[0][:0], f.cfg.BatchSize)
			batch := f.bufs[0]
			if len(batch) == 0 {
				return nil
			}
			budget -= len(batch)
			err := f.writeOne(ctx, batch)
			clear(batch) // do not pin id strings until the next flush
			if err != nil {
				return err
			}
			if len(batch) < f.cfg.BatchSize {
				return nil
			}
		}
		return ctx.Err()
	}

	if budget == f.cfg.BatchSize {
		return nil // nothing dirty: no worker to start, nothing to allocate
	}
	// The batch buffers bound memory. They are made for this flush, no
	// larger than what is dirty, and left to the collector after it: kept,
	// a Postgres sink's would hold 10 MB (3 per worker of 20,000 states)
	// through a daemon's rest.
	n := f.cfg.Concurrency
	free := make(chan []engine.DeviceState, 3*n)
	for range 3 * n {
		free <- make([]engine.DeviceState, 0, min(f.cfg.BatchSize, budget-f.cfg.BatchSize)) // grown by append past it
	}
	work := make([]chan []engine.DeviceState, n)
	var (
		wg     sync.WaitGroup
		failed atomic.Bool
		errMu  sync.Mutex
		first  error
	)
	for i := range n {
		work[i] = make(chan []engine.DeviceState, 1)
		wg.Go(func() {
			for batch := range work[i] {
				if failed.Load() || ctx.Err() != nil {
					f.markDirty(batch) // not attempted: back to the source
				} else if err := f.writeOne(ctx, batch); err != nil {
					failed.Store(true)
					errMu.Lock()
					if first == nil {
						first = err
					}
					errMu.Unlock()
				}
				clear(batch)
				free <- batch[:0]
			}
		})
	}
	cur := make([][]engine.DeviceState, n)
	send := func(w int) {
		work[w] <- cur[w]
		cur[w] = nil
	}
	drained := f.bufs[0]
	for budget > 0 && !failed.Load() && ctx.Err() == nil {
		drained = f.src.Drain(drained[:0], f.cfg.BatchSize)
		if len(drained) == 0 {
			break
		}
		budget -= len(drained)
		for i := range drained {
			w := int(maphash.String(f.seed, drained[i].ID) % uint64(n))
			if cur[w] == nil {
				cur[w] = <-free
			}
			cur[w] = append(cur[w], drained[i])
			if len(cur[w]) == f.cfg.BatchSize {
				send(w)
			}
		}
		if len(drained) < f.cfg.BatchSize {
			break
		}
	}
	clear(drained)
	f.bufs[0] = drained[:0]
	for w := range n {
		if len(cur[w]) > 0 {
			send(w)
		}
		close(work[w])
	}
	wg.Wait()
	if first == nil {
		return ctx.Err()
	}
	return first
}

// writeOne writes one batch with its timeout and accounts for it; on error
// the batch's devices are dirty again.
func (f *Flusher) writeOne(ctx context.Context, batch []engine.DeviceState) error {
	wctx, cancel := context.WithTimeout(ctx, f.cfg.WriteTimeout)
	res, err := f.w(wctx, batch)
	cancel()
	if err != nil {
		f.m.errors.Inc()
		f.markDirty(batch)
		return err
	}
	f.m.devices.Add(len(batch))
	f.m.units.Add(res.Units)
	if res.Skipped > 0 {
		f.m.skipped.Add(res.Skipped)
	}
	return nil
}

func (f *Flusher) markDirty(states []engine.DeviceState) {
	f.idsMu.Lock()
	defer f.idsMu.Unlock()
	f.ids = f.ids[:0]
	for i := range states {
		f.ids = append(f.ids, states[i].ID)
	}
	f.src.MarkDirty(f.ids...)
	clear(f.ids) // do not pin id strings
}

// Close stops the loop, waits for it (a flush in flight is awaited within
// ctx), then flushes what is still dirty, retrying until nothing is, or
// ctx is done. It returns an *UnflushedError with the count if devices
// remain unwritten. Idempotent. Pass a ctx with a deadline: with the store
// down and no deadline Close retries forever.
func (f *Flusher) Close(ctx context.Context) error { return f.run.Close(ctx, f.drainAll) }

func (f *Flusher) drainAll(ctx context.Context) error {
	var err error
	for attempt := 1; ; attempt++ {
		if err = ctx.Err(); err != nil {
			break
		}
		if err = f.Flush(ctx); err == nil {
			return nil
		}
		f.m.retries.Inc()
		d := backoff.Delay(f.cfg.MinBackoff, f.cfg.MaxBackoff, attempt)
		if ok, n := f.lim.Allow(struct{}{}); ok {
			f.log.Warn("writeback: final flush failed, retrying until the close deadline",
				logKeyErr, err, logKeyAttempt, attempt, logKeyBackoff, d, logKeySuppressed, n)
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
	pending := f.src.Len()
	if pending == 0 {
		return nil
	}
	f.log.Error("writeback: closed with devices not written", logKeyPending, pending, logKeyErr, err)
	return &UnflushedError{Sink: f.name, Pending: pending, Err: err}
}
