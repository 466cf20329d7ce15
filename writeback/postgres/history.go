package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/lifecycle"
	"github.com/presence-dev/presence/internal/pgident"
	"github.com/presence-dev/presence/internal/queue"
	"github.com/presence-dev/presence/writeback"
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
	// a rate-limited log line). Larger: longer outages survive, more
	// memory.
	QueueCapacity int
	// Interval between two writes; a write also starts once BatchSize
	// transitions wait. Shorter: fresher history, smaller COPYs.
	Interval time.Duration
	// BatchSize is the most rows per COPY (and per retry: a failed batch is
	// retried whole, exactly as it was, while new transitions keep
	// queueing).
	BatchSize int
	// MinBackoff and MaxBackoff bound the exponential backoff with jitter
	// between retries of a failed batch.
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// WriteTimeout bounds one COPY.
	WriteTimeout time.Duration
	// Yield and MaxYield let more urgent writers go first, as
	// writeback.FlushConfig's do (the daemon: the Redis writers during a
	// burst); transitions wait in the queue meanwhile. Default MaxYield
	// 30 s; 0 never yields.
	Yield    func() bool
	MaxYield time.Duration
	// Logger: nil is slog.Default().
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
		MaxYield:      30 * time.Second,
	}
}

// Validate reports the first invalid field, wrapping
// writeback.ErrInvalidConfig.
func (c HistoryConfig) Validate() error {
	switch _, err := pgident.ParseTable(c.Table); {
	case err != nil:
		return fmt.Errorf("%w: history: Table (-history-table): %v", writeback.ErrInvalidConfig, err)
	case c.QueueCapacity <= 0:
		return fmt.Errorf("%w: history: QueueCapacity must be > 0, got %d", writeback.ErrInvalidConfig, c.QueueCapacity)
	case c.Interval <= 0:
		return fmt.Errorf("%w: history: Interval must be > 0, got %v", writeback.ErrInvalidConfig, c.Interval)
	case c.BatchSize <= 0:
		return fmt.Errorf("%w: history: BatchSize must be > 0, got %d", writeback.ErrInvalidConfig, c.BatchSize)
	case c.MinBackoff <= 0 || c.MaxBackoff < c.MinBackoff:
		return fmt.Errorf("%w: history: need 0 < MinBackoff <= MaxBackoff, got %v, %v", writeback.ErrInvalidConfig, c.MinBackoff, c.MaxBackoff)
	case c.WriteTimeout <= 0:
		return fmt.Errorf("%w: history: WriteTimeout must be > 0, got %v", writeback.ErrInvalidConfig, c.WriteTimeout)
	case c.MaxYield < 0:
		return fmt.Errorf("%w: history: MaxYield must be >= 0, got %v", writeback.ErrInvalidConfig, c.MaxYield)
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
// engine.Sink: HandleTransitions copies the batch into a bounded queue
// (internal/queue) and returns at once; the queue's worker writes it with
// COPY. Unlike the state sinks nothing is coalesced here: the history is
// every change.
type History struct {
	pool  *pgxpool.Pool
	cfg   HistoryConfig
	table pgx.Identifier
	q     *queue.Queue[histRec]
	set   *metrics.Set
	rows  *metrics.Counter

	schemaMu sync.Mutex // guards schemaOK
	schemaOK bool
}

var _ engine.Sink = (*History)(nil)

// NewHistory builds a history writer. It does no I/O; Start starts
// writing.
func NewHistory(pool *pgxpool.Pool, cfg HistoryConfig) (*History, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if pool == nil {
		return nil, fmt.Errorf("%w: history: nil pool", writeback.ErrInvalidConfig)
	}
	table, _ := pgident.ParseTable(cfg.Table)
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	set := cfg.Metrics
	if set == nil {
		set = metrics.NewSet()
	}
	const label = `{sink="history"}`
	h := &History{pool: pool, cfg: cfg, table: table, set: set,
		rows: set.NewCounter("presence_writeback_rows_written_total" + label)}
	h.q = queue.New(queue.Config{
		Name:       "writeback: history",
		Capacity:   cfg.QueueCapacity,
		Initial:    1024,
		BatchSize:  cfg.BatchSize,
		Interval:   cfg.Interval,
		MinBackoff: cfg.MinBackoff,
		MaxBackoff: cfg.MaxBackoff,
		Timeout:    cfg.WriteTimeout,
		Yield:      cfg.Yield,
		MaxYield:   cfg.MaxYield,
		Logger:     log.With("sink", "history"),
		Metrics: queue.Metrics{
			Dropped:  set.NewCounter("presence_writeback_history_dropped_total"),
			Retries:  set.NewCounter("presence_writeback_retries_total" + label),
			Errors:   set.NewCounter("presence_writeback_errors_total" + label),
			Duration: set.NewHistogram("presence_writeback_flush_duration_seconds" + label),
			Yields:   set.NewCounter("presence_writeback_yields_total" + label),
		},
	}, h.write)
	set.NewGauge("presence_writeback_history_queued", func() float64 { return float64(h.Queued()) })
	return h, nil
}

// Metrics returns the set holding this writer's metrics.
func (h *History) Metrics() *metrics.Set { return h.set }

// HandleTransitions queues a copy of batch. It never blocks on Postgres:
// when the queue is full the oldest queued transitions are dropped and
// counted. After Close every transition is dropped and counted.
func (h *History) HandleTransitions(batch []engine.Transition) {
	h.q.PushFunc(len(batch), func(i int) (histRec, bool) {
		t := &batch[i]
		// A decommission (to unknown) is no status: the history the
		// device had is kept as it is.
		return histRec{id: t.ID, at: t.At.UnixMicro(), to: t.To, cause: t.Cause}, t.To != engine.StatusUnknown
	})
}

// Queued is the number of transitions waiting (queued plus the batch being
// written).
func (h *History) Queued() int { return h.q.Len() }

// Start starts writing: every Interval, or as soon as BatchSize
// transitions wait; a failed batch is retried with backoff.
func (h *History) Start(ctx context.Context) error {
	if err := h.q.Start(ctx); errors.Is(err, lifecycle.ErrClosed) {
		return writeback.ErrClosed
	} else if err != nil {
		return fmt.Errorf("writeback: history: %w", err)
	}
	return nil
}

// Flush writes every queued transition now, batch by batch, and returns
// the first error (the failed batch stays first in line).
func (h *History) Flush(ctx context.Context) error { return h.q.Flush(ctx) }

// Close stops accepting transitions (later ones are dropped and counted)
// and writes what is queued, retrying until ctx is done. It returns an
// *writeback.UnflushedError with the count of transitions not written.
// Idempotent.
func (h *History) Close(ctx context.Context) error {
	err := h.q.Close(ctx)
	if ue := (*queue.UnsentError)(nil); errors.As(err, &ue) {
		return &writeback.UnflushedError{Sink: "history", Pending: ue.Unsent, Err: ue.Err}
	}
	return err
}

var historyColumns = []string{"device_id", "status", "changed_at", "cause"}

// write copies one batch (the queue's send).
func (h *History) write(ctx context.Context, recs []histRec) error {
	if err := h.ensureSchema(ctx); err != nil {
		return err
	}
	vals := make([]any, 4)
	_, err := h.pool.CopyFrom(ctx, h.table, historyColumns, pgx.CopyFromSlice(len(recs), func(i int) ([]any, error) {
		r := &recs[i]
		vals[0], vals[1], vals[2], vals[3] = r.id, r.to.String(), time.UnixMicro(r.at).UTC(), r.cause.String()
		return vals, nil
	}))
	if err != nil {
		h.schemaMu.Lock()
		h.schemaOK = false // the table may have been dropped: create it again
		h.schemaMu.Unlock()
		return fmt.Errorf("history copy %d rows: %w", len(recs), err)
	}
	h.rows.Add(len(recs))
	return nil
}

// ensureSchema creates the table and its index on the first write (and
// after a failed one), with CreateTable.
func (h *History) ensureSchema(ctx context.Context) error {
	h.schemaMu.Lock()
	defer h.schemaMu.Unlock()
	if !h.cfg.CreateTable || h.schemaOK {
		return nil
	}
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
	h.schemaOK = true
	return nil
}
