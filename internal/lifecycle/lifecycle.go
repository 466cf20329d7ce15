// Package lifecycle is the one shape every long-running component of
// presence has:
//
//	Start(ctx context.Context) error // starts its goroutines and returns
//	Close(ctx context.Context) error // stops them, waits, drains within ctx
//
// Start's ctx bounds the start only (and carries its values); the
// goroutines live until Close. Close is idempotent: it cancels the
// goroutines, waits for every one of them, then drains what is pending
// (writes it out) within its ctx, and returns the first call's result to
// every later call.
//
// Runner is that state machine for components whose goroutines are loops,
// so that it is written once; Every is the body of a periodic loop. Group
// starts components in order and closes them in reverse; a Gate, one of
// its stages, holds back the work of components started before it.
package lifecycle

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Component is what Group runs.
type Component interface {
	Start(ctx context.Context) error
	Close(ctx context.Context) error
}

// Errors of Runner.Start.
var (
	// ErrClosed: Start after Close.
	ErrClosed = errors.New("closed")
	// ErrStarted: a second Start.
	ErrStarted = errors.New("already started")
)

type state uint8

const (
	stateNew state = iota
	stateStarted
	stateClosed
)

// Runner runs a component's goroutines between Start and Close. The zero
// value is ready to use; it must not be copied.
//
// Each goroutine gets a context that Close cancels: loops wait on it and
// return when it is done. Work that a stop must not cut short (a write in
// flight, which retried after a cancel could be applied twice) runs under
// Work() instead, which is cancelled only if Close's ctx ends before the
// goroutines have returned.
type Runner struct {
	mu     sync.Mutex
	state  state
	stop   context.CancelFunc
	work   context.Context
	abort  context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
	closed error
}

// Start runs each fn in a goroutine of its own. ctx's values are kept, its
// cancellation is not: the goroutines run until Close. It fails with
// ErrClosed after Close and with ErrStarted the second time.
func (r *Runner) Start(ctx context.Context, fns ...func(ctx context.Context)) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch r.state {
	case stateClosed:
		return ErrClosed
	case stateStarted:
		return ErrStarted
	}
	r.state = stateStarted
	base := context.WithoutCancel(ctx)
	r.work, r.abort = context.WithCancel(base)
	loop, stop := context.WithCancel(base)
	r.stop = stop
	for _, fn := range fns {
		r.wg.Go(func() { fn(loop) })
	}
	return nil
}

// Work is the context of work in flight: cancelled only when Close gives
// up waiting for the goroutines. Before Start it is context.Background().
func (r *Runner) Work() context.Context {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.work == nil {
		return context.Background()
	}
	return r.work
}

// Started reports whether Start ran (even if Close ran since).
func (r *Runner) Started() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stop != nil
}

// Close stops the goroutines and waits for them; if ctx ends first it
// cancels Work and waits for them to return. Then it calls drain (if not
// nil) with ctx and returns its error. Later calls return the first one's
// result without doing anything. Close without Start only drains.
func (r *Runner) Close(ctx context.Context, drain func(ctx context.Context) error) error {
	r.once.Do(func() {
		r.mu.Lock()
		r.state = stateClosed
		stop, abort := r.stop, r.abort
		r.mu.Unlock()
		if stop != nil {
			stop()
			done := make(chan struct{})
			go func() { r.wg.Wait(); close(done) }()
			select {
			case <-done:
			case <-ctx.Done():
				abort()
				<-done
			}
			abort()
		}
		if drain != nil {
			r.closed = drain(ctx)
		}
	})
	return r.closed
}

// Every calls fn every interval until ctx is done: the body of a periodic
// loop (a Runner goroutine).
func Every(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// Gate holds back the work of components that start early (for the sake
// of the close order) until a later stage has started: they wait on Open
// before they begin. A Gate is itself a Component, added to the Group
// where the work may begin; it opens when started, and when closed, so
// that nothing waits on it forever.
type Gate struct {
	once sync.Once
	ch   chan struct{}
}

// NewGate returns a closed gate.
func NewGate() *Gate { return &Gate{ch: make(chan struct{})} }

// Open is closed once the gate opened.
func (g *Gate) Open() <-chan struct{} { return g.ch }

// Start opens the gate.
func (g *Gate) Start(context.Context) error { g.open(); return nil }

// Close opens the gate too.
func (g *Gate) Close(context.Context) error { g.open(); return nil }

func (g *Gate) open() { g.once.Do(func() { close(g.ch) }) }
