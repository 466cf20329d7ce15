package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/jackc/pgx/v5"

	"github.com/presence-dev/presence/internal/testsupport/testenv"
	"github.com/presence-dev/presence/internal/wire"
)

// clock is a settable clock for the seed tracker.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// The port behaves as SEED.md describes: a message makes the device online
// in Redis (status, ISO last seen, 24 h TTL) and Postgres (last_seen); after
// the timeout without a message check_and_update_status turns it offline in
// Redis and in the status column; a new message brings it back.
func TestSeedTrackerOnlineOffline(t *testing.T) {
	f := newFixture(t, 3)
	ctx := context.Background()
	clk := &clock{t: time.Date(2025, 12, 14, 10, 30, 45, 123456789, time.UTC)}
	t0 := clk.Now()
	tr, err := NewSeedTracker(f.rdb, f.pool, SeedConfig{KeyPrefix: f.prefix, Table: f.devices, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}

	redisState := func(id int64) (status, lastSeen string) {
		t.Helper()
		vals, err := f.rdb.MGet(ctx, fmt.Sprint(f.prefix, "status:", id), fmt.Sprint(f.prefix, "lastseen:", id)).Result()
		if err != nil {
			t.Fatal(err)
		}
		status, _ = vals[0].(string)
		lastSeen, _ = vals[1].(string)
		return status, lastSeen
	}
	pgState := func(id int64) (status *string, lastSeen *time.Time) {
		t.Helper()
		err := f.pool.QueryRow(ctx, "SELECT status, last_seen FROM "+pgx.Identifier{f.devices}.Sanitize()+" WHERE id = $1", id).
			Scan(&status, &lastSeen)
		if err != nil {
			t.Fatal(err)
		}
		return status, lastSeen
	}
	check := func(when string, id int64, want SeedStatus) {
		t.Helper()
		got, err := tr.CheckAndUpdateStatus(ctx, id)
		if err != nil || got != want {
			t.Fatalf("%s: check_and_update_status(%d) = %q, %v; want %q", when, id, got, err, want)
		}
		if st, _ := redisState(id); st != string(want) {
			t.Fatalf("%s: Redis status %q, want %q", when, st, want)
		}
	}

	// A message: online in Redis, with the seed's key layout and TTL.
	if err := tr.UpdateDeviceActivity(ctx, 1); err != nil {
		t.Fatal(err)
	}
	st, ls := redisState(1)
	if st != "online" || ls != "2025-12-14T10:30:45.123456+00:00" {
		t.Fatalf("after a message: Redis %q %q", st, ls)
	}
	if ttl := f.rdb.TTL(ctx, fmt.Sprint(f.prefix, "lastseen:1")).Val(); ttl < 24*time.Hour-time.Minute || ttl > 24*time.Hour {
		t.Fatalf("last-seen TTL %v, want 24h", ttl)
	}
	if _, pgLS := pgState(1); pgLS == nil || !pgLS.Equal(t0.Truncate(time.Microsecond)) {
		t.Fatalf("Postgres last_seen %v, want %v", pgLS, t0)
	}
	if got, ok, err := tr.LastSeen(ctx, 1); err != nil || !ok || !got.Equal(t0.Truncate(time.Microsecond)) {
		t.Fatalf("get_last_seen = %v %v %v", got, ok, err)
	}

	// Online until the timeout, offline from it (now - last_seen < 60 s).
	clk.Set(t0.Add(59 * time.Second))
	check("59 s later", 1, SeedOnline)
	if s, _ := pgState(1); s != nil {
		t.Fatalf("status column written without a change: %q", *s)
	}
	clk.Set(t0.Add(60 * time.Second))
	check("60 s later", 1, SeedOffline)
	if s, _ := pgState(1); s == nil || *s != "offline" {
		t.Fatalf("Postgres status %v, want offline", s)
	}

	// Back with the next message. update_device_activity writes "online"
	// to Redis itself, so the next check sees no change and the seed never
	// writes "online" back to the status column: a faithful port keeps that
	// gap (presence writes status and last_seen together).
	if err := tr.UpdateDeviceActivity(ctx, 1); err != nil {
		t.Fatal(err)
	}
	check("after a new message", 1, SeedOnline)
	if s, _ := pgState(1); s == nil || *s != "offline" {
		t.Fatalf("Postgres status %v, want the seed's stale offline", s)
	}

	// A device never seen is offline and has no last seen.
	if s, err := tr.DeviceStatus(ctx, 2); err != nil || s != SeedOffline {
		t.Fatalf("unknown device: %q %v", s, err)
	}
	if _, ok, err := tr.LastSeen(ctx, 2); ok || err != nil {
		t.Fatalf("unknown device has a last seen: %v %v", ok, err)
	}
}

// The background monitor finds a silent device offline within a sweep.
func TestSeedMonitor(t *testing.T) {
	f := newFixture(t, 3)
	clk := &clock{t: time.Now()}
	tr, err := NewSeedTracker(f.rdb, f.pool, SeedConfig{KeyPrefix: f.prefix, Table: f.devices, Now: clk.Now, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, id := range []int64{1, 2} {
		if err := tr.UpdateDeviceActivity(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	clk.Set(clk.Now().Add(time.Minute))
	if err := tr.UpdateDeviceActivity(ctx, 2); err != nil { // 2 keeps talking
		t.Fatal(err)
	}
	var mu sync.Mutex
	offline := map[int64]int{}
	done := make(chan error, 1)
	go func() {
		n, err := tr.Monitor(ctx, []int64{1, 2, 3}, 10*time.Millisecond, func(id int64) {
			mu.Lock()
			offline[id]++
			mu.Unlock()
		})
		if n > 0 {
			err = fmt.Errorf("%d failed checks, first: %w", n, err)
		}
		done <- err
	}()
	testenv.Eventually(t, 10*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if offline[1] == 0 || offline[3] == 0 {
			return fmt.Errorf("offline so far: %v", offline)
		}
		return nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if offline[2] != 0 {
		t.Fatalf("device 2 reported offline while talking")
	}
	if st := f.rdb.Get(context.Background(), f.prefix+"status:1").Val(); st != "offline" {
		t.Fatalf("device 1 status %q", st)
	}
}

// Through the real broker: the subscriber hands each telemetry message to
// update_device_activity, as the seed-design system of BenchmarkEndToEnd does.
func TestSeedThroughBroker(t *testing.T) {
	f := newFixture(t, 3)
	tr, err := NewSeedTracker(f.rdb, f.pool, SeedConfig{KeyPrefix: f.prefix, Table: f.devices})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	errs := make(chan error, 10)
	sub, err := Subscribe(subscriberConfig(f), func(_ int, m mqtt.Message) {
		id, err := DeviceID(m.Topic())
		if err == nil {
			err = tr.UpdateDeviceActivity(ctx, id)
		}
		if err != nil {
			errs <- err
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	pub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(testenv.MQTTURL()).SetClientID(f.name + "-pub"))
	if tok := pub.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer pub.Disconnect(100)
	before := time.Now()
	for _, id := range []int64{1, 3} {
		if tok := pub.Publish(f.topic(id), 1, false, `{"temp":21.5}`); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		select {
		case err := <-errs:
			t.Fatal(err)
		default:
		}
		for _, id := range []int64{1, 3} {
			ls, ok, err := tr.LastSeen(ctx, id)
			if err != nil {
				return err
			}
			if !ok || ls.Before(before.Truncate(time.Microsecond)) {
				return fmt.Errorf("device %d not seen yet", id)
			}
		}
		var n int
		err := f.pool.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{f.devices}.Sanitize()+" WHERE last_seen IS NOT NULL").Scan(&n)
		if err == nil && n != 2 {
			err = errors.New("Postgres rows not updated yet")
		}
		return err
	})
	if s, err := tr.DeviceStatus(ctx, 2); err != nil || s != SeedOffline {
		t.Fatalf("device 2 never published: %q %v", s, err)
	}
}

func TestDeviceID(t *testing.T) {
	check := func(topic string, want int64, wantErr bool) {
		t.Helper()
		got, err := DeviceID(topic)
		if (err != nil) != wantErr || got != want {
			t.Errorf("DeviceID(%q) = %d, %v; want %d (error %v)", topic, got, err, want, wantErr)
		}
	}
	check("root/devices/42/telemetry", 42, false)
	check("devices/7/telemetry", 7, false)
	check("root/devices/x/telemetry", 0, true)
	check("telemetry", 0, true)
}

func TestLastSeenFormatMatchesSeed(t *testing.T) {
	// The seed writes datetime.now(timezone.utc).isoformat(); the port
	// writes the same bytes through wire.FormatTime.
	got := wire.FormatTime(time.Date(2025, 12, 14, 10, 30, 45, 123456000, time.UTC))
	if want := "2025-12-14T10:30:45.123456+00:00"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}
