package lifecycle

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRunner(t *testing.T) {
	var r Runner
	drained := 0
	drain := func(context.Context) error { drained++; return errors.New("left 3") }
	loopDone := make(chan struct{})
	var workErr error
	err := r.Start(context.Background(), func(ctx context.Context) {
		defer close(loopDone)
		<-ctx.Done()
		workErr = r.Work().Err() // the stop does not cancel work in flight
	})
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(r.Start(context.Background()), ErrStarted) {
		t.Fatal("second Start did not fail with ErrStarted")
	}
	err = r.Close(context.Background(), drain)
	<-loopDone
	if err == nil || err.Error() != "left 3" || drained != 1 || workErr != nil {
		t.Fatalf("Close = %v, drained %d, work ctx during stop %v", err, drained, workErr)
	}
	if again := r.Close(context.Background(), drain); again != err || drained != 1 {
		t.Fatalf("second Close = %v (drained %d), want the first's result without draining", again, drained)
	}
	if !errors.Is(r.Start(context.Background()), ErrClosed) {
		t.Fatal("Start after Close did not fail with ErrClosed")
	}
}

// When Close's ctx ends before the goroutines return, work in flight is
// cancelled and Close still waits for them.
func TestRunnerAbortsWorkAtDeadline(t *testing.T) {
	var r Runner
	var returned bool
	r.Start(context.Background(), func(ctx context.Context) {
		<-r.Work().Done() // a write that only a cancel ends
		returned = true
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	r.Close(ctx, nil)
	if !returned {
		t.Fatal("Close returned before its goroutine")
	}
}

func TestRunnerCloseWithoutStart(t *testing.T) {
	var r Runner
	called := false
	if err := r.Close(context.Background(), func(context.Context) error { called = true; return nil }); err != nil || !called {
		t.Fatalf("Close = %v, drained %v", err, called)
	}
	if r.Started() || !errors.Is(r.Start(context.Background()), ErrClosed) {
		t.Fatal("state")
	}
}

// comp records its starts and closes in a shared log.
type comp struct {
	name     string
	log      *[]string
	mu       *sync.Mutex
	startErr error
	closeErr error
	sawDL    bool
}

func (c *comp) Start(context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	*c.log = append(*c.log, "start "+c.name)
	return c.startErr
}

func (c *comp) Close(ctx context.Context) error {
	_, c.sawDL = ctx.Deadline()
	c.mu.Lock()
	defer c.mu.Unlock()
	*c.log = append(*c.log, "close "+c.name)
	return c.closeErr
}

func TestGroupOrder(t *testing.T) {
	var log []string
	var mu sync.Mutex
	mk := func(name string) *comp { return &comp{name: name, log: &log, mu: &mu} }
	a, b, c, d := mk("a"), mk("b"), mk("c"), mk("d")
	var none *comp
	g := NewGroup(slog.New(slog.DiscardHandler))
	g.Add(0, Named("a", a))
	g.Add(0, Named("b", b), Named("none", none), Named("c", c)) // closed in parallel
	g.Add(time.Second, Named("d", d))
	if err := g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.closeErr = errors.New("3 pending")
	err := g.Close(context.Background())
	if err == nil || !strings.Contains(err.Error(), "c: 3 pending") {
		t.Fatalf("Close = %v, want c's error named", err)
	}
	if !slices.Equal(log[:4], []string{"start a", "start b", "start c", "start d"}) || log[4] != "close d" || log[7] != "close a" {
		t.Fatalf("order %v", log)
	}
	if !d.sawDL || a.sawDL {
		t.Fatal("the stage budget gives d a deadline, and only d")
	}
	if err := g.Close(context.Background()); err != nil || len(log) != 8 {
		t.Fatalf("second Close = %v, closed again: %v", err, log)
	}
}

// A stage's components close in parallel: each of two closes waits for the
// other to have begun, which only works if they run at the same time.
func TestGroupStageClosesInParallel(t *testing.T) {
	var entered sync.WaitGroup
	entered.Add(2)
	both := make(chan struct{})
	go func() { entered.Wait(); close(both) }()
	meet := func() error {
		entered.Done()
		select {
		case <-both:
			return nil
		case <-time.After(10 * time.Second):
			return errors.New("the other Close never began: closes ran one after the other")
		}
	}
	g := NewGroup(slog.New(slog.DiscardHandler))
	g.Add(0, Named("x", closeFunc(meet)), Named("y", closeFunc(meet)))
	g.Start(context.Background())
	if err := g.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// closeFunc is a component whose Close is f.
type closeFunc func() error

func (closeFunc) Start(context.Context) error   { return nil }
func (f closeFunc) Close(context.Context) error { return f() }

// A failed start closes what was started, the failed component too (it may
// have started goroutines before it failed), in reverse, and names the
// component that failed.
func TestGroupFailedStart(t *testing.T) {
	var log []string
	var mu sync.Mutex
	mk := func(name string) *comp { return &comp{name: name, log: &log, mu: &mu} }
	a, b, c := mk("a"), mk("b"), mk("c")
	b.startErr = errors.New("port taken")
	g := NewGroup(slog.New(slog.DiscardHandler))
	g.Add(0, Named("a", a))
	g.Add(0, Named("b", b))
	g.Add(0, Named("c", c))
	err := g.Start(context.Background())
	if err == nil || err.Error() != "b: port taken" {
		t.Fatalf("Start = %v", err)
	}
	if want := []string{"start a", "start b", "close b", "close a"}; !slices.Equal(log, want) {
		t.Fatalf("log %v, want %v", log, want)
	}
}

type failing struct {
	comp
	ch chan error
}

func (f *failing) Failed() <-chan error { return f.ch }

// A started component's runtime failure reaches Group.Failed, named.
func TestGroupFailed(t *testing.T) {
	var log []string
	var mu sync.Mutex
	f := &failing{comp: comp{name: "api", log: &log, mu: &mu}, ch: make(chan error, 1)}
	g := NewGroup(slog.New(slog.DiscardHandler))
	g.Add(0, Named("api", f))
	if err := g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.ch <- errors.New("listener closed")
	select {
	case err := <-g.Failed():
		if err.Error() != "api: listener closed" {
			t.Fatalf("Failed: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no failure reported")
	}
	g.Close(context.Background())
}

func TestEvery(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	Every(ctx, time.Millisecond, func() {
		if n++; n == 3 {
			cancel()
		}
	})
	if n != 3 {
		t.Fatalf("called %d times, want 3 (until cancelled)", n)
	}
}

// A gate opens when started, or closed, once.
func TestGate(t *testing.T) {
	for _, open := range []func(*Gate){
		func(g *Gate) { g.Start(context.Background()) },
		func(g *Gate) { g.Close(context.Background()) },
	} {
		g := NewGate()
		select {
		case <-g.Open():
			t.Fatal("open before Start")
		default:
		}
		open(g)
		open(g) // idempotent
		select {
		case <-g.Open():
		default:
			t.Fatal("still closed")
		}
	}
}
