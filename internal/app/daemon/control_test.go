package daemon

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/presence-dev/presence/cluster"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// A device's own timeout is stored in Redis, outlives a restart (the
// rebuild reads it back) and beats its pattern's; DELETE returns it to
// the default.
func TestTimeoutOverrideAcrossRestart(t *testing.T) {
	s := newStack(t, 401, 402)
	c := s.config() // default timeout 2 s
	r := startDaemon(t, c)
	s.publish(401, "telemetry", "x")
	s.publish(402, "telemetry", "x")
	testenv.Eventually(t, 5*time.Second, func() error {
		if r.d.Engine().Counts().Online != 2 {
			return fmt.Errorf("counts %+v", r.d.Engine().Counts())
		}
		return nil
	})
	code, body := r.do(t, "PUT", "/v1/devices/401/timeout", `{"timeout_seconds":3600}`)
	if code != 200 || !strings.Contains(body, `"timeout_seconds":3600,"timeout_source":"device"`) {
		t.Fatalf("PUT: %d %s", code, body)
	}
	if code, body := r.do(t, "PUT", "/v1/devices/999/timeout", `{"timeout_seconds":60}`); code != 404 {
		t.Fatalf("PUT of an unknown device: %d %s", code, body)
	}
	if v, err := s.rdb.HGet(context.Background(), timeoutsKey(c, "401"), "401").Result(); err != nil || v != "3600" {
		t.Fatalf("stored override %q %v", v, err)
	}
	if n := len(s.overrides(c)); n != 1 {
		t.Fatalf("%d overrides stored, want 1 (not the unknown device's)", n)
	}
	// 402 times out on the default; 401 stays online for its hour.
	testenv.Eventually(t, 10*time.Second, func() error { return redisAll(s, []string{"402"}, "offline") })
	if st, _, _ := s.redisState(401); st != "online" {
		t.Fatalf("401 %q, want online on its own hour", st)
	}
	r.stop(t)

	r = startDaemon(t, c)
	d, err := r.d.Engine().Device("401")
	if err != nil || d.Timeout != time.Hour || d.TimeoutSource.String() != "device" || d.Status.String() != "online" {
		t.Fatalf("401 after the restart: %+v %v", d, err)
	}
	var got string
	if err := r.get("/v1/devices/401", &got); err != nil || !strings.Contains(got, `"timeout_source":"device"`) {
		t.Fatalf("GET 401: %v %s", err, got)
	}
	// DELETE: back to the default 2 s, whose deadline has passed: offline
	// at once, cause timeout, and the stored override is gone.
	if code, body := r.do(t, "DELETE", "/v1/devices/401/timeout", ""); code != 200 || !strings.Contains(body, `"timeout_source":"default"`) {
		t.Fatalf("DELETE: %d %s", code, body)
	}
	if n := len(s.overrides(c)); n != 0 {
		t.Fatalf("%d overrides left after DELETE", n)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if h := s.historyOf(401); len(h) != 2 || h[1].status != "offline" || h[1].cause != "timeout" {
			return fmt.Errorf("401 history %+v", h)
		}
		return nil
	})
}

// DELETE /v1/devices/{id} forgets a device everywhere but in the history:
// its Redis keys and index entry go, a removed event reaches the stream,
// its Postgres row and history stay; its next message brings it back.
func TestDecommissionEndToEnd(t *testing.T) {
	s := newStack(t, 501, 502)
	c := s.config()
	r := startDaemon(t, c)
	s.publish(501, "telemetry", "x")
	s.publish(502, "telemetry", "x")
	ctx := context.Background()
	indexKey := c.Keys.KeyPrefix + "index:" + fmt.Sprint(cluster.PartitionOf("501", c.Recovery.Index.Partitions))
	testenv.Eventually(t, 5*time.Second, func() error {
		if err := redisAll(s, []string{"501"}, "online"); err != nil {
			return err
		}
		if ok, _ := s.rdb.SIsMember(ctx, indexKey, "501").Result(); !ok {
			return fmt.Errorf("501 not in the index %s", indexKey)
		}
		_, _, err := s.pgState(501) // the row, written, is what the removal must keep
		return err
	})
	if code, body := r.do(t, "PUT", "/v1/devices/501/timeout", `{"timeout_seconds":600}`); code != 200 {
		t.Fatalf("PUT: %d %s", code, body)
	}
	if code, body := r.do(t, "DELETE", "/v1/devices/501", ""); code != 200 || body != `{"id":"501","removed":true}`+"\n" {
		t.Fatalf("DELETE: %d %s", code, body)
	}
	if code, _ := r.do(t, "GET", "/v1/devices/501", ""); code != 404 {
		t.Fatalf("GET after DELETE: %d", code)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		n, err := s.rdb.Exists(ctx, c.Keys.KeyPrefix+"status:501", c.Keys.KeyPrefix+"lastseen:501").Result()
		if err != nil || n != 0 {
			return fmt.Errorf("%d keys of 501 left (%v)", n, err)
		}
		if ok, _ := s.rdb.SIsMember(ctx, indexKey, "501").Result(); ok {
			return fmt.Errorf("501 still in the index")
		}
		if ok, _ := s.rdb.HExists(ctx, timeoutsKey(c, "501"), "501").Result(); ok {
			return fmt.Errorf("501's override left")
		}
		entries, err := s.rdb.XRange(ctx, c.Events.Stream.Key, "-", "+").Result()
		if err != nil {
			return err
		}
		for _, e := range entries {
			if e.Values["type"] == "removed" && e.Values["id"] == "501" && e.Values["previous"] == "online" && e.Values["cause"] == "api" {
				return nil
			}
		}
		return fmt.Errorf("no removed event for 501 in %d stream entries", len(entries))
	})
	if st, _, err := s.redisState(502); err != nil || st == "" {
		t.Fatalf("502 touched by 501's removal: %q %v", st, err)
	}
	if _, _, err := s.pgState(501); err != nil {
		t.Fatalf("501's Postgres row: %v (kept: the table is the consumers')", err)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if h := s.historyOf(501); len(h) != 1 || h[0].status != "online" {
			return fmt.Errorf("501's history %+v, want its online row kept and nothing for the removal", h)
		}
		return nil
	})
	// Back as new with its next message, on the default timeout.
	s.publish(501, "telemetry", "x")
	testenv.Eventually(t, 5*time.Second, func() error {
		d, err := r.d.Engine().Device("501")
		if err != nil || d.TimeoutSource.String() != "default" {
			return fmt.Errorf("501: %+v %v", d, err)
		}
		if st, _, err := s.redisState(501); err != nil || st != "online" {
			return fmt.Errorf("501 in redis: %q %v", st, err)
		}
		return nil
	})
	m, err := testenv.ScrapeMetrics("http://" + r.d.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if m["presence_engine_decommissioned_total"] != 1 || m[`presence_api_controls_total{control="decommission",result="applied"}`] != 1 {
		t.Errorf("metrics: decommissioned %v, api %v", m["presence_engine_decommissioned_total"],
			m[`presence_api_controls_total{control="decommission",result="applied"}`])
	}
}

// A device that flaps raises one flapping event on the stream and shows
// "flapping": true in GET while its status events keep flowing.
func TestFlappingEndToEnd(t *testing.T) {
	s := newStack(t, 601)
	c := s.config()
	c.Engine.DefaultTimeout = time.Minute
	c.Events.Alerts.Flapping.Changes, c.Events.Alerts.Flapping.Window = 3, time.Minute
	r := startDaemon(t, c)
	for i := range 5 { // online, offline, online, offline, online
		if i%2 == 0 {
			s.publish(601, "telemetry", "x")
		} else {
			s.publish(601, "status", "offline")
		}
		want := map[bool]string{true: "online", false: "offline"}[i%2 == 0]
		testenv.Eventually(t, 5*time.Second, func() error {
			if d, err := r.d.Engine().Device("601"); err != nil || d.Status.String() != want {
				return fmt.Errorf("601: %+v %v, want %s", d, err, want)
			}
			return nil
		})
	}
	var body string
	if err := r.get("/v1/devices/601", &body); err != nil || !strings.Contains(body, `"flapping":true`) {
		t.Fatalf("GET 601: %v %s", err, body)
	}
	ctx := context.Background()
	testenv.Eventually(t, 5*time.Second, func() error {
		entries, err := s.rdb.XRange(ctx, c.Events.Stream.Key, "-", "+").Result()
		if err != nil {
			return err
		}
		flapping, statuses := 0, 0
		for _, e := range entries {
			switch e.Values["type"] {
			case "flapping":
				flapping++
			case "status":
				statuses++
			}
		}
		if flapping != 1 || statuses != 5 {
			return fmt.Errorf("%d flapping and %d status events, want 1 and 5", flapping, statuses)
		}
		return nil
	})
}

// The batch forms against the real stores: overrides stored, then the
// devices decommissioned and their keys gone.
func TestBatchControlsEndToEnd(t *testing.T) {
	s := newStack(t, 701, 702)
	c := s.config()
	r := startDaemon(t, c)
	s.publish(701, "telemetry", "x")
	s.publish(702, "telemetry", "x")
	ctx := context.Background()
	testenv.Eventually(t, 5*time.Second, func() error { return redisAll(s, []string{"701", "702"}, "online") })
	code, body := r.do(t, "POST", "/v1/devices:batchSetTimeout",
		`{"timeouts":[{"id":"701","timeout_seconds":900},{"id":"702","timeout_seconds":900},{"id":"799","timeout_seconds":900}]}`)
	if code != 200 || body != `{"accepted":2,"forwarded":0,"rejected":[{"id":"799","reason":"not_found"}]}`+"\n" {
		t.Fatalf("batchSetTimeout: %d %s", code, body)
	}
	if m := s.overrides(c); len(m) != 2 || m["701"] != "900" {
		t.Fatalf("stored overrides %v", m)
	}
	code, body = r.do(t, "POST", "/v1/devices:batchDecommission", `{"ids":["701","702","bad/id"]}`)
	if code != 200 || body != `{"accepted":2,"forwarded":0,"rejected":[{"id":"bad/id","reason":"invalid_id"}]}`+"\n" {
		t.Fatalf("batchDecommission: %d %s", code, body)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		n, err := s.rdb.Exists(ctx, c.Keys.KeyPrefix+"status:701", c.Keys.KeyPrefix+"lastseen:701",
			c.Keys.KeyPrefix+"status:702", c.Keys.KeyPrefix+"lastseen:702", c.Keys.KeyPrefix+"timeouts").Result()
		if err != nil || n != 0 {
			return fmt.Errorf("%d keys left (%v)", n, err)
		}
		return nil
	})
	if c := r.d.Engine().Counts(); c.Total != 0 {
		t.Fatalf("counts %+v after decommissioning both", c)
	}
}
