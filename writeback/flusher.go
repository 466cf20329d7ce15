package writeback

import (
	"context"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/backoff"
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

// flushAtPoll is how often Run checks the dirty count against FlushAt.
const flushAtPoll = 25 * time.Millisecond

// writeResult counts what one batch write did, for metrics.
type writeResult struct {
	units   int // Redis keys or Postgres rows written
	skipped int // devices skipped as unwritable (bad id, unknown status)
}

// batchWriter is one backend's write path; flusher drives it. A batch
// write is all or nothing from the flusher's point of view: on error every
// device of the batch is marked dirty again. Writes are idempotent (SET,
// guarded UPDATE), so rewriting a partially applied batch is harmless.
type batchWriter interface {
	writeBatch(ctx context.Context, states []engine.DeviceState) (writeResult, error)
}

// flusher is the write-behind loop shared by the state sinks: it drains the
// Source in batches, writes them, and on failure puts the devices back into
// the Source and backs off. It holds no device state of its own between
// flushes, so its memory does not grow while a store is down.
type flusher struct {
	name string
	src  Source
	cfg  FlushConfig
	w    batchWriter
	log  *slog.Logger
	lim  *ratelog.Limiter[struct{}] // one key: the retry loop's warnings
	seed maphash.Seed               // routes devices to workers
	m    flushMetrics

	mu    sync.Mutex // serializes flushes (Run, Flush, Close); guards bufs
	bufs  [][]engine.DeviceState
	idsMu sync.Mutex // guards ids (workers mark failed batches dirty)
	ids   []string

	stateMu sync.Mutex
	started bool
	closed  bool
	stop    chan struct{} // closed by Close: Run returns
	runDone chan struct{} // closed when Run returns

	closeOnce sync.Once
	closeErr  error
}

type flushMetrics struct {
	set      *metrics.Set
	duration *metrics.Histogram
	devices  *metrics.Counter
	units    *metrics.Counter
	skipped  *metrics.Counter
	retries  *metrics.Counter
	errors   *metrics.Counter
}

func newFlusher(name, unit string, src Source, cfg FlushConfig, w batchWriter) *flusher {
	f := &flusher{
		name:    name,
		src:     src,
		cfg:     cfg,
		w:       w,
		log:     cfg.Logger,
		lim:     ratelog.New[struct{}](errLogEvery, nil),
		bufs:    make([][]engine.DeviceState, 1),
		seed:    maphash.MakeSeed(),
		stop:    make(chan struct{}),
		runDone: make(chan struct{}),
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
	}
	set.NewGauge("presence_writeback_dirty_devices"+label, func() float64 { return float64(src.Len()) })
	return f
}

// run is the flush loop; see Redis.Run.
func (f *flusher) run(ctx context.Context) error {
	f.stateMu.Lock()
	if f.closed {
		f.stateMu.Unlock()
		return ErrClosed
	}
	if f.started {
		f.stateMu.Unlock()
		return fmt.Errorf("writeback: %s: Run called twice", f.name)
	}
	f.started = true
	f.stateMu.Unlock()
	defer close(f.runDone)

	// Close does not cancel a write in flight (it waits for it, within
	// its own deadline): a canceled COPY may have been applied anyway,
	// and writing it again would duplicate history rows.

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
			return nil
		case <-f.stop:
			return nil
		case <-ticker.C:
		}
		now := time.Now()
		if now.Before(next) {
			continue
		}
		if failures == 0 && now.Sub(last) < f.cfg.Interval && (f.cfg.FlushAt == 0 || f.src.Len() < f.cfg.FlushAt) {
			continue
		}
		last = now
		if failures > 0 {
			f.m.retries.Inc()
		}
		err := f.flush(ctx)
		if err == nil {
			if failures > 0 {
				f.log.Info("writeback: store recovered", logKeyAttempt, failures+1)
			}
			failures = 0
			continue
		}
		if ctx.Err() != nil {
			return nil
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

// flush writes every device that is dirty now and returns the first
// error; the devices of failed batches are dirty again.
//
// With Concurrency > 1 the drained devices are routed to the workers by a
// hash of their id, each worker writing its batches in order on its own
// connection. A device is thus never in flight on two connections at once,
// so a later state can never be overtaken by an earlier one (Redis has no
// last_seen guard), and the store is never idle between batches.
func (f *flusher) flush(ctx context.Context) error {
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

	n := f.cfg.Concurrency
	free := make(chan []engine.DeviceState, 3*n) // batch buffers: bounds memory
	for range 3 * n {
		free <- make([]engine.DeviceState, 0, f.cfg.BatchSize)
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
func (f *flusher) writeOne(ctx context.Context, batch []engine.DeviceState) error {
	wctx, cancel := context.WithTimeout(ctx, f.cfg.WriteTimeout)
	res, err := f.w.writeBatch(wctx, batch)
	cancel()
	if err != nil {
		f.m.errors.Inc()
		f.markDirty(batch)
		return err
	}
	f.m.devices.Add(len(batch))
	f.m.units.Add(res.units)
	if res.skipped > 0 {
		f.m.skipped.Add(res.skipped)
	}
	return nil
}

func (f *flusher) markDirty(states []engine.DeviceState) {
	f.idsMu.Lock()
	defer f.idsMu.Unlock()
	f.ids = f.ids[:0]
	for i := range states {
		f.ids = append(f.ids, states[i].ID)
	}
	f.src.MarkDirty(f.ids...)
	clear(f.ids) // do not pin id strings
}

// close stops Run, then flushes until nothing is dirty, the store keeps
// failing past ctx's deadline, or ctx is done. Idempotent: later calls
// return the first call's result.
func (f *flusher) close(ctx context.Context) error {
	f.closeOnce.Do(func() {
		f.stateMu.Lock()
		f.closed = true
		started := f.started
		f.stateMu.Unlock()
		close(f.stop)
		if started {
			select {
			case <-f.runDone:
			case <-ctx.Done():
			}
		}
		f.closeErr = f.drainAll(ctx)
	})
	return f.closeErr
}

func (f *flusher) drainAll(ctx context.Context) error {
	var err error
	for attempt := 1; ; attempt++ {
		if err = ctx.Err(); err != nil {
			break
		}
		if err = f.flush(ctx); err == nil {
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
