package postgres

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
	"github.com/presence-dev/presence/writeback"
	"github.com/presence-dev/presence/writeback/writebacktest"
)

type historyRow struct {
	ID, Status, Cause string
	At                time.Time
}

func newTestHistory(t *testing.T, pool *pgxpool.Pool, mod func(*HistoryConfig)) (*History, string) {
	t.Helper()
	cfg := DefaultHistoryConfig()
	cfg.Table = testenv.Name(t)
	cfg.Interval = 20 * time.Millisecond
	cfg.MinBackoff = 10 * time.Millisecond
	cfg.MaxBackoff = 100 * time.Millisecond
	cfg.WriteTimeout = 2 * time.Second
	cfg.Logger = testenv.Logger(t)
	if mod != nil {
		mod(&cfg)
	}
	direct := testenv.Pool(t, "")
	t.Cleanup(func() { testenv.DropTable(t, direct, cfg.Table) })
	h, err := NewHistory(pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return h, cfg.Table
}

func readHistory(t *testing.T, table string) []historyRow {
	t.Helper()
	pool := testenv.Pool(t, "")
	rows, err := pool.Query(context.Background(), "SELECT device_id, status, cause, changed_at FROM "+table+" ORDER BY changed_at, device_id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []historyRow
	for rows.Next() {
		var r historyRow
		if err := rows.Scan(&r.ID, &r.Status, &r.Cause, &r.At); err != nil {
			t.Fatal(err)
		}
		r.At = r.At.UTC()
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func transition(id string, to engine.Status, at time.Time, c engine.Cause) engine.Transition {
	return engine.Transition{ID: id, From: engine.StatusUnknown, To: to, At: at, Cause: c}
}

func TestHistoryWritesEveryTransition(t *testing.T) {
	h, table := newTestHistory(t, testenv.Pool(t, ""), nil)
	ctx := context.Background()
	batch := []engine.Transition{
		transition("a", engine.StatusOnline, writebacktest.T0, engine.CauseTelemetry),
		transition("a", engine.StatusOffline, writebacktest.T0.Add(time.Minute), engine.CauseTimeout),
		transition("b", engine.StatusOffline, writebacktest.T0.Add(2*time.Minute), engine.CauseLastWill),
	}
	h.HandleTransitions(batch)
	// The engine reuses the slice: the writer must have copied it.
	batch[0].ID, batch[1].To = "mutated", engine.StatusOnline
	h.HandleTransitions([]engine.Transition{transition("a", engine.StatusOnline, writebacktest.T0.Add(3*time.Minute), engine.CauseRestart)})
	if err := h.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got := readHistory(t, table)
	want := []historyRow{
		{"a", "online", "telemetry", writebacktest.T0.Truncate(time.Microsecond)},
		{"a", "offline", "timeout", writebacktest.T0.Add(time.Minute).Truncate(time.Microsecond)},
		{"b", "offline", "last_will", writebacktest.T0.Add(2 * time.Minute).Truncate(time.Microsecond)},
		{"a", "online", "restart", writebacktest.T0.Add(3 * time.Minute).Truncate(time.Microsecond)},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d rows %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("row %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if n := h.Metrics().GetOrCreateCounter(`presence_writeback_rows_written_total{sink="history"}`).Get(); n != 4 {
		t.Fatalf("rows_written_total = %d, want 4", n)
	}
	// The index exists.
	var idx int
	if err := testenv.Pool(t, "").QueryRow(ctx, "SELECT count(*) FROM pg_indexes WHERE tablename = $1", table).Scan(&idx); err != nil || idx != 1 {
		t.Fatalf("indexes = %d, %v; want 1", idx, err)
	}
}

func TestHistoryQueueDropsOldest(t *testing.T) {
	h, table := newTestHistory(t, testenv.Pool(t, ""), func(c *HistoryConfig) { c.QueueCapacity = 10 })
	for i := range 25 {
		h.HandleTransitions([]engine.Transition{transition("d", engine.StatusOnline, writebacktest.T0.Add(time.Duration(i)*time.Second), engine.CauseTelemetry)})
	}
	if q := h.Queued(); q != 10 {
		t.Fatalf("Queued = %d, want 10", q)
	}
	if n := h.Metrics().GetOrCreateCounter("presence_writeback_history_dropped_total").Get(); n != 15 {
		t.Fatalf("dropped_total = %d, want 15", n)
	}
	if err := h.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := readHistory(t, table)
	if len(got) != 10 || !got[0].At.Equal(writebacktest.T0.Add(15*time.Second).Truncate(time.Microsecond)) {
		t.Fatalf("kept %d rows starting %v; want the newest 10", len(got), got)
	}
}

func TestHistoryRunAndClose(t *testing.T) {
	h, table := newTestHistory(t, testenv.Pool(t, ""), func(c *HistoryConfig) { c.BatchSize = 7 })
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		h.HandleTransitions([]engine.Transition{transition("x", engine.Status(1+i%2), writebacktest.T0.Add(time.Duration(i)*time.Millisecond), engine.CauseTelemetry)})
	}
	pool := testenv.Pool(t, "")
	testenv.Eventually(t, 5*time.Second, func() error {
		var n int
		if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM "+table).Scan(&n); err != nil {
			return err // not created yet
		}
		if n < 50 {
			return errNotYet
		}
		return nil
	})
	for i := 100; i < 120; i++ {
		h.HandleTransitions([]engine.Transition{transition("x", engine.Status(1+i%2), writebacktest.T0.Add(time.Duration(i)*time.Millisecond), engine.CauseTelemetry)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(readHistory(t, table)); n != 120 {
		t.Fatalf("rows = %d, want 120", n)
	}
	// After Close: dropped and counted, Close idempotent, Start refused.
	h.HandleTransitions([]engine.Transition{transition("late", engine.StatusOnline, writebacktest.T0, engine.CauseTelemetry)})
	if n := h.Metrics().GetOrCreateCounter("presence_writeback_history_dropped_total").Get(); n != 1 {
		t.Fatalf("dropped after close = %d, want 1", n)
	}
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Start(ctx); !errors.Is(err, writeback.ErrClosed) {
		t.Fatalf("Start after Close = %v", err)
	}
}

// TestHistoryNeverBlocks: with Postgres unreachable HandleTransitions
// returns at once, the queue stays at its capacity, and Close reports what
// it could not write.
func TestHistoryNeverBlocks(t *testing.T) {
	px := testenv.NewProxy(t, pgAddr(t))
	px.Cut()
	h, _ := newTestHistory(t, testenv.Pool(t, px.Addr()), func(c *HistoryConfig) { c.QueueCapacity = 1000 })
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	batch := make([]engine.Transition, 100)
	for i := range batch {
		batch[i] = transition("z", engine.StatusOnline, writebacktest.T0, engine.CauseTelemetry)
	}
	start := time.Now()
	for range 1000 {
		h.HandleTransitions(batch)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("100k transitions took %v with the store down", d)
	}
	if q := h.Queued(); q > 1000+h.cfg.BatchSize {
		t.Fatalf("Queued = %d, capacity 1000", q)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var ue *writeback.UnflushedError
	if err := h.Close(ctx); !errors.As(err, &ue) || ue.Pending == 0 {
		t.Fatalf("Close = %v, want an UnflushedError", err)
	}
}

func TestHistoryConfigValidate(t *testing.T) {
	if err := DefaultHistoryConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*HistoryConfig){
		"table":    func(c *HistoryConfig) { c.Table = "" },
		"capacity": func(c *HistoryConfig) { c.QueueCapacity = 0 },
		"interval": func(c *HistoryConfig) { c.Interval = 0 },
		"batch":    func(c *HistoryConfig) { c.BatchSize = -1 },
		"backoff":  func(c *HistoryConfig) { c.MinBackoff = 0 },
		"timeout":  func(c *HistoryConfig) { c.WriteTimeout = 0 },
	} {
		c := DefaultHistoryConfig()
		mod(&c)
		if err := c.Validate(); !errors.Is(err, writeback.ErrInvalidConfig) {
			t.Errorf("%s: Validate = %v", name, err)
		}
	}
}

// TestHistoryOutage: while Postgres is cut off, transitions queue up to
// the capacity and the oldest are dropped and counted; after it returns
// every transition is either written or counted as dropped.
func TestHistoryOutage(t *testing.T) {
	px := testenv.NewProxy(t, pgAddr(t))
	const capacity = 2000
	h, table := newTestHistory(t, testenv.Pool(t, px.Addr()), func(c *HistoryConfig) {
		c.QueueCapacity = capacity
		c.BatchSize = 500
	})
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	send := func(n int, from int) {
		for i := range n {
			h.HandleTransitions([]engine.Transition{transition("d", engine.StatusOnline, writebacktest.T0.Add(time.Duration(from+i)*time.Microsecond), engine.CauseTelemetry)})
		}
	}
	send(1000, 0)
	testenv.Eventually(t, 5*time.Second, func() error {
		if h.Queued() > 0 {
			return errNotYet
		}
		return nil
	})
	px.Cut()
	send(5000, 1000)
	if q := h.Queued(); q > capacity+500 {
		t.Fatalf("Queued = %d during the outage, capacity %d (+ one batch in flight)", q, capacity)
	}
	time.Sleep(200 * time.Millisecond) // a few failed retries
	px.Restore()
	testenv.Eventually(t, 10*time.Second, func() error {
		if h.Queued() > 0 {
			return errNotYet
		}
		return nil
	})
	dropped := h.Metrics().GetOrCreateCounter("presence_writeback_history_dropped_total").Get()
	written := len(readHistory(t, table))
	if written+int(dropped) != 6000 || dropped == 0 {
		t.Fatalf("written %d + dropped %d != 6000 sent (or nothing dropped)", written, dropped)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

var errNotYet = errors.New("not yet")

// A decommission (a transition to unknown) is no status: nothing is
// queued for it, and the device's history stays as it was.
func TestHistorySkipsRemovals(t *testing.T) {
	h, _ := newTestHistory(t, testenv.Pool(t, ""), nil)
	h.HandleTransitions([]engine.Transition{
		transition("d", engine.StatusOnline, writebacktest.T0, engine.CauseTelemetry),
		{ID: "d", From: engine.StatusOnline, To: engine.StatusUnknown, At: writebacktest.T0.Add(time.Second), Cause: engine.CauseAPI},
	})
	if q := h.Queued(); q != 1 {
		t.Fatalf("Queued = %d, want 1 (the online row alone)", q)
	}
}
