package ingest

import (
	"errors"
	"sync"
	"time"

	"github.com/presence-dev/presence/engine"
)

// offlineMark in a queued Touch's Timeout marks a status "offline" message.
// The engine never sees it: deliver turns it into Handler.MarkOffline.
// Keeping offline marks in the same queue as touches keeps a device's
// messages in arrival order, and the runs of touches between marks are
// handed to TouchBatch as sub-slices of the queue, without copying.
const offlineMark time.Duration = -1

// shard is one bounded queue and its worker.
//
// The hand-off is a mutex-guarded slice rather than a channel: the callback
// appends under the lock (tens of nanoseconds, never waits for the worker)
// and the worker takes the whole queue at once by swapping it with its
// spare buffer, so the cost per message is one uncontended lock and the
// worker wakes once per batch, not once per message. BenchmarkHandoff
// compares it with a buffered channel.
type shard struct {
	mu      sync.Mutex
	pending []engine.Touch // cap is Config.QueueSize; never grows
	closed  bool

	wake chan struct{} // cap 1: pending became non-empty, or closing
	full chan struct{} // cap 1: pending reached BatchSize
	stop chan struct{} // closed when closing: cuts a BatchDelay wait short

	_ [64]byte // keep neighbouring shards' locks on separate cache lines
}

func (s *shard) init(queueSize int) {
	s.pending = make([]engine.Touch, 0, queueSize)
	s.wake = make(chan struct{}, 1)
	s.full = make(chan struct{}, 1)
	s.stop = make(chan struct{})
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// push queues t without ever waiting for the worker.
func (s *shard) push(t engine.Touch, batchSize int) reason {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return reasonClosed
	}
	n := len(s.pending)
	if n == cap(s.pending) {
		s.mu.Unlock()
		return reasonQueueFull
	}
	s.pending = append(s.pending, t)
	s.mu.Unlock()
	if n == 0 {
		signal(s.wake)
	}
	if n+1 == batchSize {
		signal(s.full)
	}
	return reasonNone
}

func (s *shard) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending)
}

// close makes push refuse and tells the worker to drain and exit.
func (s *shard) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	close(s.stop)
	signal(s.wake)
}

// run is the shard's worker: it waits for messages, lets a batch fill for
// up to BatchDelay, takes the whole queue and hands it to the handler.
// After close it delivers what is left and returns.
func (in *Ingester) runShard(s *shard) {
	defer in.workers.Done()
	spare := make([]engine.Touch, 0, in.cfg.QueueSize)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		<-s.wake
		if in.cfg.BatchDelay > 0 {
			s.mu.Lock()
			wait := len(s.pending) < in.cfg.BatchSize && !s.closed
			s.mu.Unlock()
			if wait {
				timer.Reset(in.cfg.BatchDelay)
				select {
				case <-s.full:
				case <-timer.C:
				case <-s.stop:
				}
				timer.Stop()
			}
		}
		s.mu.Lock()
		batch, closed := s.pending, s.closed
		s.pending = spare[:0]
		select { // a full signal for the batch just taken is stale now
		case <-s.full:
		default:
		}
		s.mu.Unlock()

		in.deliver(batch)
		clear(batch) // drop references to topic strings
		spare = batch[:0]
		if closed {
			return
		}
	}
}

// deliver hands one shard's queue to the handler in order: runs of touches
// as TouchBatch calls of at most BatchSize, offline marks as MarkOffline.
func (in *Ingester) deliver(q []engine.Touch) {
	for len(q) > 0 {
		n := 0
		for n < len(q) && n < in.cfg.BatchSize && q[n].Timeout != offlineMark {
			n++
		}
		if n > 0 {
			rejected := in.h.TouchBatch(q[:n])
			in.m.batches.Inc()
			in.m.touches.Add(n)
			in.m.batchLen.Update(float64(n))
			if rejected > 0 {
				in.m.rejected.Add(rejected)
			}
			q = q[n:]
			continue
		}
		switch err := in.h.MarkOffline(q[0].ID, q[0].At); {
		case err == nil:
		case errors.Is(err, engine.ErrNotFound):
			// A Last Will of a device never heard since start-up: routine.
			in.m.offlineUnknown.Inc()
		default:
			in.m.hErrors.Inc()
			if ok, sup := in.handlerLog.Allow(struct{}{}); ok {
				in.log.Warn("ingest: MarkOffline failed", "id", q[0].ID, "error", err, "suppressed", sup)
			}
		}
		in.m.offline.Inc()
		q = q[1:]
	}
}
