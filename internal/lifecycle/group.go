package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"time"
)

// Group is a program's components in start order: it starts them in that
// order and closes them in the reverse one. The components of one stage
// start one after the other and close in parallel, so that independent
// stores are flushed at the same time, within the same budget.
type Group struct {
	log     *slog.Logger
	stages  []stage
	started int // stages started, closed by Close

	failed chan error    // 1-buffered: the first Failer's error
	stop   chan struct{} // closed by Close: the Failer watchers end
	once   sync.Once
}

// Failer is a Component that can fail after it started (a listener that
// dies): Failed receives that error.
type Failer interface {
	Failed() <-chan error
}

type stage struct {
	budget time.Duration // bounds the stage's Close; 0: Close's ctx only
	parts  []Part
}

// Part is one named component of a stage.
type Part struct {
	Name string
	C    Component
}

// Named is a Part.
func Named(name string, c Component) Part { return Part{name, c} }

// NewGroup returns an empty group; it logs at debug level how long each
// Close took (nil log: slog.Default()).
func NewGroup(log *slog.Logger) *Group {
	if log == nil {
		log = slog.Default()
	}
	return &Group{log: log, failed: make(chan error, 1), stop: make(chan struct{})}
}

// Failed receives the first error a started component reports as a
// Failer: the program should shut down.
func (g *Group) Failed() <-chan error { return g.failed }

func (g *Group) watch(p Part) {
	f, ok := p.C.(Failer)
	if !ok {
		return
	}
	ch := f.Failed()
	go func() {
		select {
		case err := <-ch:
			select {
			case g.failed <- named(p.Name, err):
			default:
			}
		case <-g.stop:
		}
	}()
}

// Add appends a stage. Parts whose component is nil (or a nil pointer) are
// left out, so that optional components are added unconditionally. A
// budget > 0 gives the stage's Close a deadline of its own.
func (g *Group) Add(budget time.Duration, parts ...Part) {
	var s stage
	s.budget = budget
	for _, p := range parts {
		if !IsNil(p.C) {
			s.parts = append(s.parts, p)
		}
	}
	if len(s.parts) > 0 {
		g.stages = append(g.stages, s)
	}
}

// Start starts every stage in order. When a component fails to start, it
// and the ones already started are closed in reverse order (within ctx's
// values, without its cancellation: a Close must be safe after a failed
// Start) and the failure is returned, named.
func (g *Group) Start(ctx context.Context) error {
	for i, s := range g.stages {
		for j, p := range s.parts {
			if err := p.C.Start(ctx); err != nil {
				cctx := context.WithoutCancel(ctx)
				cerr := g.closeStage(cctx, stage{budget: s.budget, parts: s.parts[:j+1]})
				g.started = i
				cerr = errors.Join(cerr, g.Close(cctx))
				if cerr != nil {
					g.log.Warn("closing after a failed start", "err", cerr)
				}
				return named(p.Name, err)
			}
			g.watch(p)
		}
		g.started = i + 1
	}
	return nil
}

// Close closes the started stages in reverse order and returns every
// error, each named by its component.
func (g *Group) Close(ctx context.Context) error {
	g.once.Do(func() { close(g.stop) })
	var errs []error
	for ; g.started > 0; g.started-- {
		errs = append(errs, g.closeStage(ctx, g.stages[g.started-1]))
	}
	return errors.Join(errs...)
}

func (g *Group) closeStage(ctx context.Context, s stage) error {
	if s.budget > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.budget)
		defer cancel()
	}
	errs := make([]error, len(s.parts))
	done := make(chan struct{}, len(s.parts))
	for i, p := range s.parts {
		go func() {
			defer func() { done <- struct{}{} }()
			start := time.Now()
			if err := p.C.Close(ctx); err != nil {
				errs[i] = named(p.Name, err)
			}
			g.log.Debug("closed", "component", p.Name, "took", time.Since(start).Round(time.Millisecond))
		}()
	}
	for range s.parts {
		<-done
	}
	return errors.Join(errs...)
}

// named is err with the component's name in front, unless it has it
// already ("api: ..." from the api).
func named(name string, err error) error {
	if strings.HasPrefix(err.Error(), name+": ") {
		return err
	}
	return fmt.Errorf("%s: %w", name, err)
}

// IsNil reports whether c is nil or a nil pointer: an optional component
// that is not configured.
func IsNil(c Component) bool {
	if c == nil {
		return true
	}
	v := reflect.ValueOf(c)
	return v.Kind() == reflect.Pointer && v.IsNil()
}
