package engine

import ()

// Deliver hands every queued transition to the sink, in batches, and returns
// how many it delivered. Per device, transitions arrive in the order they
// happened. Coalesced devices get their catch-up transition after the queue
// of their shard. Deliver calls the sink without holding shard locks.
func (e *Engine) Deliver() int {
	e.deliverMu.Lock()
	defer e.deliverMu.Unlock()
	total := 0
	for i := range e.shards {
		total += e.deliverShard(&e.shards[i])
	}
	total += e.flushBatch()
	if total > 0 && e.coalescing.Load() && e.backlog() == 0 {
		e.coalescing.Store(false)
		e.log.Info("engine: sink caught up, coalescing ended")
	}
	return total
}

// keepQueue is the largest queue capacity a shard keeps once delivered.
const keepQueue = 256

// deliverRounds bounds the work one Deliver does on one shard that keeps
// receiving transitions, so that the other shards get their turn.
const deliverRounds = 64

func (e *Engine) deliverShard(sh *shard) int {
	delivered := 0
	for round := 0; round < deliverRounds; round++ {
		sh.mu.Lock()
		if len(sh.queue) == 0 && len(sh.expired) == 0 && len(sh.resync) == 0 {
			sh.mu.Unlock()
			return delivered
		}
		e.pend = e.pend[:0]
		for _, q := range sh.queue {
			r := sh.rec(q.slot)
			e.pend = append(e.pend, pending{qent: q, idWord: &r.idWord})
		}
		sh.queue = sh.queue[:0]
		if cap(sh.queue) > keepQueue {
			sh.queue = nil // a burst is over: give the memory back
		}
		// Timeouts after the queue: a device's transitions queued before
		// its timeout are there, none after it (unexpire). A batch of them
		// a round; those left wait listed, in order, and the coalesced
		// devices below wait behind them.
		n := min(len(sh.expired), e.cfg.BatchSize)
		for _, slot := range sh.expired[:n] {
			r := sh.rec(slot)
			r.flags &^= flagExpiredListed
			if r.flags&flagExpired == 0 {
				continue // turned into a queue entry, delivered above or before
			}
			r.flags &^= flagExpired
			sh.nExpired--
			e.pend = append(e.pend, pending{
				qent:   qent{at: r.since, slot: slot, from: StatusOnline, to: StatusOffline, cause: CauseTimeout},
				idWord: &r.idWord,
			})
		}
		if sh.expired = sh.expired[n:]; len(sh.expired) == 0 {
			// Drained: the list, often a fired wheel bucket, goes back to
			// the GC (an expiry's next bucket becomes the next list).
			sh.expired = nil
			e.pendResync(sh)
		}
		sh.st.delivered += uint64(len(e.pend))
		arena := sh.arena // immutable below its length: safe to read unlocked
		sh.mu.Unlock()

		for _, p := range e.pend {
			e.batch = append(e.batch, Transition{
				ID:        e.ids.str(p.idWord, arena),
				From:      p.from,
				To:        p.to,
				At:        fromNanos(p.at),
				PrevSince: fromNanos(p.prev),
				Cause:     p.cause,
				Coalesced: p.coalesced,
			})
			if len(e.batch) >= e.cfg.BatchSize {
				delivered += e.flushBatch()
			}
		}
	}
	return delivered
}

// pendResync copies the coalesced devices' catch-ups out of sh into
// e.pend, a chunk at a time; those left keep their flag so that their
// later transitions stay behind this catch-up. The shard lock is held.
func (e *Engine) pendResync(sh *shard) {
	budget := e.cfg.ChunkSize
	for slot, rs := range sh.resync {
		if budget == 0 {
			break
		}
		budget--
		delete(sh.resync, slot)
		r := sh.rec(slot)
		r.flags &^= flagResync
		from, to := r.reported(), r.status()
		if from == to {
			continue // the changes cancelled out: counted as collapsed
		}
		r.setReported(to)
		sh.st.resynced++
		e.pend = append(e.pend, pending{
			qent:   qent{at: rs.at, slot: slot, from: from, to: to, cause: rs.cause},
			idWord: &r.idWord, coalesced: true,
		})
	}
	if len(sh.resync) == 0 {
		sh.resync = nil // give a large map back
	}
}

func (e *Engine) flushBatch() int {
	n := len(e.batch)
	if n == 0 {
		return 0
	}
	if e.cfg.Sink != nil {
		e.cfg.Sink.HandleTransitions(e.batch)
	}
	clear(e.batch) // drop the id strings
	e.batch = e.batch[:0]
	return n
}

func (e *Engine) backlog() int {
	n := 0
	for i := range e.shards {
		sh := &e.shards[i]
		sh.mu.Lock()
		n += len(sh.queue) + sh.nExpired + len(sh.resync)
		sh.mu.Unlock()
	}
	return n
}
