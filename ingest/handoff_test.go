package ingest

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/presence-dev/presence/engine"
)

// fakeHandler records what an Ingester hands over.
type fakeHandler struct {
	mu      sync.Mutex
	events  []event // in call order
	batches []int   // TouchBatch sizes
	gate    chan struct{}
	reject  string // TouchBatch rejects this id
}

// event is a touch, or an offline mark when Offline is set.
type event struct {
	ID      string
	At      time.Time
	Timeout time.Duration
	Offline bool
}

func (h *fakeHandler) TouchBatch(batch []engine.Touch) int {
	if h.gate != nil {
		<-h.gate
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.batches = append(h.batches, len(batch))
	rejected := 0
	for _, t := range batch {
		if t.ID == h.reject {
			rejected++
			continue
		}
		h.events = append(h.events, event{ID: strings.Clone(t.ID), At: t.At, Timeout: t.Timeout})
	}
	return rejected
}

func (h *fakeHandler) MarkOffline(id string, at time.Time) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, event{ID: strings.Clone(id), At: at, Offline: true})
	return nil
}

func (h *fakeHandler) SetStatus(id string, s engine.Status, at time.Time, _ engine.Cause) error {
	if s == engine.StatusOffline {
		return h.MarkOffline(id, at)
	}
	h.TouchBatch([]engine.Touch{{ID: id, At: at}})
	return nil
}

func (h *fakeHandler) snapshot() []event {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]event(nil), h.events...)
}

func (h *fakeHandler) batchSizes() []int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]int(nil), h.batches...)
}

// newUnstarted builds an Ingester whose workers run but which never
// connects: tests feed it through onMessage, as paho would.
func newUnstarted(t testing.TB, h Handler, edit func(*Config)) *Ingester {
	t.Helper()
	cfg := DefaultConfig()
	if edit != nil {
		edit(&cfg)
	}
	in, err := New(cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	in.mu.Lock()
	in.startWorkersLocked()
	in.mu.Unlock()
	t.Cleanup(func() { in.Close(context.Background()) })
	return in
}

func TestHandoffNeverBlocks(t *testing.T) {
	h := &fakeHandler{gate: make(chan struct{})}
	in := newUnstarted(t, h, func(c *Config) {
		c.Shards = 2
		c.QueueSize = 64
		c.BatchSize = 16
		c.BatchDelay = 0
	})
	const n = 10000
	start := time.Now()
	var slowest time.Duration
	for i := range n {
		t0 := time.Now()
		in.onMessage(0, fmt.Sprintf("devices/d%d/telemetry", i%100), nil)
		slowest = max(slowest, time.Since(t0))
	}
	elapsed := time.Since(start)
	// The handler is blocked the whole time: every call must still return.
	if elapsed > 5*time.Second {
		t.Fatalf("%d callbacks took %v with a blocked handler", n, elapsed)
	}
	st := in.Stats()
	dropped := st.Dropped["queue_full"]
	if st.Received != n || dropped == 0 || dropped >= n {
		t.Fatalf("received %d, queue_full drops %d: want %d received and some drops", st.Received, dropped, n)
	}
	t.Logf("%d callbacks against a blocked handler: %v (slowest %v), %d dropped", n, elapsed, slowest, dropped)

	close(h.gate) // unblock; Close delivers every accepted message
	in.Close(context.Background())
	if got, want := len(h.snapshot()), n-int(dropped); got != want {
		t.Errorf("handler got %d touches, want %d accepted", got, want)
	}
	if d := in.Stats().QueueDepth; d != 0 {
		t.Errorf("queue depth %d after Close", d)
	}
	// A message after Close is counted, not delivered, and does not panic.
	in.onMessage(0, "devices/late/telemetry", nil)
	if got := in.Stats().Dropped["closed"]; got != 1 {
		t.Errorf("closed drops = %d, want 1", got)
	}
}

func TestOrderPerDeviceAndOffline(t *testing.T) {
	h := &fakeHandler{}
	var tick time.Duration
	base := time.Date(2025, 12, 14, 10, 30, 45, 0, time.UTC)
	in := newUnstarted(t, h, func(c *Config) {
		c.Shards = 3
		c.BatchSize = 7
		c.BatchDelay = time.Millisecond
		c.Topics = append(DefaultTopics(), Topic{Pattern: "slow/{id}/telemetry", Timeout: time.Hour})
		c.Clock = func() time.Time { tick += time.Millisecond; return base.Add(tick) }
	})
	const devices, rounds = 20, 30
	for r := range rounds {
		for d := range devices {
			id := fmt.Sprintf("dev%02d", d)
			switch {
			case r%10 == 9:
				in.onMessage(0, "devices/"+id+"/status", []byte("offline"))
			case r%10 == 5:
				in.onMessage(0, "devices/"+id+"/status", []byte("Online"))
			case d%2 == 0:
				in.onMessage(0, "slow/"+id+"/telemetry", []byte("x"))
			default:
				in.onMessage(0, "devices/"+id+"/telemetry", []byte("x"))
			}
		}
	}
	in.Close(context.Background())
	perDevice := map[string][]event{}
	for _, e := range h.snapshot() {
		perDevice[e.ID] = append(perDevice[e.ID], e)
	}
	if len(perDevice) != devices {
		t.Fatalf("%d devices, want %d", len(perDevice), devices)
	}
	for id, evs := range perDevice {
		if len(evs) != rounds {
			t.Fatalf("%s: %d events, want %d", id, len(evs), rounds)
		}
		for r, e := range evs {
			if r > 0 && !e.At.After(evs[r-1].At) {
				t.Fatalf("%s: event %d at %v not after %v: order lost", id, r, e.At, evs[r-1].At)
			}
			if e.Offline != (r%10 == 9) {
				t.Fatalf("%s: event %d offline=%v", id, r, e.Offline)
			}
			var d int
			fmt.Sscanf(id, "dev%d", &d)
			wantTimeout := time.Duration(0)
			if !e.Offline && r%10 != 5 && d%2 == 0 {
				wantTimeout = time.Hour
			}
			if !e.Offline && e.Timeout != wantTimeout {
				t.Fatalf("%s: event %d timeout %v, want %v", id, r, e.Timeout, wantTimeout)
			}
		}
	}
	for _, n := range h.batchSizes() {
		if n > 7 {
			t.Fatalf("batch of %d > BatchSize 7", n)
		}
	}
	st := in.Stats()
	if st.Offline != devices*rounds/10 || st.Touches != devices*rounds*9/10 {
		t.Errorf("stats %+v", st)
	}
}

func TestDropsCountedByReason(t *testing.T) {
	h := &fakeHandler{reject: "bad"}
	in := newUnstarted(t, h, func(c *Config) { c.MaxPayloadLen = 8 })
	in.onMessage(0, "devices/ok/telemetry", nil)
	in.onMessage(1, "devices/bad/telemetry", nil) // the handler rejects it
	in.onMessage(0, "devices//telemetry", nil)
	in.onMessage(0, "devices/a b/telemetry", nil)
	in.onMessage(0, "nope/x", nil)
	in.onMessage(0, "devices/"+strings.Repeat("x", 300)+"/telemetry", nil)
	in.onMessage(0, "devices/ok/telemetry", []byte("123456789"))
	in.onMessage(0, "devices/ok/status", []byte("sleeping"))
	in.Close(context.Background())
	st := in.Stats()
	want := map[string]uint64{"invalid_id": 2, "no_match": 1, "topic_too_long": 1, "payload_too_large": 1, "bad_status": 1}
	if fmt.Sprint(st.Dropped) != fmt.Sprint(want) {
		t.Errorf("dropped %v, want %v", st.Dropped, want)
	}
	if st.Received != 8 || st.Touches != 2 || st.Rejected != 1 {
		t.Errorf("stats %+v", st)
	}
	var buf strings.Builder
	in.Metrics().WritePrometheus(&buf)
	for _, line := range []string{
		`presence_ingest_messages_dropped_total{reason="invalid_id"} 2`,
		`presence_ingest_messages_received_total{conn="0"} 7`,
		`presence_ingest_messages_received_total{conn="1"} 1`,
		`presence_ingest_touches_rejected_total 1`,
		`presence_ingest_queue_depth 0`,
		`presence_ingest_ready 0`,
	} {
		if !strings.Contains(buf.String(), line+"\n") {
			t.Errorf("metrics lack %q", line)
		}
	}
}

// TestBatchDelay uses a fake clock (synctest) to check that a worker waits
// up to BatchDelay for a batch to fill, but no longer, and not at all once
// BatchSize messages are pending.
func TestBatchDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := &fakeHandler{}
		in := newUnstarted(t, h, func(c *Config) {
			c.Shards = 1
			c.BatchSize = 4
			c.BatchDelay = 5 * time.Millisecond
		})
		send := func(n int) {
			for i := range n {
				in.onMessage(0, fmt.Sprintf("devices/d%d/telemetry", i), nil)
			}
		}
		send(3)
		synctest.Wait()
		if got := h.batchSizes(); len(got) != 0 {
			t.Fatalf("batches %v before BatchDelay", got)
		}
		time.Sleep(4 * time.Millisecond)
		synctest.Wait()
		if got := h.batchSizes(); len(got) != 0 {
			t.Fatalf("batches %v before BatchDelay", got)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if got := fmt.Sprint(h.batchSizes()); got != "[3]" {
			t.Fatalf("batches %s after BatchDelay, want [3]", got)
		}
		send(4) // a full batch goes at once
		synctest.Wait()
		if got := fmt.Sprint(h.batchSizes()); got != "[3 4]" {
			t.Fatalf("batches %s after a full batch, want [3 4]", got)
		}
		send(2)
		in.Close(context.Background()) // Close does not wait for BatchDelay
		if got := fmt.Sprint(h.batchSizes()); got != "[3 4 2]" {
			t.Fatalf("batches %s after Close, want [3 4 2]", got)
		}
	})
}

func TestCallbackNoAllocs(t *testing.T) {
	// Without workers the queue only fills: the callback path alone.
	in, err := New(DefaultConfig(), &fakeHandler{})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close(context.Background())
	payload := []byte(`{"t":1}`)
	allocs := testing.AllocsPerRun(1000, func() {
		in.onMessage(0, "devices/sensor-000123/telemetry", payload)
		in.onMessage(0, "devices/sensor-000123/status", []byte("offline"))
		in.onMessage(1, "devices/bad id/telemetry", payload)
	})
	if allocs != 0 {
		t.Errorf("onMessage allocates %v times per run, want 0", allocs)
	}
}

func TestStartCloseLifecycle(t *testing.T) {
	in, err := New(DefaultConfig(), &fakeHandler{})
	if err != nil {
		t.Fatal(err)
	}
	if in.Ready() {
		t.Error("ready before Start")
	}
	if err := in.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := in.Close(context.Background()); err != nil {
		t.Fatal("second Close:", err)
	}
	if err := in.Start(context.Background()); err != ErrClosed {
		t.Errorf("Start after Close = %v, want ErrClosed", err)
	}
	if _, err := New(DefaultConfig(), nil); err == nil {
		t.Error("New with a nil handler succeeded")
	}
}

func TestConfigValidate(t *testing.T) {
	def := DefaultConfig()
	if err := def.Validate(); err != nil {
		t.Fatalf("DefaultConfig invalid: %v", err)
	}
	cases := []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no url", func(c *Config) { c.BrokerURL = "" }, "BrokerURL (-mqtt-url): empty"},
		{"bare host", func(c *Config) { c.BrokerURL = "localhost:1883" }, "not supported"},
		{"bad scheme", func(c *Config) { c.BrokerURL = "http://x:1883" }, "not supported"},
		{"no host", func(c *Config) { c.BrokerURL = "tcp://" }, "no host"},
		{"password redacted", func(c *Config) { c.BrokerURL = "foo://u:secret@x" }, "u:xxxxx@x"},
		{"bad port", func(c *Config) { c.BrokerURL = "tcp://u:secret@x:99999999" }, `"tcp://u:xxxxx@x:99999999": port "99999999" is not a port number`},
		{"no topics", func(c *Config) { c.Topics = nil }, "no topic to subscribe to"},
		{"bad pattern", func(c *Config) { c.Topics = []Topic{{Pattern: "a/b{id}"}} }, "whole segment"},
		{"connections", func(c *Config) { c.Connections = 0 }, "Connections"},
		{"no share with 2", func(c *Config) { c.ShareGroup = "" }, "every connection would receive"},
		{"share group chars", func(c *Config) { c.ShareGroup = "a/b" }, "must not contain"},
		{"qos", func(c *Config) { c.QoS = 3 }, "QoS"},
		{"shards", func(c *Config) { c.Shards = 0 }, "Shards"},
		{"queue", func(c *Config) { c.QueueSize = 10 }, "QueueSize"},
		{"batch", func(c *Config) { c.BatchSize = 0 }, "BatchSize"},
		{"delay", func(c *Config) { c.BatchDelay = -1 }, "BatchDelay"},
		{"topic len", func(c *Config) { c.MaxTopicLen = 0 }, "MaxTopicLen"},
		{"payload len", func(c *Config) { c.MaxPayloadLen = -1 }, "MaxPayloadLen"},
		{"keepalive", func(c *Config) { c.KeepAlive = 0 }, "KeepAlive"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.edit(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
	c := DefaultConfig()
	c.ShareGroup, c.Connections = "", 1
	if err := c.Validate(); err != nil {
		t.Errorf("no sharing with 1 connection: %v", err)
	}
	c = DefaultConfig()
	c.Connections, c.QoS, c.BrokerURL = 0, 9, "x"
	if err := c.Validate(); err == nil || strings.Count(err.Error(), "\n") < 2 {
		t.Errorf("Validate should report every problem: %v", err)
	}
}

func TestCloseWhileConnecting(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there: every attempt is refused
	cfg := DefaultConfig()
	cfg.BrokerURL = "tcp://" + addr
	cfg.ConnectRetryInterval = 20 * time.Millisecond
	in, err := New(cfg, &fakeHandler{})
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if in.Ready() {
		t.Fatal("ready without a broker")
	}
	start := time.Now()
	in.Close(context.Background())
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v while connecting", d)
	}
	if err := in.WaitReady(context.Background()); err != ErrClosed {
		t.Errorf("WaitReady after Close = %v, want ErrClosed", err)
	}
}
