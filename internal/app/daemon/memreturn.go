package daemon

import (
	"context"
	"log/slog"
	"runtime"
	"runtime/debug"
	"sync"
	"time"
)

// memReturner gives the memory a burst has freed back to the operating
// system. A mass expiry of a million devices briefly needs tens of
// megabytes (the transitions on their way to the sinks); once collected,
// the runtime's background scavenger returns those pages slowly, so the
// RSS stays at the burst's peak for minutes. Every memReturnEvery it
// looks at the free heap still held from the OS, and when that is over
// memReturnMin and half the live heap, it returns it (debug.FreeOSMemory:
// one collection, then the pages). Steady load never comes near.
type memReturner struct {
	log  *slog.Logger
	stop chan struct{}
	wg   sync.WaitGroup
}

const (
	memReturnEvery = 10 * time.Second
	memReturnMin   = 32 << 20
)

func newMemReturner(log *slog.Logger) *memReturner {
	return &memReturner{log: log, stop: make(chan struct{})}
}

func (m *memReturner) Start(context.Context) error {
	m.wg.Go(func() {
		t := time.NewTicker(memReturnEvery)
		defer t.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-t.C:
				m.check()
			}
		}
	})
	return nil
}

// check returns the free heap held from the OS if it is worth it.
func (m *memReturner) check() {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	held := ms.HeapIdle - ms.HeapReleased
	if held < memReturnMin || held < ms.HeapAlloc/2 {
		return
	}
	debug.FreeOSMemory()
	m.log.Debug("returned free heap to the OS", "bytes", held, "live_heap", ms.HeapAlloc)
}

func (m *memReturner) Close(context.Context) error {
	select {
	case <-m.stop:
	default:
		close(m.stop)
	}
	m.wg.Wait()
	return nil
}
