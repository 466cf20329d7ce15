package engine

// Benchmarks of BENCHMARKS.md. Each runs beside its baseline in one
// invocation:
//
//	go test ./engine -run '^$' -bench 'Touch|Memory|MassExpiry' -count 5 -timeout 60m
//
// Population is done once per device count and shared between runs of the
// same benchmark (it is not what is measured).

import (
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"runtime"
	rtmetrics "runtime/metrics"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var sizes = []struct {
	name string
	n    int
}{{"devices=1M", 1_000_000}, {"devices=10M", 10_000_000}}

// ids returns n device ids like the seed's integers, 7 or 8 digits.
func benchIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = strconv.Itoa(1_000_000 + i)
	}
	return ids
}

func benchEngine(b testing.TB, n int, sink Sink, trackers int) (*Engine, []string, *clock) {
	b.Helper()
	clk := &clock{now: t0}
	cfg := DefaultConfig()
	cfg.Now = clk.Now
	cfg.Sink = sink
	cfg.Logger = slog.New(slog.DiscardHandler)
	e, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	for range trackers {
		if _, err := e.NewTracker(); err != nil {
			b.Fatal(err)
		}
	}
	ids := benchIDs(n)
	for _, id := range ids {
		if err := e.Touch(id, t0); err != nil {
			b.Fatal(err)
		}
	}
	e.Deliver()
	return e, ids, clk
}

// touchLoop runs parallel touches of ids in random order through touch and
// reports touches/s.
func touchLoop(b *testing.B, ids []string, touch func(id string, at time.Time)) {
	var seq atomic.Uint64
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(seq.Add(1), 42))
		at := t0
		n := uint64(len(ids))
		for pb.Next() {
			at = at.Add(time.Microsecond)
			touch(ids[rng.Uint64N(n)], at)
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "touches/s")
}

var touchCache sync.Map // n -> *touchFixture

type touchFixture struct {
	e   *Engine
	ids []string
}

// BenchmarkTouch: parallel touches of known online devices in random order,
// with the two dirty trackers the daemon runs (Redis and Postgres).
func BenchmarkTouch(b *testing.B) {
	for _, sz := range sizes {
		b.Run(sz.name, func(b *testing.B) {
			v, ok := touchCache.Load(sz.n)
			if !ok {
				e, ids, _ := benchEngine(b, sz.n, nil, 2)
				v = &touchFixture{e, ids}
				touchCache.Store(sz.n, v)
			}
			fx := v.(*touchFixture)
			touchLoop(b, fx.ids, func(id string, at time.Time) { fx.e.Touch(id, at) })
			if s := fx.e.Stats(); s.OfflineTransitions != 0 {
				b.Fatalf("devices went offline during the benchmark: %+v", s)
			}
		})
	}
	touchCache.Clear()
}

// mapShard is a shard of the floor: a bare map behind a lock.
type mapShard struct {
	mu sync.Mutex
	m  map[uint64]int64
	_  [40]byte
}

// BenchmarkTouchBaselineMap is the floor: a bare sharded map[uint64]int64
// keyed by the same hash of the id, storing the newest timestamp. No
// validation, no timers, no status.
func BenchmarkTouchBaselineMap(b *testing.B) {
	b.Run("devices=1M", func(b *testing.B) {
		ids := benchIDs(1_000_000)
		seed := maphash.MakeSeed()
		shards := make([]mapShard, 256)
		for i := range shards {
			shards[i].m = make(map[uint64]int64)
		}
		touch := func(id string, at time.Time) {
			h := maphash.String(seed, id)
			sh := &shards[h>>56]
			ns := at.UnixNano()
			sh.mu.Lock()
			if ns > sh.m[h] {
				sh.m[h] = ns
			}
			sh.mu.Unlock()
		}
		for _, id := range ids {
			touch(id, t0)
		}
		touchLoop(b, ids, touch)
	})
}

// afterFuncDev is what a Go developer writes first: a device with its own
// timer, reset on every message.
type afterFuncDev struct {
	lastSeen int64
	online   bool
	timer    *time.Timer
}

type afterFuncShard struct {
	mu sync.Mutex
	m  map[string]*afterFuncDev
	_  [48]byte
}

type afterFuncFleet struct {
	shards  [256]afterFuncShard
	seed    maphash.Seed
	timeout time.Duration
	onOff   func(id string, d *afterFuncDev)
}

func newAfterFuncFleet(timeout time.Duration, onOff func(string, *afterFuncDev)) *afterFuncFleet {
	f := &afterFuncFleet{seed: maphash.MakeSeed(), timeout: timeout, onOff: onOff}
	for i := range f.shards {
		f.shards[i].m = make(map[string]*afterFuncDev)
	}
	return f
}

func (f *afterFuncFleet) touch(id string, at time.Time) {
	sh := &f.shards[maphash.String(f.seed, id)>>56]
	sh.mu.Lock()
	d := sh.m[id]
	if d == nil {
		d = &afterFuncDev{}
		sh.m[id] = d
		d.timer = time.AfterFunc(f.timeout, func() {
			sh.mu.Lock()
			d.online = false
			sh.mu.Unlock()
			f.onOff(id, d)
		})
	} else {
		d.timer.Reset(f.timeout)
	}
	d.lastSeen, d.online = at.UnixNano(), true
	sh.mu.Unlock()
}

func (f *afterFuncFleet) stop() {
	for i := range f.shards {
		for _, d := range f.shards[i].m {
			d.timer.Stop()
		}
	}
}

// BenchmarkTouchBaselineAfterFunc: a sharded map of devices, each with a
// time.AfterFunc reset per touch.
func BenchmarkTouchBaselineAfterFunc(b *testing.B) {
	b.Run("devices=1M", func(b *testing.B) {
		ids := benchIDs(1_000_000)
		f := newAfterFuncFleet(time.Hour, func(string, *afterFuncDev) {})
		defer f.stop()
		for _, id := range ids {
			f.touch(id, t0)
		}
		touchLoop(b, ids, f.touch)
	})
}

func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func gcMillis() float64 {
	start := time.Now()
	runtime.GC()
	return float64(time.Since(start).Microseconds()) / 1000
}

// BenchmarkMemory reports the live heap per device (ids like "1234567", two
// dirty trackers, every device online and armed) and the time of a forced
// GC with all of them alive.
func BenchmarkMemory(b *testing.B) {
	for _, sz := range sizes {
		b.Run(sz.name, func(b *testing.B) {
			for range b.N {
				before := liveHeap()
				e, ids, _ := benchEngine(b, sz.n, nil, 2)
				ids = nil
				after := liveHeap()
				b.ReportMetric(float64(after-before)/float64(sz.n), "bytes/device")
				b.ReportMetric(gcMillis(), "gc-ms")
				runtime.KeepAlive(e)
				_ = ids
			}
		})
	}
}

// BenchmarkMemoryBaselineAfterFunc is the same figure for the AfterFunc
// design: a map[string]*device, each with its timer.
func BenchmarkMemoryBaselineAfterFunc(b *testing.B) {
	b.Run("devices=1M", func(b *testing.B) {
		for range b.N {
			before := liveHeap()
			f := newAfterFuncFleet(time.Hour, func(string, *afterFuncDev) {})
			for i := range 1_000_000 {
				f.touch(strconv.Itoa(1_000_000+i), t0)
			}
			after := liveHeap()
			b.ReportMetric(float64(after-before)/1e6, "bytes/device")
			b.ReportMetric(gcMillis(), "gc-ms")
			f.stop()
		}
	})
}

// peakSampler samples heap objects plus goroutine stacks every millisecond.
type peakSampler struct {
	stop chan struct{}
	done chan struct{}
	peak uint64
}

func inUse() uint64 {
	s := []rtmetrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/stacks:bytes"},
	}
	rtmetrics.Read(s)
	return s[0].Value.Uint64() + s[1].Value.Uint64()
}

func startPeak() *peakSampler {
	p := &peakSampler{stop: make(chan struct{}), done: make(chan struct{}), peak: inUse()}
	go func() {
		defer close(p.done)
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				p.peak = max(p.peak, inUse())
			}
		}
	}()
	return p
}

func (p *peakSampler) end() uint64 {
	close(p.stop)
	<-p.done
	return max(p.peak, inUse())
}

// BenchmarkMassExpiry: 1M devices silent since the same instant expire in
// the same tick; measured from Advance to the last transition handed to the
// sink. peak-MB is the most heap (objects and stacks) in use beyond what was
// live before.
func BenchmarkMassExpiry(b *testing.B) {
	b.Run("devices=1M", func(b *testing.B) {
		const n = 1_000_000
		var elapsed time.Duration
		var peak uint64
		for range b.N {
			b.StopTimer()
			var got atomic.Int64
			sink := SinkFunc(func(batch []Transition) { got.Add(int64(len(batch))) })
			e, _, clk := benchEngine(b, n, sink, 2)
			got.Store(0)
			base := liveHeap()
			b.StartTimer()
			p := startPeak()
			start := time.Now()
			now := t0.Add(time.Minute + DefaultConfig().Tick)
			clk.Set(now)
			e.Advance(now)
			for got.Load() < n {
				if e.Deliver() == 0 {
					b.Fatalf("only %d of %d expired: %+v", got.Load(), n, e.Stats())
				}
			}
			elapsed += time.Since(start)
			peak = max(peak, p.end()-base)
			b.StopTimer()
			runtime.KeepAlive(e)
		}
		b.ReportMetric(float64(elapsed.Nanoseconds())/float64(b.N*n), "ns/expiry")
		b.ReportMetric(float64(peak)/(1<<20), "peak-MB")
	})
}

// BenchmarkMassExpiryBaselineAfterFunc: the same with one AfterFunc timer
// per device, all set to fire at one instant; each callback marks its device
// offline and hands the transition over.
func BenchmarkMassExpiryBaselineAfterFunc(b *testing.B) {
	b.Run("devices=1M", func(b *testing.B) {
		const n = 1_000_000
		var elapsed time.Duration
		var peak uint64
		for range b.N {
			b.StopTimer()
			var mu sync.Mutex
			var transitions []Transition
			done := make(chan struct{})
			var fired atomic.Int64
			f := newAfterFuncFleet(time.Hour, func(id string, d *afterFuncDev) {
				mu.Lock()
				transitions = append(transitions, Transition{ID: id, From: StatusOnline, To: StatusOffline, At: time.Now(), Cause: CauseTimeout})
				mu.Unlock()
				if fired.Add(1) == n {
					close(done)
				}
			})
			popStart := time.Now()
			for i := range n {
				f.touch(strconv.Itoa(1_000_000+i), t0)
			}
			// Re-aim every timer at one instant, far enough ahead for the
			// loop to finish: they all expire together.
			fireAt := time.Now().Add(2*time.Since(popStart) + time.Second)
			for i := range f.shards {
				for _, d := range f.shards[i].m {
					d.timer.Reset(time.Until(fireAt))
				}
			}
			base := liveHeap()
			if wait := time.Until(fireAt); wait > 5*time.Millisecond {
				time.Sleep(wait - 5*time.Millisecond)
			} else {
				b.Fatal("re-aiming the timers took longer than their delay")
			}
			b.StartTimer()
			p := startPeak()
			start := time.Now()
			<-done
			elapsed += time.Since(start)
			peak = max(peak, p.end()-base)
			b.StopTimer()
			if len(transitions) != n {
				b.Fatalf("%d transitions", len(transitions))
			}
		}
		b.ReportMetric(float64(elapsed.Nanoseconds())/float64(b.N*n), "ns/expiry")
		b.ReportMetric(float64(peak)/(1<<20), "peak-MB")
	})
}

// BenchmarkTouchBatch: the same random touches handed over as ingest does,
// in batches of 512 (TouchBatch groups them by shard: one lock per shard).
func BenchmarkTouchBatch(b *testing.B) {
	b.Run("devices=1M", func(b *testing.B) {
		v, ok := touchCache.Load(1_000_000)
		if !ok {
			e, ids, _ := benchEngine(b, 1_000_000, nil, 2)
			v = &touchFixture{e, ids}
			touchCache.Store(1_000_000, v)
		}
		fx := v.(*touchFixture)
		var seq atomic.Uint64
		b.ResetTimer()
		start := time.Now()
		b.RunParallel(func(pb *testing.PB) {
			rng := rand.New(rand.NewPCG(seq.Add(1), 43))
			batch := make([]Touch, 0, 512)
			at := t0
			n := uint64(len(fx.ids))
			for pb.Next() {
				at = at.Add(time.Microsecond)
				batch = append(batch, Touch{ID: fx.ids[rng.Uint64N(n)], At: at})
				if len(batch) == cap(batch) {
					fx.e.TouchBatch(batch)
					batch = batch[:0]
				}
			}
			fx.e.TouchBatch(batch)
		})
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "touches/s")
	})
}
