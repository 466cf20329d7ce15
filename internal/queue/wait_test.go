package queue

import (
	"context"
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

// waitConfig is testConfig with Full Wait and a Waited counter.
func waitConfig() Config {
	cfg, set := testConfig()
	cfg.Full = Wait
	cfg.Metrics.Waited = set.NewFloatCounter("waited")
	return cfg
}

// pushAsync runs PushWait(ctx, items...) in a goroutine; the channel gets
// its result.
func pushAsync(ctx context.Context, q *Queue[int], items []int) <-chan int {
	done := make(chan int, 1)
	go func() { done <- q.PushWait(ctx, items...) }()
	return done
}

// returned reports whether the push has returned, and its result.
func returned(done <-chan int) (int, bool) {
	select {
	case n := <-done:
		return n, true
	default:
		return 0, false
	}
}

// While the store takes its time, a Wait queue holds the pusher back
// instead of dropping: everything arrives, in order, and the wait is
// counted.
func TestWaitWhileStoreUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := waitConfig()
		cfg.Timeout = 10 * time.Second
		s := &sink{block: make(chan struct{})}
		q := New(cfg, s.send)
		if err := q.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		items := seq(0, 5*cfg.Capacity)
		done := pushAsync(context.Background(), q, items)
		synctest.Wait()
		if _, ok := returned(done); ok {
			t.Fatal("PushWait returned while the queue was full and the store up")
		}
		if got := q.Len(); got != cfg.Capacity+cfg.BatchSize {
			t.Fatalf("Len %d, want the capacity and the batch in flight", got)
		}
		time.Sleep(time.Second) // a slow store: the pusher waits that long
		close(s.block)
		if dropped := <-done; dropped != 0 {
			t.Fatalf("dropped %d", dropped)
		}
		if err := q.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := s.all(); !slices.Equal(got, items) {
			t.Fatalf("sent %d items, want %d in order", len(got), len(items))
		}
		if got := cfg.Metrics.Dropped.Get(); got != 0 {
			t.Fatalf("dropped_total %d", got)
		}
		if got := cfg.Metrics.Waited.Get(); got < 1 {
			t.Fatalf("waited %v s, want at least the 1 s the store took", got)
		}
	})
}

// Once sends have kept failing for DownAfter the store is down: a waiting
// push stops waiting and drops the oldest, counted; a push made meanwhile
// does not wait at all. A shorter failure (a blip, a destination still
// connecting) only slows the push. The first successful send makes pushes
// wait again.
func TestWaitDropsWhileStoreDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := waitConfig()
		cfg.Timeout = 100 * time.Millisecond
		cfg.DownAfter = 250 * time.Millisecond
		s := &sink{block: make(chan struct{})} // the send hangs until its timeout
		q := New(cfg, s.send)
		if err := q.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		done := pushAsync(context.Background(), q, seq(0, cfg.Capacity+cfg.BatchSize+50))
		synctest.Wait()
		if _, ok := returned(done); ok {
			t.Fatal("PushWait returned before the send failed")
		}
		time.Sleep(cfg.Timeout) // the first send times out: failing, not yet down
		synctest.Wait()
		if _, ok := returned(done); ok {
			t.Fatal("PushWait stopped waiting at the first failure, before DownAfter")
		}
		time.Sleep(2 * cfg.DownAfter) // more failed retries: down
		synctest.Wait()
		dropped, ok := returned(done)
		if !ok || dropped != 50 {
			t.Fatalf("after the failure: returned %v, dropped %d, want 50", ok, dropped)
		}
		if n := q.PushWait(context.Background(), seq(1000, 1010)...); n != 10 {
			t.Fatalf("a push while the store is down dropped %d, want 10 at once", n)
		}
		close(s.block) // the store is back: the retry goes through
		synctest.Wait()
		time.Sleep(10 * cfg.MaxBackoff)
		synctest.Wait()
		if q.Len() != 0 {
			t.Fatalf("Len %d after recovery", q.Len())
		}
		s.block = make(chan struct{}) // hang again, without a failure yet
		done = pushAsync(context.Background(), q, seq(2000, 2000+cfg.Capacity+cfg.BatchSize+1))
		synctest.Wait()
		if _, ok := returned(done); ok {
			t.Fatal("PushWait did not wait after the store recovered")
		}
		close(s.block)
		if n := <-done; n != 0 {
			t.Fatalf("dropped %d after recovery", n)
		}
		if err := q.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}

// A waiting push ends with its ctx, and with Close: neither shutdown nor
// the caller hangs on a full queue.
func TestWaitEndsWithCtxAndClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := waitConfig()
		cfg.Timeout = time.Hour
		s := &sink{block: make(chan struct{})}
		q := New(cfg, s.send)
		if err := q.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := pushAsync(ctx, q, seq(0, cfg.Capacity+cfg.BatchSize+5))
		synctest.Wait()
		cancel()
		if n := <-done; n != 5 {
			t.Fatalf("cancelled push dropped %d, want 5", n)
		}

		done = pushAsync(context.Background(), q, seq(0, 3))
		synctest.Wait()
		if _, ok := returned(done); ok {
			t.Fatal("PushWait returned while the queue was full")
		}
		closeCtx, stop := context.WithTimeout(context.Background(), time.Second)
		defer stop()
		closed := make(chan error, 1)
		go func() { closed <- q.Close(closeCtx) }()
		synctest.Wait() // Close waits for the send in flight, the push not at all
		if n, ok := returned(done); !ok || n != 3 {
			t.Fatalf("push during Close: returned %v, dropped %d, want 3 at once", ok, n)
		}
		if _, ok := (<-closed).(*UnsentError); !ok {
			t.Fatal("Close with the store hung: want an *UnsentError")
		}
	})
}

// Before Start nothing sends: PushWait drops like Push. Held (Hold), the
// queue is started and waits: the hold ends (a second Start changes
// nothing).
func TestWaitBeforeStartAndHeld(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := waitConfig()
		s := &sink{}
		q := New(cfg, s.send)
		if n := q.PushWait(context.Background(), seq(0, cfg.Capacity+7)...); n != 7 {
			t.Fatalf("before Start dropped %d, want 7", n)
		}
		hold := make(chan struct{})
		q.Hold(hold)
		if err := q.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := q.Start(context.Background()); err == nil {
			t.Fatal("a second Start succeeded")
		}
		done := pushAsync(context.Background(), q, seq(1000, 1010))
		synctest.Wait()
		if _, ok := returned(done); ok {
			t.Fatal("PushWait returned while held and full")
		}
		close(hold)
		if n := <-done; n != 0 {
			t.Fatalf("dropped %d after the hold", n)
		}
		if err := q.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := len(s.all()); got != cfg.Capacity+10 {
			t.Fatalf("sent %d, want %d", got, cfg.Capacity+10)
		}
	})
}

// Push and PushFunc never wait, even in a Wait queue; PushFuncWait waits
// and leaves out what item refuses; in a DropOldest queue PushWait is Push.
func TestWaitVariants(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := waitConfig()
		s := &sink{block: make(chan struct{})}
		q := New(cfg, s.send)
		if err := q.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		q.Push(seq(0, cfg.Capacity)...)
		synctest.Wait() // the worker holds a batch in flight
		q.Push(seq(0, cfg.BatchSize)...)
		if n := q.Push(1, 2); n != 2 {
			t.Fatalf("Push into a full Wait queue dropped %d, want 2", n)
		}
		if n := q.PushFunc(3, func(i int) (int, bool) { return i, true }); n != 3 {
			t.Fatalf("PushFunc dropped %d, want 3", n)
		}
		done := make(chan int, 1)
		go func() {
			done <- q.PushFuncWait(context.Background(), 20, func(i int) (int, bool) { return i, i%2 == 0 })
		}()
		synctest.Wait()
		if _, ok := returned(done); ok {
			t.Fatal("PushFuncWait returned while full")
		}
		close(s.block)
		if n := <-done; n != 0 {
			t.Fatalf("PushFuncWait dropped %d", n)
		}
		if err := q.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		got := s.all()
		if tail := got[len(got)-10:]; !slices.Equal(tail, []int{0, 2, 4, 6, 8, 10, 12, 14, 16, 18}) {
			t.Fatalf("PushFuncWait queued %v", tail)
		}

		cfg, _ = testConfig() // DropOldest
		s = &sink{block: make(chan struct{})}
		q = New(cfg, s.send)
		if err := q.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		if n := q.PushWait(context.Background(), seq(0, cfg.Capacity+cfg.BatchSize+4)...); n != cfg.BatchSize+4 {
			t.Fatalf("PushWait into a DropOldest queue dropped %d", n)
		}
		close(s.block)
		_ = q.Close(context.Background())
	})
}
