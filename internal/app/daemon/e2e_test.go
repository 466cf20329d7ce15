package daemon

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// Devices publish; Redis and Postgres show them online with a fresh
// last-seen; those that stop go offline no earlier than their deadline and
// within deadline + tick + flush; the others stay online; history has both
// transitions.
func TestEndToEnd(t *testing.T) {
	s := newStack(t, 101, 102, 103, 104, 105, 106)
	c := s.config()
	r := startDaemon(t, c)

	start := time.Now()
	for id := 101; id <= 107; id++ {
		s.publish(id, "telemetry", `{"temp":21.5}`)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		for id := 101; id <= 107; id++ {
			st, seen, err := s.redisState(id)
			if err != nil {
				return err
			}
			if st != "online" || seen.Before(start.Add(-time.Second)) || seen.After(time.Now()) {
				return fmt.Errorf("device %d in redis: %s %v", id, st, seen)
			}
		}
		for id := 101; id <= 106; id++ {
			st, seen, err := s.pgState(id)
			if err != nil {
				return err
			}
			if st != "online" || seen.Before(start.Add(-time.Second)) {
				return fmt.Errorf("device %d in postgres: %s %v", id, st, seen)
			}
		}
		return nil
	})
	var n int
	if err := s.pool.QueryRow(context.Background(), "SELECT count(*) FROM "+s.devices).Scan(&n); err != nil || n != 6 {
		t.Fatalf("devices rows %d (%v): an unknown device was inserted", n, err)
	}
	var body string
	if err := r.get("/v1/devices/107", &body); err != nil || !strings.Contains(body, `"status":"online"`) {
		t.Fatalf("API: %v %s", err, body)
	}

	// 101..103 keep talking; 104..106 fall silent now.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(400 * time.Millisecond):
				for id := 101; id <= 103; id++ {
					s.publish(id, "telemetry", "{}")
				}
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	firstPub := time.Now()
	for id := 104; id <= 106; id++ {
		s.publish(id, "telemetry", "{}")
	}
	lastPub := time.Now()

	var offAt time.Time
	testenv.Eventually(t, 6*time.Second, func() error {
		st, _, err := s.redisState(104)
		if err != nil || st != "offline" {
			return fmt.Errorf("104 is %q (%v)", st, err)
		}
		offAt = time.Now()
		return nil
	})
	// The deadline is the daemon's receive time of 104 + 2 s: after
	// firstPub, and (publish waits for the broker, not the daemon) at
	// most a moment after lastPub.
	if early := offAt.Sub(firstPub) - c.Engine.DefaultTimeout; early < 0 {
		t.Fatalf("offline seen %v before the deadline", -early)
	}
	if late := offAt.Sub(lastPub) - c.Engine.DefaultTimeout; late > c.Engine.Tick+c.Keys.Flush.Interval+time.Second {
		t.Fatalf("offline seen %v after the deadline (tick %v, flush %v)", late, c.Engine.Tick, c.Keys.Flush.Interval)
	}
	testenv.Eventually(t, 3*time.Second, func() error {
		for id := 104; id <= 106; id++ {
			if st, _, err := s.pgState(id); err != nil || st != "offline" {
				return fmt.Errorf("device %d in postgres: %q %v", id, st, err)
			}
			if h := s.historyOf(id); len(h) != 2 || h[0].status != "online" || h[1].status != "offline" || h[1].cause != "timeout" {
				return fmt.Errorf("history of %d: %+v", id, h)
			}
		}
		return nil
	})
	_, seen, _ := s.redisState(104)
	if h := s.historyOf(104); !h[1].at.Equal(seen.Add(c.Engine.DefaultTimeout)) {
		t.Fatalf("offline at %v, want last seen %v + %v", h[1].at, seen, c.Engine.DefaultTimeout)
	}
	for id := 101; id <= 103; id++ {
		if st, _, err := s.redisState(id); err != nil || st != "online" {
			t.Fatalf("talking device %d is %q (%v)", id, st, err)
		}
	}

	// History, uptime, the operations list and the dashboard are served.
	var hist, up, list, page string
	for path, body := range map[string]*string{
		"/v1/devices/104/history":             &hist,
		"/v1/devices/104/uptime?from=-1h":     &up,
		"/v1/devices?status=offline&limit=10": &list,
		"/":                                   &page,
	} {
		if err := r.get(path, body); err != nil {
			t.Fatal(err)
		}
	}
	if !strings.Contains(hist, `"cause":"timeout"`) || !strings.Contains(hist, `"cause":"telemetry"`) {
		t.Fatalf("history: %s", hist)
	}
	if !strings.Contains(up, `"changes":2`) || !strings.Contains(up, `"status_at_to":"offline"`) {
		t.Fatalf("uptime: %s", up)
	}
	if !strings.Contains(list, `"104"`) || strings.Contains(list, `"101"`) {
		t.Fatalf("offline list: %s", list)
	}
	if !strings.Contains(page, "<html") {
		t.Fatalf("dashboard: %.200s", page)
	}
}

// An "offline" status message (a Last Will) acts at once, long before the
// timeout; the next message brings the device back.
func TestLastWillActsAtOnce(t *testing.T) {
	s := newStack(t, 201)
	c := s.config()
	c.Engine.DefaultTimeout = time.Minute
	startDaemon(t, c)
	s.publish(201, "telemetry", "{}")
	testenv.Eventually(t, 5*time.Second, func() error {
		if st, _, err := s.redisState(201); err != nil || st != "online" {
			return fmt.Errorf("%q %v", st, err)
		}
		return nil
	})
	sent := time.Now()
	s.publish(201, "status", "offline")
	testenv.Eventually(t, 5*time.Second, func() error {
		if st, _, err := s.redisState(201); err != nil || st != "offline" {
			return fmt.Errorf("%q %v", st, err)
		}
		return nil
	})
	// At once: far below the one-minute timeout (3 s: a loaded machine).
	if took := time.Since(sent); took > 3*time.Second {
		t.Fatalf("last will took %v", took)
	}
	s.publish(201, "telemetry", "{}")
	testenv.Eventually(t, 3*time.Second, func() error {
		h := s.historyOf(201)
		if len(h) != 3 || h[1].cause != "last_will" || h[2].status != "online" {
			return fmt.Errorf("history %+v", h)
		}
		return nil
	})
}

// Garbage topics and payloads are dropped and counted; the daemon stays
// healthy and keeps serving good messages.
func TestGarbageLeavesDaemonHealthy(t *testing.T) {
	s := newStack(t)
	c := s.config()
	r := startDaemon(t, c)
	long := strings.Repeat("x", 300)
	for _, g := range []struct{ topic, payload string }{
		{s.name + "/devices/" + long + "/telemetry", "{}"},             // topic too long
		{s.name + "/devices/with space/telemetry", "{}"},               // invalid id
		{s.name + "/devices/7/status", "maybe"},                        // unknown status
		{s.name + "/devices/8/telemetry", strings.Repeat("z", 70_000)}, // payload too large
		{s.name + "/devices/9/telemetry", "\x00\xff\xfe binary is fine"},
	} {
		s.publishRaw(g.topic, g.payload)
	}
	s.publish(10, "telemetry", "{}")
	testenv.Eventually(t, 5*time.Second, func() error {
		for _, id := range []int{9, 10} {
			if st, _, err := s.redisState(id); err != nil || st != "online" {
				return fmt.Errorf("device %d: %q %v", id, st, err)
			}
		}
		return nil
	})
	for _, path := range []string{"/healthz", "/readyz", "/v1/stats"} {
		if err := r.get(path, nil); err != nil {
			t.Fatal(err)
		}
	}
	var m string
	if err := r.get("/metrics", &m); err != nil {
		t.Fatal(err)
	}
	for _, reason := range []string{"topic_too_long", "invalid_id", "bad_status", "payload_too_large"} {
		if !strings.Contains(m, `reason="`+reason+`"} 1`) {
			t.Errorf("metrics lack one drop for %s", reason)
		}
	}
	if c := r.d.Engine().Counts(); c.Total != 2 {
		t.Fatalf("devices %+v, want only 9 and 10", c)
	}
}

// A device whose deadline passes while presenced is down is reported
// offline at the next start, with cause restart; the others are re-armed.
func TestRestartRecovery(t *testing.T) {
	s := newStack(t, 301, 302)
	c := s.config()
	c.Engine.DefaultTimeout = 2 * time.Second
	a := startDaemon(t, c)
	s.publish(301, "telemetry", "{}")
	s.publish(302, "telemetry", "{}")
	testenv.Eventually(t, 5*time.Second, func() error {
		for _, id := range []int{301, 302} {
			if st, _, err := s.redisState(id); err != nil || st != "online" {
				return fmt.Errorf("device %d: %q %v", id, st, err)
			}
		}
		return nil
	})
	a.stop(t) // a clean stop: nothing else changes in Redis
	time.Sleep(c.Engine.DefaultTimeout + 500*time.Millisecond)

	b := startDaemon(t, c)
	testenv.Eventually(t, 5*time.Second, func() error {
		for _, id := range []int{301, 302} {
			if st, _, err := s.redisState(id); err != nil || st != "offline" {
				return fmt.Errorf("device %d: %q %v", id, st, err)
			}
			if h := s.historyOf(id); len(h) != 2 || h[1].cause != "restart" {
				return fmt.Errorf("history of %d: %+v", id, h)
			}
		}
		return nil
	})
	if st, err := b.d.Engine().Device("302"); err != nil || st.Since.IsZero() {
		t.Fatalf("302 after restart: %+v %v", st, err)
	}
}
