package writeback

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/backoff"
	"github.com/presence-dev/presence/internal/pgident"
	"github.com/presence-dev/presence/internal/ratelog"
	"github.com/presence-dev/presence/internal/ring"
)

// HistoryConfig configures the history writer.
type HistoryConfig struct {
	// Table receives every transition: (device_id text, status text,
	// changed_at timestamptz, cause text). Optionally schema-qualified.
	// Default "device_status_history".
	Table string
	// CreateTable creates Table and an index on (device_id, changed_at)
	// with CREATE ... IF NOT EXISTS on the first write. Default true.
	CreateTable bool
	// QueueCapacity is how many transitions wait for Postgres, at about
	// 32 bytes each plus the id (shared with the engine's copy): the
	// default 1,048,576 is ~32 MiB and holds a mass offline of a million
	// devices, or 17 minutes of outage at 1,000 transitions/s. When it is
	// full the oldest are dropped and counted (history_dropped_total and
	// a rate-limited log line). Larger: longer outages survive, more memory.
	QueueCapacity int
	// Interval between two writes; a write also starts once BatchSize
	// transitions wait. Shorter: fresher history, smaller COPYs.
	Interval time.Duration
	// BatchSize is the most rows per COPY (and per retry: a failed batch is
	// retried whole, while new transitions keep queueing).
	BatchSize int
	// MinBackoff and MaxBackoff bound the exponential backoff with jitter
	// between retries of a failed batch.
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// WriteTimeout bounds one COPY.
	WriteTimeout time.Duration
	// Logger: nil means slog.Default().
	Logger *slog.Logger
	// Metrics: nil means a new private set (see History.Metrics).
	Metrics *metrics.Set
}

// DefaultHistoryConfig returns the defaults documented on HistoryConfig.
func DefaultHistoryConfig() HistoryConfig {
	return HistoryConfig{
		Table:         "device_status_history",
		CreateTable:   true,
		QueueCapacity: 1 << 20,
		Interval:      time.Second,
		BatchSize:     20000,
		MinBackoff:    200 * time.Millisecond,
		MaxBackoff:    15 * time.Second,
		WriteTimeout:  30 * time.Second,
	}
}

// Validate reports the first invalid field, wrapping ErrInvalidConfig.
func (c HistoryConfig) Validate() error {
	switch _, err := pgident.ParseTable(c.Table); {
	case err != nil:
		return fmt.Errorf("%w: history: Table: %v", ErrInvalidConfig, err)
	case c.QueueCapacity <= 0:
		return fmt.Errorf("%w: history: QueueCapacity must be > 0, got %d", ErrInvalidConfig, c.QueueCapacity)
	case c.Interval <= 0:
		return fmt.Errorf("%w: history: Interval must be > 0, got %v", ErrInvalidConfig, c.Interval)
	case c.BatchSize <= 0:
		return fmt.Errorf("%w: history: BatchSize must be > 0, got %d", ErrInvalidConfig, c.BatchSize)
	case c.MinBackoff <= 0 || c.MaxBackoff < c.MinBackoff:
		return fmt.Errorf("%w: history: need 0 < MinBackoff <= MaxBackoff, got %v, %v", ErrInvalidConfig, c.MinBackoff, c.MaxBackoff)
	case c.WriteTimeout <= 0:
		return fmt.Errorf("%w: history: WriteTimeout must be > 0, got %v", ErrInvalidConfig, c.WriteTimeout)
	}
	return nil
}

// histRec is one queued transition, compact: the history needs neither
// From nor Coalesced.
type histRec struct {
	id    string
	at    int64 // Unix microseconds
	to    engine.Status
	cause engine.Cause
}

// History writes every transition to the history table. It implements
// engine.Sink: HandleTransitions copies the batch into a bounded queue and
// returns at once; Run writes the queue with COPY. Unlike the state sinks
// nothing is coalesced here: the history is every change.
type History struct {
	pool  *pgxpool.Pool
	cfg   HistoryConfig
	table pgx.Identifier
	log   *slog.Logger
	lim   *ratelog.Limiter[struct{}] // one key: failures and drops share the budget

	mu        sync.Mutex          // guards the queue and closed
	queue     *ring.Ring[histRec] // grows by doubling up to QueueCapacity
	dropped   uint64              // since the last log line
	closed    bool
	inflightN int           // len(inflight), readable under mu for Queued
	kick      chan struct{} // 1-buffered: BatchSize transitions wait

	writeMu  sync.Mutex // serializes writes; guards inflight, schemaOK
	inflight []histRec
	schemaOK bool

	m         historyMetrics
	stateMu   sync.Mutex
	started   bool
	stop      chan struct{}
	runDone   chan struct{}
	closeOnce sync.Once
	closeErr  error
}

type historyMetrics struct {
	set     *metrics.Set
	rows    *metrics.Counter
	dropped *metrics.Counter
	retries *metrics.Counter
	errors  *metrics.Counter
	dur     *metrics.Histogram
}

var _ engine.Sink = (*History)(nil)

// NewHistory builds a history writer. It does no I/O; Run starts writing.
func NewHistory(pool *pgxpool.Pool, cfg HistoryConfig) (*History, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if pool == nil {
		return nil, fmt.Errorf("%w: history: nil pool", ErrInvalidConfig)
	}
	table, _ := pgident.ParseTable(cfg.Table)
	h := &History{
		pool:    pool,
		cfg:     cfg,
		table:   table,
		log:     cfg.Logger,
		lim:     ratelog.New[struct{}](errLogEvery, nil),
		kick:    make(chan struct{}, 1),
		queue:   ring.New[histRec](1024, cfg.QueueCapacity),
		stop:    make(chan struct{}),
		runDone: make(chan struct{}),
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	h.log = h.log.With(logKeySink, "history")
	set := cfg.Metrics
	if set == nil {
		set = metrics.NewSet()
	}
	const label = `{sink="history"}`
	h.m = historyMetrics{
		set:     set,
		rows:    set.NewCounter("presence_writeback_rows_written_total" + label),
		dropped: set.NewCounter("presence_writeback_history_dropped_total"),
		retries: set.NewCounter("presence_writeback_retries_total" + label),
		errors:  set.NewCounter("presence_writeback_errors_total" + label),
		dur:     set.NewHistogram("presence_writeback_flush_duration_seconds" + label),
	}
	set.NewGauge("presence_writeback_history_queued", func() float64 { return float64(h.Queued()) })
	return h, nil
}

// Metrics returns the set holding this writer's metrics.
func (h *History) Metrics() *metrics.Set { return h.m.set }

// HandleTransitions queues a copy of batch. It never blocks on Postgres:
// when the queue is full the oldest queued transitions are dropped and
// counted. After Close every transition is dropped and counted.
func (h *History) HandleTransitions(batch []engine.Transition) {
	h.mu.Lock()
	var dropped int
	for i := range batch {
		t := &batch[i]
		if h.closed {
			dropped++
			continue
		}
		if h.queue.Push(histRec{id: t.ID, at: t.At.UnixMicro(), to: t.To, cause: t.Cause}) {
			dropped++
		}
	}
	h.dropped += uint64(dropped)
	full := h.queue.Len() >= h.cfg.BatchSize
	h.mu.Unlock()
	if dropped > 0 {
		h.m.dropped.Add(dropped)
	}
	if full {
		select {
		case h.kick <- struct{}{}:
		default:
		}
	}
}

// Queued is the number of transitions waiting (queued plus the batch being
// written).
func (h *History) Queued() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.queue.Len() + h.inflightN
}

// pop moves up to BatchSize queued transitions to inflight.
func (h *History) pop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.inflight = h.queue.PopTo(h.inflight, h.cfg.BatchSize-len(h.inflight))
	h.inflightN = len(h.inflight)
}

// Run writes queued transitions every Interval (or when BatchSize wait)
// until ctx is done or Close is called, retrying failed batches with
// backoff. It returns nil then, or ErrClosed if already closed.
func (h *History) Run(ctx context.Context) error {
	h.stateMu.Lock()
	if h.closeCalled() {
		h.stateMu.Unlock()
		return ErrClosed
	}
	if h.started {
		h.stateMu.Unlock()
		return fmt.Errorf("writeback: history: Run called twice")
	}
	h.started = true
	h.stateMu.Unlock()
	defer close(h.runDone)

	// Close does not cancel a write in flight (it waits for it, within
	// its own deadline): a canceled COPY may have been applied anyway,
	// and writing it again would duplicate history rows.

	timer := time.NewTimer(h.cfg.Interval)
	defer timer.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-h.stop:
			return nil
		case <-timer.C:
		case <-h.kick:
			if failures > 0 {
				continue // backing off; the timer fires the retry
			}
		}
		err := h.Flush(ctx)
		if err == nil {
			if failures > 0 {
				h.log.Info("writeback: history store recovered", logKeyAttempt, failures+1)
			}
			h.logDrops()
			failures = 0
			timer.Reset(h.cfg.Interval)
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		failures++
		h.m.retries.Inc()
		d := backoff.Delay(h.cfg.MinBackoff, h.cfg.MaxBackoff, failures)
		timer.Reset(d)
		h.logFailure(err, failures, d)
	}
}

func (h *History) logFailure(err error, attempt int, d time.Duration) {
	ok, n := h.lim.Allow(struct{}{})
	if !ok {
		return
	}
	h.mu.Lock()
	dropped := h.dropped
	h.dropped = 0
	h.mu.Unlock()
	h.log.Warn("writeback: history write failed, transitions stay queued",
		logKeyErr, err, logKeyAttempt, attempt, logKeyBackoff, d,
		logKeyPending, h.Queued(), logKeyDropped, dropped, logKeySuppressed, n)
}

// logDrops reports drops that happened while writes succeeded (Postgres
// up but slower than the transition rate), rate-limited.
func (h *History) logDrops() {
	h.mu.Lock()
	dropped := h.dropped
	h.mu.Unlock()
	if dropped == 0 {
		return
	}
	if ok, n := h.lim.Allow(struct{}{}); ok {
		h.mu.Lock()
		dropped, h.dropped = h.dropped, 0
		h.mu.Unlock()
		h.log.Warn("writeback: history queue full, oldest transitions dropped",
			logKeyDropped, dropped, logKeyPending, h.Queued(), logKeySuppressed, n)
	}
}

// Flush writes every queued transition now, batch by batch, and returns
// the first error (the failed batch stays first in line).
func (h *History) Flush(ctx context.Context) error {
	h.writeMu.Lock()
	defer h.writeMu.Unlock()
	for {
		h.pop()
		if len(h.inflight) == 0 {
			return nil
		}
		start := time.Now()
		err := h.write(ctx)
		h.m.dur.UpdateDuration(start)
		if err != nil {
			h.m.errors.Inc()
			return err
		}
		h.m.rows.Add(len(h.inflight))
		clear(h.inflight)
		h.inflight = h.inflight[:0]
		h.mu.Lock()
		h.inflightN = 0
		h.mu.Unlock()
	}
}

var historyColumns = []string{"device_id", "status", "changed_at", "cause"}

func (h *History) write(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.WriteTimeout)
	defer cancel()
	if h.cfg.CreateTable && !h.schemaOK {
		if err := h.createSchema(ctx); err != nil {
			return err
		}
		h.schemaOK = true
	}
	vals := make([]any, 4)
	recs := h.inflight
	_, err := h.pool.CopyFrom(ctx, h.table, historyColumns, pgx.CopyFromSlice(len(recs), func(i int) ([]any, error) {
		r := &recs[i]
		vals[0], vals[1], vals[2], vals[3] = r.id, r.to.String(), time.UnixMicro(r.at).UTC(), r.cause.String()
		return vals, nil
	}))
	if err != nil {
		h.schemaOK = false
		return fmt.Errorf("history copy %d rows: %w", len(recs), err)
	}
	return nil
}

func (h *History) createSchema(ctx context.Context) error {
	tbl := h.table.Sanitize()
	idx := pgx.Identifier{h.table[len(h.table)-1] + "_device_changed_idx"}.Sanitize()
	_, err := h.pool.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+tbl+
		" (device_id text NOT NULL, status text NOT NULL, changed_at timestamptz NOT NULL, cause text NOT NULL)")
	if err != nil {
		return fmt.Errorf("history create table: %w", err)
	}
	if _, err := h.pool.Exec(ctx, "CREATE INDEX IF NOT EXISTS "+idx+" ON "+tbl+" (device_id, changed_at)"); err != nil {
		return fmt.Errorf("history create index: %w", err)
	}
	return nil
}

func (h *History) closeCalled() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.closed
}

// Close stops Run, stops accepting transitions (later ones are dropped and
// counted), and writes what is queued, retrying until ctx is done. It
// returns an *UnflushedError with the count of transitions not written.
// Idempotent.
func (h *History) Close(ctx context.Context) error {
	h.closeOnce.Do(func() {
		h.stateMu.Lock()
		h.mu.Lock()
		h.closed = true
		h.mu.Unlock()
		started := h.started
		h.stateMu.Unlock()
		close(h.stop)
		if started {
			select {
			case <-h.runDone:
			case <-ctx.Done():
			}
		}
		h.closeErr = h.drainAll(ctx)
	})
	return h.closeErr
}

func (h *History) drainAll(ctx context.Context) error {
	var err error
	for attempt := 1; ; attempt++ {
		if err = ctx.Err(); err != nil {
			break
		}
		if err = h.Flush(ctx); err == nil {
			break
		}
		h.m.retries.Inc()
		d := backoff.Delay(h.cfg.MinBackoff, h.cfg.MaxBackoff, attempt)
		h.logFailure(err, attempt, d)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
	h.mu.Lock()
	dropped := h.dropped
	h.mu.Unlock()
	pending := h.Queued()
	if pending == 0 {
		if dropped > 0 {
			h.log.Warn("writeback: history closed; transitions were dropped", logKeyDropped, dropped)
		}
		return nil
	}
	h.log.Error("writeback: history closed with transitions not written",
		logKeyPending, pending, logKeyDropped, dropped, logKeyErr, err)
	return &UnflushedError{Sink: "history", Pending: pending, Err: err}
}
