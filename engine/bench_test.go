package engine

// Benchmarks of BENCHMARKS.md. Each runs beside its baseline in one
// invocation:
//
//	go test ./engine -run '^$' -bench 'Touch|Memory|MassExpiry' -count 5 -timeout 60m
//
// Population is done once per device count and shared between runs of the
// same benchmark (it is not what is measured).

import (
	"fmt"
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"runtime"
	rtmetrics "runtime/metrics"
	"slices"
	"strconv"
	"strings"
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

// streamLen is the length of a benchmark goroutine's touch stream: a power
// of two, a multiple of batchLen, and long enough that the devices it
// touches are far more than the caches hold at any fleet size.
const (
	streamLen = 1 << 20
	batchLen  = 512 // ingest's default batch
)

// touchStreams returns one pre-generated stream of random touches over n
// devices per goroutine that RunParallel starts. Each id is its own string,
// laid out in the order it is used, as ingest hands over ids just parsed
// from the network: the benchmarks measure finding and updating a device,
// not a random walk over a slice of ids or the generation of random
// numbers. Every benchmark of touches, baselines included, uses them.
func touchStreams(n int) [][]Touch {
	streams := make([][]Touch, runtime.GOMAXPROCS(0))
	for g := range streams {
		rng := rand.New(rand.NewPCG(uint64(g), uint64(n)))
		s := make([]Touch, streamLen)
		for i := range s {
			s[i].ID = strconv.Itoa(1_000_000 + rng.IntN(n))
		}
		streams[g] = s
	}
	return streams
}

// benchClock hands out the touches' timestamps, in unix ns, for every
// benchmark of the process: always newer than any before, so that no run
// replays stamps an earlier run over the same fixture already stored (a
// touch no newer than last_seen changes nothing and costs less).
var benchClock atomic.Int64

func init() { benchClock.Store(t0.UnixNano()) }

// stamps reserves k consecutive timestamps and returns the first.
func stamps(k int64) int64 { return benchClock.Add(k) - k + 1 }

// streamFor returns the stream of the g-th goroutine of RunParallel,
// failing if there are fewer streams than goroutines (GOMAXPROCS changed
// since they were made): two goroutines must not share one.
func streamFor(streams [][]Touch, g int64) []Touch {
	if int(g) >= len(streams) {
		panic(fmt.Sprintf("benchmark goroutine %d of %d streams: make them after setting GOMAXPROCS", g, len(streams)))
	}
	return streams[g]
}

// lastSeenFunc returns the newest stamp stored for a device.
type lastSeenFunc func(id string) (ns int64, ok bool)

// runStreams runs body in each goroutine of RunParallel with the
// goroutine's own stream, reports touches/s, and checks that the run's
// touches were stored.
func runStreams(b *testing.B, streams [][]Touch, last lastSeenFunc, body func(s []Touch, pb *testing.PB)) {
	var seq atomic.Int64
	runStart := benchClock.Load()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) { body(streamFor(streams, seq.Add(1)-1), pb) })
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "touches/s")
	b.StopTimer()
	checkStamped(b, streams, runStart, last)
}

// touchLoop runs parallel touches of streams one at a time through touch.
func touchLoop(b *testing.B, streams [][]Touch, touch func(id string, at time.Time), last lastSeenFunc) {
	runStreams(b, streams, last, func(s []Touch, pb *testing.PB) {
		var next, end int64
		i := 0
		for pb.Next() {
			if next == end {
				next = stamps(64)
				end = next + 64
			}
			touch(s[i].ID, time.Unix(0, next))
			next++
			i = (i + 1) & (len(s) - 1)
		}
	})
}

// batchLoop runs parallel touches of streams in batches of batchLen through
// touchBatch, each batch stamped with one time as ingest stamps a batch
// received together.
func batchLoop(b *testing.B, streams [][]Touch, touchBatch func([]Touch), last lastSeenFunc) {
	runStreams(b, streams, last, func(s []Touch, pb *testing.PB) {
		lo, i := 0, 0
		flush := func() {
			at := time.Unix(0, stamps(1))
			batch := s[lo:i]
			for k := range batch {
				batch[k].At = at
			}
			touchBatch(batch)
			lo = i & (len(s) - 1)
			i = lo
		}
		for pb.Next() {
			if i++; i-lo == batchLen {
				flush()
			}
		}
		flush()
	})
}

// checkStamped verifies that the run's touches were stored (newer than
// runStart), not ignored as replays.
func checkStamped(b *testing.B, streams [][]Touch, runStart int64, last lastSeenFunc) {
	for _, s := range streams { // a goroutine that ran touched its stream's first device
		if ns, ok := last(s[0].ID); ok && ns > runStart {
			return
		}
	}
	b.Fatalf("no stream's first device was stored with a stamp of this run")
}

var touchCache sync.Map // n -> *touchFixture

type touchFixture struct {
	e       *Engine
	streams [][]Touch
}

// touchFixture returns an engine of n online devices with the two dirty
// trackers the daemon runs (Redis and Postgres), and touch streams over
// them, built once per size for the benchmarks of one run.
func loadTouchFixture(b *testing.B, n int) *touchFixture {
	var fx *touchFixture
	if v, ok := touchCache.Load(n); ok {
		fx = v.(*touchFixture)
	} else {
		e, _, _ := benchEngine(b, n, nil, 2)
		fx = &touchFixture{e: e}
		touchCache.Store(n, fx)
	}
	if len(fx.streams) != runtime.GOMAXPROCS(0) { // -cpu
		fx.streams = touchStreams(n)
	}
	return fx
}

// lastSeen is the engine's lastSeenFunc.
func (fx *touchFixture) lastSeen(id string) (int64, bool) {
	st, err := fx.e.Device(id)
	return st.LastSeen.UnixNano(), err == nil
}

func checkStillOnline(b *testing.B, e *Engine) {
	if s := e.Stats(); s.OfflineTransitions != 0 {
		b.Fatalf("devices went offline during the benchmark: %+v", s)
	}
}

// BenchmarkTouch: parallel touches of known online devices in random order,
// handed over as ingest hands them over: TouchBatch, batches of 512.
func BenchmarkTouch(b *testing.B) {
	for _, sz := range sizes {
		b.Run(sz.name, func(b *testing.B) {
			fx := loadTouchFixture(b, sz.n)
			batchLoop(b, fx.streams, func(batch []Touch) { fx.e.TouchBatch(batch) }, fx.lastSeen)
			checkStillOnline(b, fx.e)
		})
	}
}

// BenchmarkTouchOne: the same touches one Touch call at a time.
func BenchmarkTouchOne(b *testing.B) {
	for _, sz := range sizes {
		b.Run(sz.name, func(b *testing.B) {
			fx := loadTouchFixture(b, sz.n)
			touchLoop(b, fx.streams, func(id string, at time.Time) { fx.e.Touch(id, at) }, fx.lastSeen)
			checkStillOnline(b, fx.e)
		})
	}
	touchCache.Clear()
}

// mapFloor is the floor: a bare map[uint64]int64 in 256 shards behind
// locks, keyed by the same hash of the id, storing the newest timestamp.
// No validation, no timers, no status.
type mapFloor struct {
	seed   maphash.Seed
	shards [256]mapShard
}

type mapShard struct {
	mu sync.Mutex
	m  map[uint64]int64
	_  [40]byte
}

func newMapFloor(n int) *mapFloor {
	f := &mapFloor{seed: maphash.MakeSeed()}
	for i := range f.shards {
		f.shards[i].m = make(map[uint64]int64)
	}
	for _, id := range benchIDs(n) {
		f.touch(id, t0)
	}
	return f
}

func (f *mapFloor) touch(id string, at time.Time) {
	h := maphash.String(f.seed, id)
	sh := &f.shards[h>>56]
	ns := at.UnixNano()
	sh.mu.Lock()
	if ns > sh.m[h] {
		sh.m[h] = ns
	}
	sh.mu.Unlock()
}

func (f *mapFloor) lastSeen(id string) (int64, bool) {
	h := maphash.String(f.seed, id)
	sh := &f.shards[h>>56]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	ns, ok := sh.m[h]
	return ns, ok
}

// touchBatch groups a batch by shard and takes each lock once, as
// TouchBatch does (without warming: a map does not expose where an entry
// lives).
func (f *mapFloor) touchBatch(batch []Touch, hs []uint64, order []int32) {
	var count [257]int32
	for i := range batch {
		hs[i] = maphash.String(f.seed, batch[i].ID)
		count[hs[i]>>56+1]++
	}
	for s := 1; s <= 256; s++ {
		count[s] += count[s-1]
	}
	for i, h := range hs[:len(batch)] {
		order[count[h>>56]] = int32(i)
		count[h>>56]++
	}
	for lo := 0; lo < len(batch); {
		s := hs[order[lo]] >> 56
		sh := &f.shards[s]
		sh.mu.Lock()
		for ; lo < len(batch) && hs[order[lo]]>>56 == s; lo++ {
			i := order[lo]
			if ns := batch[i].At.UnixNano(); ns > sh.m[hs[i]] {
				sh.m[hs[i]] = ns
			}
		}
		sh.mu.Unlock()
	}
}

// BenchmarkTouchBaselineMap is the floor, one touch at a time.
func BenchmarkTouchBaselineMap(b *testing.B) {
	f, streams := newMapFloor(1_000_000), touchStreams(1_000_000)
	b.Run("devices=1M", func(b *testing.B) { touchLoop(b, streams, f.touch, f.lastSeen) })
}

// BenchmarkTouchBaselineMapBatch is the floor fed as BenchmarkTouch feeds
// the engine: batches of 512, one lock per shard per batch.
func BenchmarkTouchBaselineMapBatch(b *testing.B) {
	f, streams := newMapFloor(1_000_000), touchStreams(1_000_000)
	b.Run("devices=1M", func(b *testing.B) {
		type scratch struct {
			hs    []uint64
			order []int32
		}
		pool := sync.Pool{New: func() any { return &scratch{make([]uint64, batchLen), make([]int32, batchLen)} }}
		batchLoop(b, streams, func(batch []Touch) {
			sc := pool.Get().(*scratch)
			f.touchBatch(batch, sc.hs, sc.order)
			pool.Put(sc)
		}, f.lastSeen)
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

func (f *afterFuncFleet) lastSeen(id string) (int64, bool) {
	sh := &f.shards[maphash.String(f.seed, id)>>56]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if d := sh.m[id]; d != nil {
		return d.lastSeen, true
	}
	return 0, false
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
	// Built once: b.Run calls the function again for each b.N it tries.
	f := newAfterFuncFleet(time.Hour, func(string, *afterFuncDev) {})
	defer f.stop()
	for _, id := range benchIDs(1_000_000) {
		f.touch(id, t0)
	}
	streams := touchStreams(1_000_000)
	b.Run("devices=1M", func(b *testing.B) { touchLoop(b, streams, f.touch, f.lastSeen) })
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

// expireAll moves the clock past the deadline of the n devices touched at
// t0, advances the wheel and delivers until the sink (counting into got)
// has every offline transition.
func expireAll(b *testing.B, e *Engine, clk *clock, got *atomic.Int64, n int64) {
	now := t0.Add(time.Minute + DefaultConfig().Tick)
	clk.Set(now)
	e.Advance(now)
	for got.Load() < n {
		if e.Deliver() == 0 {
			b.Fatalf("only %d of %d expired: %+v", got.Load(), n, e.Stats())
		}
	}
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
			expireAll(b, e, clk, &got, n)
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

// massExpiryLive is how many other devices keep being touched, one call at
// a time, while the 1M expire in BenchmarkMassExpiryTouches and its
// baseline.
const massExpiryLive = 100_000

// liveIDs are the ids of the devices touched during a mass expiry.
func liveIDs() []string {
	live := make([]string, massExpiryLive)
	for i := range live {
		live[i] = "live-" + strconv.Itoa(i)
	}
	return live
}

// touchLatencies touches live round-robin, one call at a time, with ever
// newer stamps from at on, and records how long each call took, until
// stop is closed.
func touchLatencies(live []string, at time.Time, touch func(string, time.Time), stop <-chan struct{}) []time.Duration {
	lat := make([]time.Duration, 0, 1<<20)
	for i := 0; ; i++ {
		select {
		case <-stop:
			return lat
		default:
		}
		s := time.Now()
		touch(live[i%len(live)], at.Add(time.Duration(i)*time.Microsecond))
		lat = append(lat, time.Since(s))
	}
}

// reportLatencies reports the slowest touch, the 99.9th percentile and how
// many touches per second went through during d.
func reportLatencies(b *testing.B, lat []time.Duration, d time.Duration) {
	if len(lat) == 0 {
		b.Fatal("no touch went through during the expiry")
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)-1].Nanoseconds())/1e3, "touch-max-us")
	b.ReportMetric(float64(lat[len(lat)*999/1000].Nanoseconds())/1e3, "touch-p999-us")
	b.ReportMetric(float64(len(lat))/d.Seconds(), "touches/s")
}

// BenchmarkMassExpiryTouches: the mass expiry of BenchmarkMassExpiry while
// another goroutine keeps touching 100K other online devices, one Touch at
// a time: how long a touch waits while 1M devices expire (the expiry holds
// a shard's lock for Config.ChunkSize entries at most), and how many go
// through. Measured from Advance to the last transition handed over.
func BenchmarkMassExpiryTouches(b *testing.B) {
	b.Run("devices=1M", func(b *testing.B) {
		const n = 1_000_000
		var lat []time.Duration
		var elapsed time.Duration
		live := liveIDs()
		for range b.N {
			b.StopTimer()
			var got atomic.Int64
			sink := SinkFunc(func(batch []Transition) { got.Add(int64(len(batch))) })
			e, _, clk := benchEngine(b, n, sink, 2)
			for _, id := range live { // seen 30 s later: online through the expiry
				if err := e.Touch(id, t0.Add(30*time.Second)); err != nil {
					b.Fatal(err)
				}
			}
			for e.Deliver() > 0 {
			}
			got.Store(0)
			stop := make(chan struct{})
			var run []time.Duration
			var wg sync.WaitGroup
			b.StartTimer()
			wg.Go(func() {
				run = touchLatencies(live, t0.Add(31*time.Second), func(id string, at time.Time) { _ = e.Touch(id, at) }, stop)
			})
			start := time.Now()
			expireAll(b, e, clk, &got, n)
			elapsed += time.Since(start)
			close(stop)
			wg.Wait()
			b.StopTimer()
			if c := e.Counts(); c.Online != massExpiryLive || c.Offline != n {
				b.Fatalf("counts %+v after the expiry", c)
			}
			lat = append(lat, run...)
		}
		b.ReportMetric(float64(elapsed.Nanoseconds())/float64(b.N*n), "ns/expiry")
		reportLatencies(b, lat, elapsed)
	})
}

// BenchmarkMassExpiryTouchesBaselineAfterFunc: the same for the AfterFunc
// design: 1M timers fire at one instant while 100K other devices keep
// being touched (a map lookup and a timer Reset each).
func BenchmarkMassExpiryTouchesBaselineAfterFunc(b *testing.B) {
	b.Run("devices=1M", func(b *testing.B) {
		const n = 1_000_000
		var lat []time.Duration
		var elapsed time.Duration
		live := liveIDs()
		for range b.N {
			b.StopTimer()
			done := make(chan struct{})
			var fired atomic.Int64
			f := newAfterFuncFleet(time.Hour, func(string, *afterFuncDev) {
				if fired.Add(1) == n {
					close(done)
				}
			})
			popStart := time.Now()
			for i := range n {
				f.touch(strconv.Itoa(1_000_000+i), t0)
			}
			for _, id := range live {
				f.touch(id, t0.Add(30*time.Second))
			}
			// Re-aim the 1M timers at one instant (the live ones stay an
			// hour away): they all expire together.
			fireAt := time.Now().Add(2*time.Since(popStart) + time.Second)
			for i := range f.shards {
				for id, d := range f.shards[i].m {
					if !strings.HasPrefix(id, "live-") {
						d.timer.Reset(time.Until(fireAt))
					}
				}
			}
			if wait := time.Until(fireAt); wait > 5*time.Millisecond {
				time.Sleep(wait - 5*time.Millisecond)
			} else {
				b.Fatal("re-aiming the timers took longer than their delay")
			}
			stop := make(chan struct{})
			var run []time.Duration
			var wg sync.WaitGroup
			b.StartTimer()
			wg.Go(func() { run = touchLatencies(live, t0.Add(31*time.Second), f.touch, stop) })
			start := time.Now()
			<-done
			elapsed += time.Since(start)
			close(stop)
			wg.Wait()
			b.StopTimer()
			f.stop()
			lat = append(lat, run...)
		}
		b.ReportMetric(float64(elapsed.Nanoseconds())/float64(b.N*n), "ns/expiry")
		reportLatencies(b, lat, elapsed)
	})
}
