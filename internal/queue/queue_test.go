package queue

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// sink records the batches it is sent; fail makes the next sends fail.
type sink struct {
	mu      sync.Mutex
	batches [][]int
	fail    atomic.Int32 // sends left to fail
	err     error        // returned while failing (default errDown)
	block   chan struct{}
}

var errDown = errors.New("store down")

func (s *sink) send(ctx context.Context, b []int) error {
	if s.block != nil {
		select {
		case <-s.block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if s.fail.Load() > 0 {
		s.fail.Add(-1)
		if s.err != nil {
			return s.err
		}
		return errDown
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.batches = append(s.batches, slices.Clone(b))
	return nil
}

func (s *sink) all() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []int
	for _, b := range s.batches {
		out = append(out, b...)
	}
	return out
}

func testConfig() (Config, *metrics.Set) {
	set := metrics.NewSet()
	return Config{
		Name: "test", Capacity: 100, Initial: 4, BatchSize: 10, Timeout: time.Second,
		MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler),
		Metrics: Metrics{
			Sent: set.NewCounter("sent"), Dropped: set.NewCounter("dropped"),
			Errors: set.NewCounter("errors"), Retries: set.NewCounter("retries"),
			Duration: set.NewHistogram("duration"),
		},
	}, set
}

func seq(from, to int) []int {
	var out []int
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// Items are sent in order, in batches of at most BatchSize, each once.
func TestSendsInOrderInBatches(t *testing.T) {
	cfg, _ := testConfig()
	s := &sink{}
	q := New(cfg, s.send)
	if err := q.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		q.Push(i)
	}
	eventually(t, "50 items", func() bool { return len(s.all()) == 50 })
	if err := q.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := s.all(); !slices.Equal(got, seq(0, 50)) {
		t.Fatalf("sent %v", got)
	}
	for _, b := range s.batches {
		if len(b) > cfg.BatchSize {
			t.Fatalf("batch of %d", len(b))
		}
	}
	if got := cfg.Metrics.Sent.Get(); got != 50 {
		t.Fatalf("sent_total %d", got)
	}
}

// A failed batch is retried exactly as it was, after a backoff, while new
// items queue behind it; nothing is lost or sent twice.
func TestRetriesTheSameBatch(t *testing.T) {
	cfg, _ := testConfig()
	s := &sink{}
	s.fail.Store(3)
	q := New(cfg, s.send)
	q.Start(context.Background())
	q.Push(seq(0, 5)...)
	eventually(t, "the failing sends", func() bool { return s.fail.Load() == 0 })
	q.Push(seq(5, 25)...)
	eventually(t, "25 items", func() bool { return len(s.all()) == 25 })
	q.Close(context.Background())
	if got := s.all(); !slices.Equal(got, seq(0, 25)) {
		t.Fatalf("sent %v", got)
	}
	if first := s.batches[0]; !slices.Equal(first, seq(0, 5)) {
		t.Fatalf("retried batch %v, want the 5 first items as they were", first)
	}
	if cfg.Metrics.Errors.Get() != 3 || cfg.Metrics.Retries.Get() < 3 {
		t.Fatalf("errors %d retries %d", cfg.Metrics.Errors.Get(), cfg.Metrics.Retries.Get())
	}
}

// A full queue drops its oldest items and counts them; Push never waits.
func TestFullDropsOldest(t *testing.T) {
	cfg, _ := testConfig()
	s := &sink{}
	q := New(cfg, s.send) // not started: nothing drains it
	if dropped := q.Push(seq(0, 130)...); dropped != 30 {
		t.Fatalf("dropped %d, want 30", dropped)
	}
	if q.Len() != 100 || cfg.Metrics.Dropped.Get() != 30 {
		t.Fatalf("len %d dropped %d", q.Len(), cfg.Metrics.Dropped.Get())
	}
	if err := q.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := s.all(); !slices.Equal(got, seq(30, 130)) {
		t.Fatalf("sent %v, want the newest 100", got)
	}
}

// A permanent error drops the batch (counted) and moves on.
func TestPermanentErrorDrops(t *testing.T) {
	cfg, _ := testConfig()
	s := &sink{err: Permanent(errors.New("410 gone"))}
	s.fail.Store(1)
	q := New(cfg, s.send)
	q.Push(seq(0, 3)...)
	if err := q.Flush(context.Background()); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	q.Push(7)
	q.Close(context.Background())
	if got := s.all(); !slices.Equal(got, []int{7}) || cfg.Metrics.Dropped.Get() != 3 {
		t.Fatalf("sent %v dropped %d", got, cfg.Metrics.Dropped.Get())
	}
}

// Flush sends what waits now, whoever else sends; on failure the batch
// stays first in line.
func TestFlush(t *testing.T) {
	cfg, _ := testConfig()
	cfg.Interval = time.Hour // the worker would not send on its own
	s := &sink{}
	q := New(cfg, s.send)
	q.Start(context.Background())
	defer q.Close(context.Background())
	q.Push(1, 2, 3)
	s.fail.Store(1)
	if err := q.Flush(context.Background()); !errors.Is(err, errDown) {
		t.Fatalf("Flush = %v, want the store's error", err)
	}
	if q.Len() != 3 {
		t.Fatalf("len %d after a failed flush", q.Len())
	}
	if err := q.Flush(context.Background()); err != nil || !slices.Equal(s.all(), []int{1, 2, 3}) || q.Len() != 0 {
		t.Fatalf("Flush = %v, sent %v, len %d", err, s.all(), q.Len())
	}
}

// With an Interval, a full batch is sent at once (the interval here is an
// hour), a partial one only at the next tick.
func TestIntervalAndFullBatch(t *testing.T) {
	cfg, _ := testConfig()
	cfg.Interval = time.Hour
	s := &sink{}
	q := New(cfg, s.send)
	q.Start(context.Background())
	defer q.Close(context.Background())
	q.Push(seq(0, 10)...) // one full batch
	eventually(t, "the full batch", func() bool { return len(s.all()) == 10 })
	q.Push(99)
	time.Sleep(50 * time.Millisecond)
	if n := len(s.all()); n != 10 {
		t.Fatalf("a partial batch was sent before the tick: %d items", n)
	}

	cfg.Interval = 20 * time.Millisecond
	s2 := &sink{}
	q2 := New(cfg, s2.send)
	q2.Start(context.Background())
	defer q2.Close(context.Background())
	q2.Push(1)
	eventually(t, "the partial batch at the tick", func() bool { return len(s2.all()) == 1 })
}

// Close sends what is left; with the store down it gives up at its ctx's
// end, reports the count and drops it; later pushes are dropped.
func TestCloseUnsent(t *testing.T) {
	cfg, _ := testConfig()
	s := &sink{}
	s.fail.Store(1 << 30)
	q := New(cfg, s.send)
	q.Start(context.Background())
	q.Push(seq(0, 15)...)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := q.Close(ctx)
	var ue *UnsentError
	if !errors.As(err, &ue) || ue.Unsent != 15 {
		t.Fatalf("Close = %v, want 15 unsent", err)
	}
	if again := q.Close(context.Background()); again != err {
		t.Fatalf("second Close = %v, want the first's %v", again, err)
	}
	if q.Push(1) != 1 || q.Len() != 0 || cfg.Metrics.Dropped.Get() != 16 {
		t.Fatalf("after close: len %d dropped %d", q.Len(), cfg.Metrics.Dropped.Get())
	}
}

// Close waits for a send in flight rather than cancelling it (a write
// cancelled after it was applied would be applied twice), unless its own
// ctx ends first.
func TestCloseAwaitsSendInFlight(t *testing.T) {
	cfg, _ := testConfig()
	s := &sink{block: make(chan struct{})}
	q := New(cfg, s.send)
	q.Start(context.Background())
	q.Push(1)
	time.Sleep(20 * time.Millisecond) // the worker is inside send
	done := make(chan error)
	go func() { done <- q.Close(context.Background()) }()
	select {
	case err := <-done:
		t.Fatalf("Close returned %v while a send was in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(s.block)
	if err := <-done; err != nil || !slices.Equal(s.all(), []int{1}) {
		t.Fatalf("Close = %v, sent %v", err, s.all())
	}
	if n := cfg.Metrics.Errors.Get(); n != 0 {
		t.Fatalf("%d sends failed: Close cancelled the send in flight", n)
	}
}

func TestStartTwiceAndAfterClose(t *testing.T) {
	cfg, _ := testConfig()
	q := New(cfg, (&sink{}).send)
	if err := q.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := q.Start(context.Background()); err == nil {
		t.Fatal("second Start succeeded")
	}
	q.Close(context.Background())
	q2 := New(cfg, (&sink{}).send)
	q2.Close(context.Background())
	if err := q2.Start(context.Background()); err == nil {
		t.Fatal("Start after Close succeeded")
	}
}

// Pushes from many goroutines while the worker sends (run with -race):
// every item is sent exactly once.
func TestConcurrentPush(t *testing.T) {
	cfg, _ := testConfig()
	cfg.Capacity = 1 << 20
	s := &sink{}
	q := New(cfg, s.send)
	q.Start(context.Background())
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 1000 {
				q.Push(g*1000 + i)
			}
		})
	}
	wg.Wait()
	q.Close(context.Background())
	got := s.all()
	slices.Sort(got)
	if !slices.Equal(got, seq(0, 4000)) {
		t.Fatalf("sent %d items, want 4000 distinct", len(got))
	}
}

// A held worker sends nothing until the hold is released; Flush does not
// wait for it.
func TestHold(t *testing.T) {
	cfg, _ := testConfig()
	s := &sink{}
	q := New(cfg, s.send)
	hold := make(chan struct{})
	q.Hold(hold)
	q.Start(context.Background())
	defer q.Close(context.Background())
	q.Push(1, 2)
	time.Sleep(50 * time.Millisecond)
	if got := s.all(); len(got) != 0 {
		t.Fatalf("sent %v while held", got)
	}
	if err := q.Flush(context.Background()); err != nil || !slices.Equal(s.all(), []int{1, 2}) {
		t.Fatalf("Flush while held: %v, sent %v", err, s.all())
	}
	close(hold)
	q.Push(3)
	eventually(t, "the send after the hold", func() bool { return len(s.all()) == 3 })
}

// In a coalescing queue, an item whose key waits (or is in flight) is not queued
// again; once sent, it is queued again; a dropped item's key is free.
func TestKeyCoalesces(t *testing.T) {
	cfg, _ := testConfig()
	cfg.Capacity = 3
	s := &sink{}
	q := NewCoalescing(cfg, func(v int) string { return strconv.Itoa(v % 10) }, s.send)
	q.Push(1, 11, 21, 2) // 11 and 21 coalesce into 1
	if q.Len() != 2 {
		t.Fatalf("len %d, want 2 (keys 1, 2)", q.Len())
	}
	q.Push(3, 4) // full: 1 is dropped, its key freed
	q.Push(5)    // 2 is dropped
	if d := cfg.Metrics.Dropped.Get(); d != 2 || q.Len() != 3 {
		t.Fatalf("dropped %d len %d", d, q.Len())
	}
	q.Push(31) // key 1 was freed by the drop: queued (dropping 3)
	if err := q.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := s.all(); !slices.Equal(got, []int{4, 5, 31}) {
		t.Fatalf("sent %v", got)
	}
	q.Push(14) // key 4 was sent: queued again
	if q.Len() != 1 {
		t.Fatalf("len %d after a sent key came back", q.Len())
	}
}

// A ring that a burst grew gives its memory back once drained, and keeps
// working; one within its usual size keeps its buffer.
func TestRingShrinksAfterBurst(t *testing.T) {
	r := newRing[int](16, 1<<20)
	for i := range 100_000 {
		r.Push(i)
	}
	if len(r.buf) < 100_000 {
		t.Fatalf("buffer of %d after 100,000 pushes", len(r.buf))
	}
	got := r.PopTo(nil, 60_000)
	if len(r.buf) == 0 || got[0] != 0 || got[59_999] != 59_999 {
		t.Fatal("released while not empty, or out of order")
	}
	got = r.PopTo(got[:0], 1<<20)
	if len(got) != 40_000 || got[0] != 60_000 || r.buf != nil {
		t.Fatalf("drained %d, buffer %d: want 40,000 and released", len(got), len(r.buf))
	}
	r.Push(7)
	if got := r.PopTo(nil, 1); len(got) != 1 || got[0] != 7 || len(r.buf) != 16 {
		t.Fatalf("after release: %v, buffer %d", got, len(r.buf))
	}
	for i := range 20 {
		r.Push(i)
	}
	r.PopTo(nil, 20)
	if len(r.buf) != 32 { // twice its initial size: kept
		t.Fatalf("buffer %d after a small drain, want 32 kept", len(r.buf))
	}
}

// A worker that yields (a more urgent writer is busy) puts its sends off,
// for at most MaxYield in a row, and sends when it stops yielding; Flush
// does not yield.
func TestYield(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg, set := testConfig()
		var busy atomic.Bool
		busy.Store(true)
		cfg.Yield, cfg.MaxYield = busy.Load, 10*time.Second
		cfg.Metrics.Yields = set.NewCounter("yields")
		s := &sink{}
		q := New(cfg, s.send)
		if err := q.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		defer q.Close(context.Background())
		check := func(after time.Duration, want int) {
			t.Helper()
			time.Sleep(after)
			synctest.Wait()
			if got := len(s.all()); got != want {
				t.Fatalf("sent %d, want %d", got, want)
			}
		}
		q.Push(seq(0, 3)...)
		check(5*time.Second, 0)
		busy.Store(false)
		check(100*time.Millisecond, 3)
		busy.Store(true)
		q.Push(seq(3, 5)...)
		check(9*time.Second, 3)
		check(2*time.Second, 5) // MaxYield passed: never starved
		q.Push(5)
		if err := q.Flush(context.Background()); err != nil || len(s.all()) != 6 {
			t.Fatalf("Flush = %v, sent %d", err, len(s.all()))
		}
		if got := cfg.Metrics.Yields.Get(); got != 2 {
			t.Fatalf("yields = %d, want 2", got)
		}
	})
}

// A yielding worker sends anyway once its queue is half full: yielding
// must not make it drop.
func TestYieldNotPastHalfFull(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg, _ := testConfig()
		cfg.Yield, cfg.MaxYield = func() bool { return true }, time.Hour
		s := &sink{}
		q := New(cfg, s.send)
		if err := q.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		defer q.Close(context.Background())
		q.Push(seq(0, cfg.Capacity/2-1)...)
		time.Sleep(time.Second)
		synctest.Wait()
		if got := len(s.all()); got != 0 {
			t.Fatalf("sent %d while yielding below half full", got)
		}
		q.Push(cfg.Capacity / 2)
		time.Sleep(time.Second)
		synctest.Wait()
		if got := len(s.all()); got != cfg.Capacity/2 {
			t.Fatalf("sent %d at half full, want %d", got, cfg.Capacity/2)
		}
	})
}
