package ratelog

import (
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock a test moves by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestLimiter(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	l := New[string](time.Second, clk.now)
	check := func(key string, wantOK bool, wantSup int) {
		t.Helper()
		ok, sup := l.Allow(key)
		if ok != wantOK || sup != wantSup {
			t.Fatalf("Allow(%q) at %v = %v, %d; want %v, %d", key, clk.now().Unix(), ok, sup, wantOK, wantSup)
		}
	}
	check("a", true, 0) // the first line of a key always passes
	for range 5 {
		clk.advance(100 * time.Millisecond)
		check("a", false, 0)
	}
	check("b", true, 0)                 // keys are independent
	clk.advance(500 * time.Millisecond) // one interval after the first line
	check("a", true, 5)
	check("a", false, 0)
	check("b", false, 0)
	clk.advance(time.Second)
	check("b", true, 1)
	check("a", true, 1)
	check("a", false, 0)
	if n := l.TakeSuppressed("a"); n != 1 {
		t.Fatalf("TakeSuppressed = %d, want 1", n)
	}
	if n := l.TakeSuppressed("a"); n != 0 {
		t.Fatalf("TakeSuppressed again = %d, want 0", n)
	}
	if n := l.TakeSuppressed("never"); n != 0 {
		t.Fatalf("TakeSuppressed of an unseen key = %d, want 0", n)
	}
	check("a", false, 0) // taking the count does not open the interval
}

func TestLimiterAllowAt(t *testing.T) {
	l := New[int](time.Second, func() time.Time { panic("AllowAt must not read the clock") })
	t0 := time.Unix(1000, 0)
	if ok, _ := l.AllowAt(1, t0); !ok {
		t.Fatal("first line held back")
	}
	for i := range 5 {
		if ok, _ := l.AllowAt(1, t0.Add(time.Duration(i)*100*time.Millisecond)); ok {
			t.Fatal("line within the interval allowed")
		}
	}
	if ok, sup := l.AllowAt(1, t0.Add(time.Second)); !ok || sup != 5 {
		t.Fatalf("after the interval: ok=%v suppressed=%d, want true 5", ok, sup)
	}
}

func TestLimiterZeroInterval(t *testing.T) {
	l := New[int](0, nil)
	for range 3 {
		if ok, sup := l.Allow(0); !ok || sup != 0 {
			t.Fatalf("interval 0: Allow = %v, %d; want every line", ok, sup)
		}
	}
}

// Concurrent callers: exactly one line passes per key and interval, and
// every other call is counted once, in the suppressed count of the line
// allowed first or of the next one (a call held back while the first is
// being allowed may land in either: the sum is exact).
func TestLimiterConcurrent(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	l := New[int](time.Minute, clk.now)
	const goroutines, calls = 8, 1000
	var mu sync.Mutex
	allowed, reported := map[int]int{}, map[int]int{}
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for range calls {
				if ok, sup := l.Allow(g % 2); ok {
					mu.Lock()
					allowed[g%2]++
					reported[g%2] += sup
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	for key := range 2 {
		if allowed[key] != 1 {
			t.Errorf("key %d: %d lines allowed, want 1", key, allowed[key])
		}
	}
	clk.advance(time.Minute)
	for key := range 2 {
		ok, sup := l.Allow(key)
		if want := goroutines / 2 * calls; !ok || reported[key]+sup != want-1 {
			t.Errorf("key %d after the interval: %v, %d (+%d with the first line); want true and %d in all",
				key, ok, sup, reported[key], want-1)
		}
	}
}

func BenchmarkAllowHeldBack(b *testing.B) {
	l := New[uint8](time.Hour, nil)
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l.AllowAt(3, now)
		}
	})
}
