package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/app/daemon"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// BenchmarkDaemonMemory is issue 14's memory figure: the whole daemon
// in this process (Redis keys, the PostgreSQL devices table and history,
// the events' Redis Stream and Pub/Sub, the offline alerts, the device
// index; its defaults otherwise), devices=N devices online, then all
// offline together (a mass expiry), the live heap and the RSS per device
// measured after a forced GC in both steady states.
//
// Devices are made online by touching the engine (d.Engine().TouchBatch),
// 50,000 at a time, as BenchmarkMassExpiry does: ingest is not what is
// measured, and the benchmark keeps no id of its own. Each phase ends when
// the engine made every transition and the Redis and PostgreSQL writers
// have no dirty device left.
//
// Metrics: heap-B/device and rss-B/device online (steady) and after the
// expiry, each measured 22 s after the phase settled (the daemon returns a
// burst's freed memory to the OS every 10 s), with base-heap-MB the
// daemon's heap before the first device.
// PRESENCE_BENCH_HEAP_PROFILES=dir writes a heap profile of each phase
// there (go tool pprof -sample_index=inuse_space).
//
//	go test ./bench -run '^$' -bench DaemonMemory -benchtime 1x -count 1 -timeout 60m
func BenchmarkDaemonMemory(b *testing.B) {
	for _, n := range []int{1_000_000} {
		b.Run(fmt.Sprintf("devices=%d", n), func(b *testing.B) { benchDaemonMemory(b, n) })
	}
}

// settle is how long a phase is left before it is measured: two intervals
// of the daemon's memory returner (10 s; the first may come before the
// burst's garbage is collected), as a fleet at rest would be.
const settle = 22 * time.Second

func benchDaemonMemory(b *testing.B, n int) {
	f := newFixture(b, n)
	d, url := f.startFullDaemon(b)
	eng := d.Engine()
	base := liveHeap()

	// phase touches the fleet, waits until done, lets it rest, measures.
	phase := func(name string, timeout time.Duration, done func(engine.Stats) bool) (heap, rs uint64) {
		b.StartTimer()
		touchFleet(b, eng, n, time.Now(), timeout)
		waitSettled(b, eng, url, name, done)
		b.StopTimer()
		time.Sleep(settle)
		heap, rs = liveHeap(), rss()
		logMem(b, name, rs)
		heapProfile(b, name)
		return heap, rs
	}
	b.ResetTimer()
	b.StopTimer()
	onHeap, onRSS := phase("online", time.Hour,
		func(st engine.Stats) bool { return st.OnlineTransitions >= uint64(n) })
	// One deadline for the whole fleet.
	offHeap, offRSS := phase("expired", engine.MinTimeout,
		func(st engine.Stats) bool { return st.OfflineTransitions >= uint64(n) })

	per := func(v uint64) float64 { return float64(v) / float64(n) }
	b.ReportMetric(float64(base)/(1<<20), "base-heap-MB")
	b.ReportMetric(per(onHeap), "heap-B/device")
	b.ReportMetric(per(onRSS), "rss-B/device")
	b.ReportMetric(per(offHeap), "expired-heap-B/device")
	b.ReportMetric(per(offRSS), "expired-rss-B/device")
	var gc runtime.MemStats
	runtime.ReadMemStats(&gc)
	var worst time.Duration
	for _, p := range gc.PauseNs {
		worst = max(worst, time.Duration(p))
	}
	b.ReportMetric(float64(worst.Microseconds())/1000, "max-gc-pause-ms")
}

// waitSettled waits until want holds for the engine's stats, the engine
// has no transition queued, neither writer has a dirty device, no event
// destination an event queued and the history no row.
func waitSettled(b *testing.B, eng *engine.Engine, url, what string, want func(engine.Stats) bool) {
	b.Helper()
	testenv.Eventually(b, 30*time.Minute, func() error {
		if st := eng.Stats(); !want(st) || st.Queued > 0 {
			return fmt.Errorf("%s: engine %+v", what, st)
		}
		m, err := testenv.ScrapeMetrics(url + "/metrics")
		if err != nil {
			return err
		}
		if dirty := m["presence_writeback_dirty_devices"]; dirty > 0 {
			return fmt.Errorf("%s: %.0f dirty devices", what, dirty)
		}
		if q := m["presence_events_queued"]; q > 0 {
			return fmt.Errorf("%s: %.0f events queued", what, q)
		}
		if q := m["presence_writeback_history_queued"]; q > 0 {
			return fmt.Errorf("%s: %.0f history rows queued", what, q)
		}
		return nil
	})
}

// touchFleet touches devices "1".."n" through the engine, all at at with
// timeout, 50,000 a batch, keeping no id.
func touchFleet(b *testing.B, eng *engine.Engine, n int, at time.Time, timeout time.Duration) {
	b.Helper()
	batch := make([]engine.Touch, 0, 50_000)
	for lo := 1; lo <= n; lo += cap(batch) {
		batch = batch[:0]
		for id := lo; id < lo+cap(batch) && id <= n; id++ {
			batch = append(batch, engine.Touch{ID: strconv.Itoa(id), At: at, Timeout: timeout})
		}
		if r := eng.TouchBatch(batch); r != 0 {
			b.Fatalf("engine rejected %d touches", r)
		}
	}
}

// logMem logs where the process's memory is.
func logMem(b *testing.B, phase string, rss uint64) {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	b.Logf("%s: heap alloc %d MB, idle %d MB of which released %d MB, runtime sys %d MB, RSS %d MB",
		phase, m.HeapAlloc>>20, m.HeapIdle>>20, m.HeapReleased>>20, m.Sys>>20, rss>>20)
}

// liveHeap is the heap in use after two forced collections.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// rss is this process's resident set size (VmRSS), bytes.
func rss() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// heapProfile writes a heap profile of the phase when
// PRESENCE_BENCH_HEAP_PROFILES names a directory.
func heapProfile(b *testing.B, phase string) {
	dir := os.Getenv("PRESENCE_BENCH_HEAP_PROFILES")
	if dir == "" {
		return
	}
	p := filepath.Join(dir, strings.NewReplacer("/", "_", "=", "-").Replace(b.Name())+"-"+phase+".pprof")
	fh, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	defer fh.Close()
	runtime.GC()
	if err := pprof.Lookup("heap").WriteTo(fh, 0); err != nil {
		b.Fatal(err)
	}
	b.Logf("heap profile %s", p)
}

// startFullDaemon starts the daemon on f with PostgreSQL (devices table and
// history) besides Redis, waits until it is ready and returns it with the
// API's base URL.
func (f *fixture) startFullDaemon(b *testing.B) (*daemon.Daemon, string) {
	b.Helper()
	cfg := f.daemonConfig()
	cfg.Postgres.URL = testenv.DatabaseURL()
	cfg.Devices.Table = f.devices
	cfg.History.Table = f.history
	d := startBenchDaemon(b, cfg)
	testenv.Eventually(b, 30*time.Second, func() error { return getOK("http://" + d.HTTPAddr() + "/readyz") })
	return d, "http://" + d.HTTPAddr()
}
