package engine

import (
	"context"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"github.com/presence-dev/presence/internal/lifecycle"
)

// Engine holds the presence state of every device. All methods are safe for
// concurrent use. New builds one; Start runs its clock; nothing else starts
// goroutines.
type Engine struct {
	cfg       Config
	seed      maphash.Seed
	shards    []shard
	views     []atomic.Pointer[shardView] // by shard; apart from the locks
	shardBits uint
	epoch     int64 // unix ns of wheel tick 0
	gran      int64 // ns per wheel tick (Tick/4)
	timeouts  *timeoutTable
	now       func() time.Time
	log       *slog.Logger

	rejected   atomic.Uint64 // invalid ids, counted off the shard locks
	coalescing atomic.Bool   // logged once per episode

	advanceMu sync.Mutex   // one Advance at a time; guards need
	need      bucketCounts // a cascade's scratch (wheel.reserve)

	deliverMu sync.Mutex // one Deliver at a time; guards the buffers below
	pend      []pending
	batch     []Transition
	ids       idBuf // the batch's id strings

	trackMu  sync.Mutex
	trackers int

	groups sync.Pool // *touchGroups

	run         lifecycle.Runner // the clock and the deliverer (Start, Close)
	deliverWake chan struct{}    // cap 1: the clock advanced, Deliver has work
}

// pending is a transition copied out of a shard, still without its string id.
type pending struct {
	qent
	idWord    *uint64 // the record's: never changes once the device is added
	coalesced bool
}

// New validates cfg and builds an engine whose wheel starts at cfg.Now().
func New(cfg Config) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	e := &Engine{
		cfg:       cfg,
		seed:      maphash.MakeSeed(),
		shards:    make([]shard, cfg.Shards),
		views:     make([]atomic.Pointer[shardView], cfg.Shards),
		shardBits: uint(bits.TrailingZeros(uint(cfg.Shards))),
		gran:      int64(cfg.Tick / 4),
		timeouts:  newTimeoutTable(cfg.DefaultTimeout),
		now:       cfg.Now,
		log:       cfg.Logger,

		deliverWake: make(chan struct{}, 1),

		// Deliver's buffers are sized once, for a batch: a burst of any
		// size goes through them a batch at a time, taking no memory of
		// its own.
		pend:  make([]pending, 0, cfg.BatchSize),
		batch: make([]Transition, 0, cfg.BatchSize),
	}
	if e.now == nil {
		e.now = time.Now
	}
	if e.log == nil {
		e.log = slog.Default()
	}
	e.epoch = e.now().UnixNano()
	for i := range e.shards {
		e.shards[i].queueCap = cfg.QueueCapacity / cfg.Shards
		e.shards[i].view = &e.views[i]
		e.shards[i].publish()
	}
	e.groups.New = func() any {
		return &touchGroups{count: make([]int, cfg.Shards), start: make([]int, cfg.Shards)}
	}
	return e, nil
}

func (e *Engine) hash(id string) uint64 { return maphash.String(e.seed, id) }

func (e *Engine) shardOf(h uint64) *shard {
	return &e.shards[h>>(64-e.shardBits)&(1<<e.shardBits-1)]
}

// tickCeil is the first wheel tick at or after unix time ns.
func (e *Engine) tickCeil(ns int64) uint64 {
	if ns <= e.epoch {
		return 0
	}
	return uint64((ns - e.epoch + e.gran - 1) / e.gran)
}

func toNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

// deadline is when r goes offline if it stays silent, in unix ns.
func (e *Engine) deadline(r *rec) int64 { return r.lastSeen + e.timeouts.ns(r.tmo) }

// Start starts the engine's two goroutines: the clock, which advances the
// wheel every Tick/4, and the deliverer, which then hands the transitions
// to the Sink (Deliver). They run apart so that a Sink that makes the
// deliverer wait (an event destination pushing back) never makes a
// transition late: meanwhile the transitions queue, coalesced per device
// past Config.QueueCapacity, and the clock keeps time. Without Start the
// engine is driven by hand (Advance, Deliver), as tests do. It fails after
// Close or when called twice.
func (e *Engine) Start(ctx context.Context) error {
	if err := e.run.Start(ctx, e.clock, e.deliverer); err != nil {
		return fmt.Errorf("engine: %w", err)
	}
	return nil
}

func (e *Engine) clock(ctx context.Context) {
	lifecycle.Every(ctx, time.Duration(e.gran), func() {
		e.Advance(e.now())
		select {
		case e.deliverWake <- struct{}{}:
		default: // the deliverer has a wake-up pending (or is busy): it sees this tick's work too
		}
	})
}

// deliverer runs Deliver after every tick of the clock; a Deliver that
// takes longer than a tick is followed by the next at once.
func (e *Engine) deliverer(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.deliverWake:
		}
		e.Deliver()
	}
}

// Close stops the clock and the deliverer (waiting for a Deliver in
// progress), then makes a last Advance and delivers what is left: when it
// returns, every transition made so far has reached the Sink. Idempotent.
func (e *Engine) Close(ctx context.Context) error {
	return e.run.Close(ctx, func(context.Context) error {
		e.Advance(e.now())
		// A Deliver does at most deliverRounds batches a shard, and a round
		// of stale list entries delivers nothing: go on while anything is
		// pending, not while something was delivered.
		for e.backlog() > 0 {
			e.Deliver()
		}
		return nil
	})
}

// Stats are the engine's counters since New.
type Stats struct {
	Touches            uint64 // accepted touches
	Rejected           uint64 // inputs refused: invalid id or timeout
	Stale              uint64 // Last Wills ignored as older than the last message
	OnlineTransitions  uint64
	OfflineTransitions uint64
	Delivered          uint64 // transitions handed to the sink, catch-ups included
	Queued             int    // transitions waiting for Deliver
	// Coalesced counts transitions that found the queue full (or their
	// device already coalescing); Collapsed those of them that never reached
	// the sink individually because a later change of the same device
	// superseded them.
	Coalesced, Collapsed uint64
	Resyncing            int    // devices waiting for a catch-up transition
	Detached             int    // devices handed to another owner (Remove) or decommissioned
	Decommissioned       uint64 // Decommission calls that removed a device
	WheelEntries         int    // live and stale
}

// Stats returns the counters, summed shard by shard.
func (e *Engine) Stats() Stats {
	s := Stats{Rejected: e.rejected.Load()}
	var resynced uint64
	for i := range e.shards {
		sh := &e.shards[i]
		sh.mu.Lock()
		s.Touches += sh.st.touches
		s.Stale += sh.st.stale
		s.OnlineTransitions += sh.st.online
		s.OfflineTransitions += sh.st.offline
		s.Delivered += sh.st.delivered
		s.Queued += len(sh.queue) + sh.nExpired
		s.Coalesced += sh.st.coalesced
		resynced += sh.st.resynced
		s.Resyncing += len(sh.resync)
		s.Detached += sh.nDetached
		s.Decommissioned += sh.st.removed
		s.WheelEntries += sh.wheel.n
		sh.mu.Unlock()
	}
	s.Collapsed = s.Coalesced - resynced - uint64(s.Resyncing)
	return s
}
