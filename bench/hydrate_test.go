package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/app/daemon"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
	"github.com/presence-dev/presence/recovery"
)

// The stored fleet of BenchmarkHydrate: device i (1-based) is
//   - i%10 in 0..5 (60%): online, seen (i%20) s before the preload started,
//     so still within the default 60 s timeout when it is restored;
//   - i%10 in 6..7 (20%): online, seen 2-10 min ago: its deadline passed
//     while presence was down, so the restore turns it offline;
//   - i%10 in 8..9 (20%): offline, seen an hour ago.
const hydrateDevices = 1_000_000

type storedDevice struct {
	status   string
	lastSeen time.Time
}

func storedAt(i int, base time.Time) storedDevice {
	switch i % 10 {
	case 0, 1, 2, 3, 4, 5:
		return storedDevice{"online", base.Add(-time.Duration(i%20) * time.Second)}
	case 6, 7:
		return storedDevice{"online", base.Add(-2*time.Minute - time.Duration(i%480)*time.Second)}
	default:
		return storedDevice{"offline", base.Add(-time.Hour)}
	}
}

// BenchmarkHydrate is restart recovery: 1M devices' status and last-seen keys
// are in Redis; one op rebuilds a fresh engine from them with the daemon's
// own recovery (recovery.Recovery.Start), once each way:
//
//   - scan-seconds: the first start (no complete device index): recovery
//     walks the keyspace (SCAN) and reads the keys with the Redis sink's
//     ReadStates into engine.Restore, then fills the per-partition device
//     index;
//   - seconds: every later start: the index is complete, so Index.Devices
//     reads the 1024 sets (SSCAN) and the devices' keys, without walking
//     the keyspace.
//
// Afterwards the real daemon is started once on the same keys (index
// complete) and the duration it logs is reported as daemon-seconds.
//
//	go test ./bench -run '^$' -bench BenchmarkHydrate -benchtime 1x -count 3 -timeout 30m
func BenchmarkHydrate(b *testing.B) {
	b.Run("devices=1M", func(b *testing.B) { benchHydrate(b, hydrateDevices) })
}

func benchHydrate(b *testing.B, devices int) {
	f := newFixture(b, 0)
	ctx := context.Background()
	base := time.Now()
	preloadStart := time.Now()
	if err := preload(ctx, f, devices, func(i int) storedDevice { return storedAt(i, base) }); err != nil {
		b.Fatal(err)
	}
	b.Logf("preloaded %d devices (%d keys) in %v", devices, 2*devices, time.Since(preloadStart).Round(time.Millisecond))

	// SCAN walks the whole keyspace, not only this prefix: the other keys in
	// the database (other users of the server) cost time too.
	keyspace, err := f.rdb.DBSize(ctx).Result()
	if err != nil {
		b.Fatal(err)
	}
	var tookScan, tookIndex, tookPlain time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		// The first start: no complete index.
		if err := f.rdb.Del(ctx, f.prefix+"index:complete").Err(); err != nil {
			b.Fatal(err)
		}
		now := time.Now()
		eng, rec := hydrateTarget(b, f, now)
		b.StartTimer()
		start := time.Now()
		err := rec.Start(ctx)
		tookScan += time.Since(start)
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		verifyHydrated(b, eng, rec, devices, base, now)
		if ok, err := rec.Index().Complete(ctx); err != nil || !ok {
			b.Fatalf("index not complete after the first start: %v %v", ok, err)
		}

		now = time.Now()
		eng, rec = hydrateTarget(b, f, now)
		b.StartTimer()
		start = time.Now()
		err = rec.Start(ctx)
		tookIndex += time.Since(start)
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		verifyHydrated(b, eng, rec, devices, base, now)
		tookPlain += plainMGet(b, f, devices)
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(tookIndex.Seconds()/float64(b.N), "seconds")
	b.ReportMetric(tookPlain.Seconds()/float64(b.N), "plain-mget-seconds")
	b.ReportMetric(tookIndex.Seconds()/tookPlain.Seconds(), "x-plain")
	b.ReportMetric(tookScan.Seconds()/float64(b.N), "scan-seconds")
	b.ReportMetric(float64(devices), "devices")
	b.ReportMetric(float64(devices)/(tookIndex.Seconds()/float64(b.N)), "devices/s")
	b.ReportMetric(float64(keyspace), "redis-keys")
	if s, err := daemonHydrate(f.daemonConfig(), devices); err != nil { // Redis only, no Postgres
		b.Error(err)
	} else {
		b.ReportMetric(s.Seconds(), "daemon-seconds")
	}
}

// plainMGet is the ceiling of a rebuild: a plain go-redis client reading
// the two keys of devices 1..devices, MGETs of 1,000 keys in pipelines of
// 10 over 4 connections, the values kept. It returns the time taken.
func plainMGet(b *testing.B, f *fixture, devices int) time.Duration {
	b.Helper()
	const conns, mget, perPipe = 4, 1000, 10
	ctx := context.Background()
	start := time.Now()
	var wg sync.WaitGroup
	var read atomic.Int64
	for c := range conns {
		wg.Go(func() {
			keys := make([]string, 0, mget)
			for lo := 1 + c*mget*perPipe/2; lo <= devices; lo += conns * mget * perPipe / 2 {
				pipe := f.rdb.Pipeline()
				var cmds []*redis.SliceCmd
				for id := lo; id < lo+mget*perPipe/2 && id <= devices; id++ {
					keys = append(keys, f.prefix+"status:"+strconv.Itoa(id), f.prefix+"lastseen:"+strconv.Itoa(id))
					if len(keys) == mget {
						cmds = append(cmds, pipe.MGet(ctx, keys...))
						keys = make([]string, 0, mget)
					}
				}
				if len(keys) > 0 {
					cmds = append(cmds, pipe.MGet(ctx, keys...))
					keys = make([]string, 0, mget)
				}
				if _, err := pipe.Exec(ctx); err != nil {
					b.Error(err)
					return
				}
				for _, cmd := range cmds {
					read.Add(int64(len(cmd.Val())))
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	if got := read.Load(); got != 2*int64(devices) {
		b.Fatalf("the plain reader read %d keys, want %d", got, 2*devices)
	}
	return took
}

// preload writes the two keys of devices 1..devices on the machine's Redis
// (preloadOn).
func preload(ctx context.Context, f *fixture, devices int, stored func(i int) storedDevice) error {
	return preloadOn(ctx, f.rdb, f.prefix, devices, stored)
}

// hydrateTarget is what the daemon has built when it hydrates, on the
// machine's Redis through a fresh client (hydrateTargetOn).
func hydrateTarget(b *testing.B, f *fixture, now time.Time) (*engine.Engine, *recovery.Recovery) {
	return hydrateTargetOn(b, testenv.RedisClient(b, ""), f.prefix, now)
}

// verifyHydrated checks the restored fleet against what was stored: every
// device restored; online exactly those whose deadline is after now; the
// others offline, with one offline transition (cause restart) for each
// device that was online in Redis but whose deadline had passed.
func verifyHydrated(b *testing.B, eng *engine.Engine, rec *recovery.Recovery, devices int, base, now time.Time) {
	b.Helper()
	if err := rec.Ready(); err != nil {
		b.Fatal(err)
	}
	timeout := engine.DefaultConfig().DefaultTimeout
	var online, expired int
	for i := 1; i <= devices; i++ {
		d := storedAt(i, base)
		alive := d.lastSeen.Add(timeout).After(now)
		switch {
		case d.status == "online" && alive:
			online++
		case d.status == "online":
			expired++
		}
	}
	c, st := eng.Counts(), eng.Stats()
	if c.Total != devices || c.Online != online || c.Offline != devices-online ||
		st.OfflineTransitions != uint64(expired) {
		b.Fatalf("restored %d of %d devices: %+v, %d offline transitions; want %d online, %d offline, %d transitions",
			c.Total, devices, c, st.OfflineTransitions, online, devices-online, expired)
	}
	// Spot checks: one device of each kind.
	for _, i := range []int{1, 7, 9} {
		got, err := eng.Device(strconv.Itoa(i))
		want := storedAt(i, base)
		if err != nil || !got.LastSeen.Equal(want.lastSeen.Truncate(time.Microsecond)) {
			b.Fatalf("device %d: %+v, %v; stored %+v", i, got, err, want)
		}
	}
}

// daemonHydrate starts the real daemon with cfg on the stored keys, stops
// it once hydrated, and returns how long its start-up hydration took, as
// it logs it, after checking the device count it logs.
func daemonHydrate(cfg daemon.Config, devices int) (time.Duration, error) {
	logs := &hydrateLog{}
	d, err := daemon.New(cfg, slog.New(logs))
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Minute)
	for logs.get().took == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		return 0, fmt.Errorf("daemon: %w", err)
	}
	got := logs.get()
	if got.took == 0 {
		return 0, errors.New("daemon: no hydration logged within 10 minutes")
	}
	if got.devices != devices {
		return 0, fmt.Errorf("daemon hydrated %d devices, want %d", got.devices, devices)
	}
	return got.took, nil
}

// hydrateLog is a slog handler that keeps the daemon's "state rebuilt from
// Redis" record.
type hydrateLog struct {
	mu      sync.Mutex
	devices int
	took    time.Duration
}

type hydrateRecord struct {
	devices int
	took    time.Duration
}

func (h *hydrateLog) get() hydrateRecord {
	h.mu.Lock()
	defer h.mu.Unlock()
	return hydrateRecord{h.devices, h.took}
}

func (h *hydrateLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *hydrateLog) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *hydrateLog) WithGroup(string) slog.Handler            { return h }

func (h *hydrateLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "state rebuilt from Redis" {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "devices":
			h.devices = int(a.Value.Int64())
		case "took":
			h.took = a.Value.Duration()
		}
		return true
	})
	return nil
}
