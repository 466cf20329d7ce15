package events

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

var t0 = time.Date(2025, 12, 14, 10, 30, 45, 123456789, time.UTC)

func quietLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

// bareConfig has every destination and alert off, and fast retries.
func bareConfig() Config {
	c := DefaultConfig()
	c.PubSub.Enabled, c.Stream.Enabled, c.SSE.Enabled = false, false, false
	c.Alerts.OfflineAfter, c.Alerts.Mass.Enabled, c.Alerts.Flapping.Changes = 0, false, 0
	fast := func(d *DeliveryConfig) {
		// A generous Timeout: a retry after one sends the whole batch again,
		// duplicates the exactly-once-in-order checks would count.
		d.MinBackoff, d.MaxBackoff, d.Timeout = 5*time.Millisecond, 50*time.Millisecond, 10*time.Second
	}
	fast(&c.PubSub.Delivery)
	fast(&c.Stream.Delivery)
	fast(&c.MQTT.Delivery)
	fast(&c.SSE.Delivery)
	return c
}

func newRedis(t testing.TB) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(testenv.RedisURL())
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	if err := c.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("redis at %s: %v", testenv.RedisURL(), err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// runHub runs h until the test ends, then closes it.
func runHub(t testing.TB, h *Hub) {
	t.Helper()
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer ccancel()
		if err := h.Close(cctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
}

func tr(id string, from, to engine.Status, at time.Time, cause engine.Cause) engine.Transition {
	return engine.Transition{ID: id, From: from, To: to, At: at, Cause: cause}
}

// trace is a sequence of plausible transitions: devices alternate
// online/offline, each with increasing times; every device starts with
// its first message (previous "unknown").
func trace(devices, perDevice int, seed uint64) []engine.Transition {
	rng := rand.New(rand.NewPCG(seed, 1))
	status := make([]engine.Status, devices)
	left := make([]int, devices)
	for i := range left {
		left[i] = perDevice
	}
	var out []engine.Transition
	at := t0
	remaining := devices * perDevice
	for remaining > 0 {
		d := rng.IntN(devices)
		if left[d] == 0 {
			continue
		}
		left[d]--
		remaining--
		at = at.Add(time.Duration(rng.IntN(1000)) * time.Microsecond)
		from := status[d]
		to, cause := engine.StatusOnline, engine.CauseTelemetry
		if from == engine.StatusOnline {
			to, cause = engine.StatusOffline, engine.CauseTimeout
			if rng.IntN(4) == 0 {
				cause = engine.CauseLastWill
			}
		}
		status[d] = to
		out = append(out, tr(fmt.Sprintf("dev-%04d", d), from, to, at, cause))
	}
	return out
}

// feed hands the trace to the hub in batches of varying size, reusing the
// batch slice as the engine does.
func feed(h *Hub, ts []engine.Transition, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 2))
	batch := make([]engine.Transition, 0, 300)
	for len(ts) > 0 {
		n := min(1+rng.IntN(300), len(ts))
		batch = append(batch[:0], ts[:n]...)
		h.HandleTransitions(batch)
		clear(batch)
		ts = ts[n:]
	}
}

// checkOnceInOrder verifies that got (status events, in arrival order) has
// each transition of want exactly once and in order per device.
func checkOnceInOrder(t testing.TB, want []engine.Transition, got []Event) {
	t.Helper()
	type key struct{ id, at, status string }
	perDev := map[string][]key{}
	for _, w := range want {
		perDev[w.ID] = append(perDev[w.ID], key{w.ID, w.At.UTC().Format(TimeLayout), w.To.String()})
	}
	gotDev := map[string][]key{}
	n := 0
	for _, e := range got {
		if e.Type != "status" {
			continue
		}
		n++
		gotDev[e.ID] = append(gotDev[e.ID], key{e.ID, e.At.UTC().Format(TimeLayout), e.Status})
	}
	if n != len(want) {
		t.Fatalf("got %d status events, want %d", n, len(want))
	}
	for id, w := range perDev {
		g := gotDev[id]
		if len(g) != len(w) {
			t.Fatalf("device %s: got %d events, want %d", id, len(g), len(w))
		}
		for i := range w {
			if g[i] != w[i] {
				t.Fatalf("device %s event %d: got %+v, want %+v", id, i, g[i], w[i])
			}
		}
	}
}

func decode(t testing.TB, b []byte) Event {
	t.Helper()
	var e Event
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("decode %q: %v", b, err)
	}
	return e
}

// captureSender records what it is sent; fail makes sends fail.
type captureSender struct {
	mu   sync.Mutex
	got  []rec
	fail bool
	only func(Type) bool
}

func (c *captureSender) accepts(t Type) bool { return c.only == nil || c.only(t) }

func (c *captureSender) send(_ context.Context, batch []rec) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fail {
		return io.ErrUnexpectedEOF
	}
	c.got = append(c.got, batch...)
	return nil
}

func (c *captureSender) take() []rec {
	c.mu.Lock()
	defer c.mu.Unlock()
	g := c.got
	c.got = nil
	return g
}

func ofType(recs []rec, t Type) []rec {
	var out []rec
	for _, r := range recs {
		if r.typ == t {
			out = append(out, r)
		}
	}
	return out
}
