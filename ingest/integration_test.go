package ingest

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// Integration tests run against the real broker at MQTT_URL (default
// tcp://127.0.0.1:1883). Each test uses its own topic prefix and share
// group, so tests (and other users of the broker) do not see each other's
// messages. They are skipped with -short or when no broker answers.

func brokerURL(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test (-short)")
	}
	u := testenv.MQTTURL()
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatalf("MQTT_URL %q: %v", u, err)
	}
	c, err := net.DialTimeout("tcp", pu.Host, time.Second)
	if err != nil {
		t.Skipf("no MQTT broker at %s: %v", u, err)
	}
	c.Close()
	return u
}

// testEnv is one integration test's broker, topics and handler.
type testEnv struct {
	t      *testing.T
	url    string
	prefix string // "test/<testenv.Name>/"
	h      *fakeHandler
	pub    mqtt.Client
	logw   *testWriter
}

func newTestEnv(t *testing.T) *testEnv { return newTestEnvAt(t, brokerURL(t)) }

// newTestEnvAt is newTestEnv on the broker at url.
func newTestEnvAt(t *testing.T, url string) *testEnv {
	e := &testEnv{t: t, url: url, h: &fakeHandler{}}
	e.logw = newTestWriter(t) // registered first: its cleanup runs last
	e.prefix = "test/" + testenv.Name(t) + "/"
	opts := mqtt.NewClientOptions().AddBroker(e.url).
		SetClientID(fmt.Sprintf("ingest-test-pub-%08x", rand.Uint32())).SetCleanSession(true)
	e.pub = mqtt.NewClient(opts)
	if tok := e.pub.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publisher connect to %s: %v", e.url, tok.Error())
	}
	t.Cleanup(func() { e.pub.Disconnect(100) })
	return e
}

// config returns a test Config: this test's topics and share group, short
// timings, logs to the test log.
func (e *testEnv) config() Config {
	c := DefaultConfig()
	c.BrokerURL = e.url
	c.ClientIDPrefix = "ingest-test"
	c.ShareGroup = fmt.Sprintf("g%08x", rand.Uint32())
	c.Topics = []Topic{
		{Pattern: e.prefix + "devices/{id}/telemetry"},
		{Pattern: e.prefix + "devices/{id}/status", Kind: KindStatus},
		{Pattern: e.prefix + "slow/{id}/telemetry", Timeout: 10 * time.Minute},
	}
	c.BatchDelay = time.Millisecond
	c.ConnectRetryInterval = 100 * time.Millisecond
	c.MaxReconnectInterval = 500 * time.Millisecond
	c.SubscribeTimeout = 2 * time.Second
	c.DisconnectQuiesce = 50 * time.Millisecond
	c.LogInterval = 0
	c.Logger = slog.New(slog.NewTextHandler(e.logw, &slog.HandlerOptions{Level: slog.LevelInfo}))
	return c
}

func (e *testEnv) start(c Config) *Ingester {
	e.t.Helper()
	in, err := New(c, e.h)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := in.Start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { in.Close(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := in.WaitReady(ctx); err != nil {
		e.t.Fatal(err)
	}
	return in
}

func (e *testEnv) publish(topic string, payload []byte) {
	e.t.Helper()
	tok := e.pub.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		e.t.Fatalf("publish %q: %v", topic, tok.Error())
	}
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, func() error {
		if cond() {
			return nil
		}
		return fmt.Errorf("waiting for %s", what)
	})
}

// testWriter sends log lines to the test log until the test ends (paho
// goroutines may still report after Close).
type testWriter struct {
	t    *testing.T
	mu   sync.Mutex
	done bool
}

func newTestWriter(t *testing.T) *testWriter {
	w := &testWriter{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return w
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func TestIntegrationTelemetryStatusAndGarbage(t *testing.T) {
	e := newTestEnv(t)
	c := e.config()
	c.MaxPayloadLen = 1024
	in := e.start(c)

	before := time.Now()
	for i := range 50 {
		e.publish(fmt.Sprintf("%sdevices/d%d/telemetry", e.prefix, i), []byte(`{"t":21.5}`))
	}
	e.publish(e.prefix+"slow/s1/telemetry", []byte("x"))
	// d1's status must come after its telemetry: the two may travel on
	// different subscriber connections, so wait for the telemetry first.
	waitFor(t, "the telemetry", func() bool { return len(e.h.snapshot()) == 51 })
	e.publish(e.prefix+"devices/d1/status", []byte("offline\n"))
	e.publish(e.prefix+"devices/d2/status", []byte("ONLINE"))
	// Garbage: every kind the broker lets through.
	e.publish(e.prefix+"devices//telemetry", nil)                             // invalid_id (empty)
	e.publish(e.prefix+"devices/caf\u00e9/telemetry", nil)                    // invalid_id (not ASCII)
	e.publish(e.prefix+"devices/"+strings.Repeat("x", 150)+"/telemetry", nil) // invalid_id (too long)
	e.publish(e.prefix+"devices/"+strings.Repeat("x", 250)+"/telemetry", nil) // topic_too_long
	e.publish(e.prefix+"devices/big/telemetry", make([]byte, 2048))           // payload_too_large
	e.publish(e.prefix+"devices/d3/status", []byte("sleeping"))               // bad_status

	waitFor(t, "all messages", func() bool { return in.Stats().Received == 59 })
	waitFor(t, "all events", func() bool { return len(e.h.snapshot()) == 53 })
	after := time.Now()

	seen := map[string]event{}
	for _, ev := range e.h.snapshot() {
		if ev.At.Before(before) || ev.At.After(after) {
			t.Errorf("%s stamped %v, outside [%v, %v]", ev.ID, ev.At, before, after)
		}
		if _, dup := seen[ev.ID]; dup && ev.ID != "d1" && ev.ID != "d2" {
			t.Errorf("duplicate event for %s", ev.ID)
		}
		seen[ev.ID] = ev
	}
	if ev := seen["d1"]; !ev.Offline {
		t.Errorf("d1: last event %+v, want offline", ev)
	}
	if ev := seen["d2"]; ev.Offline {
		t.Errorf("d2: status online gave %+v", ev)
	}
	if ev := seen["s1"]; ev.Timeout != 10*time.Minute {
		t.Errorf("s1: timeout %v, want the slow pattern's 10m", ev.Timeout)
	}
	st := in.Stats()
	want := map[string]uint64{"invalid_id": 3, "topic_too_long": 1, "payload_too_large": 1, "bad_status": 1}
	if fmt.Sprint(st.Dropped) != fmt.Sprint(want) {
		t.Errorf("dropped %v, want %v", st.Dropped, want)
	}
	if !in.Ready() || st.Subscribed != 2 {
		t.Errorf("not ready after garbage: %+v", st)
	}
}

func TestIntegrationSharedSubscriptionSplits(t *testing.T) {
	e := newTestEnv(t)
	c := e.config()
	c.Connections = 2
	in := e.start(c)
	for _, s := range in.Subscriptions() {
		if !strings.HasPrefix(s, "$share/"+c.ShareGroup+"/"+e.prefix) {
			t.Fatalf("subscription %q is not shared", s)
		}
	}
	const n = 400
	for i := range n {
		e.publish(fmt.Sprintf("%sdevices/d%d/telemetry", e.prefix, i), nil)
	}
	waitFor(t, "all touches", func() bool { return len(e.h.snapshot()) >= n })
	time.Sleep(100 * time.Millisecond) // a duplicate would arrive now
	evs := e.h.snapshot()
	ids := map[string]bool{}
	for _, ev := range evs {
		if ids[ev.ID] {
			t.Errorf("%s delivered twice", ev.ID)
		}
		ids[ev.ID] = true
	}
	if len(evs) != n || len(ids) != n {
		t.Fatalf("%d events for %d ids, want %d", len(evs), len(ids), n)
	}
	c0, c1 := in.m.received[0].Get(), in.m.received[1].Get()
	t.Logf("connection 0 received %d, connection 1 received %d", c0, c1)
	if c0 == 0 || c1 == 0 || c0+c1 != n {
		t.Errorf("split %d/%d, want both connections used and %d in all", c0, c1, n)
	}
}

func TestIntegrationNoSharing(t *testing.T) {
	e := newTestEnv(t)
	c := e.config()
	c.ShareGroup, c.Connections, c.QoS = "", 1, 0
	in := e.start(c)
	if s := in.Subscriptions(); len(s) != 3 || strings.HasPrefix(s[0], "$share/") {
		t.Fatalf("subscriptions %q", s)
	}
	for i := range 20 {
		e.publish(fmt.Sprintf("%sdevices/d%d/telemetry", e.prefix, i), nil)
	}
	waitFor(t, "all touches", func() bool { return len(e.h.snapshot()) == 20 })
}

func TestIntegrationReconnectResubscribes(t *testing.T) {
	e := newTestEnv(t)
	p := newProxy(t, e.url)
	c := e.config()
	c.BrokerURL = "tcp://" + p.Addr()
	c.Connections = 2
	in := e.start(c)

	e.publish(e.prefix+"devices/before/telemetry", nil)
	waitFor(t, "touch before the cut", func() bool { return len(e.h.snapshot()) == 1 })

	// Cut every connection and refuse new ones for a while.
	p.Cut()
	waitFor(t, "not ready", func() bool { return !in.Ready() })
	e.publish(e.prefix+"devices/during/telemetry", nil) // no subscriber: lost
	time.Sleep(700 * time.Millisecond)                  // a few refused reconnect attempts
	p.Restore()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := in.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	e.publish(e.prefix+"devices/after/telemetry", nil)
	waitFor(t, "touch after reconnect", func() bool {
		evs := e.h.snapshot()
		return len(evs) > 0 && evs[len(evs)-1].ID == "after"
	})

	// A plain cut with the proxy up: paho reconnects at once.
	connects := in.m.connects.Get()
	p.Cut()
	p.Restore()
	waitFor(t, "both connections back", func() bool { return in.m.connects.Get() >= connects+2 && in.Ready() })
	e.publish(e.prefix+"devices/after2/telemetry", nil)
	waitFor(t, "touch after the second cut", func() bool {
		evs := e.h.snapshot()
		return len(evs) > 0 && evs[len(evs)-1].ID == "after2"
	})
	st := in.Stats()
	t.Logf("stats %+v, connects %d, lost %d", st, in.m.connects.Get(), in.m.lost.Get())
	if in.m.lost.Get() < 4 || in.m.connects.Get() < 6 {
		t.Errorf("connects %d, lost %d: want at least 6 and 4", in.m.connects.Get(), in.m.lost.Get())
	}
}

func TestIntegrationStartBeforeBroker(t *testing.T) {
	e := newTestEnv(t)
	p := newProxy(t, e.url)
	p.Cut()
	c := e.config()
	c.BrokerURL = "tcp://" + p.Addr()
	in, err := New(c, e.h)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close(context.Background())
	if err := in.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Once a connection attempt has failed, WaitReady's error names it.
	testenv.Eventually(t, 10*time.Second, func() error {
		if err := in.ReadyErr(); err == nil || !strings.Contains(err.Error(), "last error") {
			return fmt.Errorf("no connection attempt has failed yet (%v)", err)
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	err = in.WaitReady(ctx)
	cancel()
	if err == nil || !strings.Contains(err.Error(), "last error") {
		t.Fatalf("WaitReady with the broker down = %v, want an error naming the cause", err)
	}
	t.Log(err)
	p.Restore()
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := in.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	e.publish(e.prefix+"devices/late/telemetry", nil)
	waitFor(t, "touch", func() bool { return len(e.h.snapshot()) == 1 })
}

func TestIntegrationStartAndCloseDrains(t *testing.T) {
	e := newTestEnv(t)
	c := e.config()
	c.BatchDelay = time.Second // messages wait in the queues until Close
	in, err := New(c, e.h)
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ready, cancelReady := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelReady()
	if err := in.WaitReady(ready); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		e.publish(fmt.Sprintf("%sdevices/d%d/telemetry", e.prefix, i), nil)
	}
	waitFor(t, "queued", func() bool { return in.Stats().QueueDepth == 10 })
	if err := in.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := len(e.h.snapshot()); got != 10 {
		t.Fatalf("handler got %d touches after Close, want the 10 queued", got)
	}
	if in.Ready() {
		t.Error("ready after Close")
	}
}

// newProxy is a testenv.Proxy between the Ingester and the broker: Cut
// closes every relayed connection and refuses new ones until Restore.
func newProxy(t *testing.T, brokerURL string) *testenv.Proxy {
	t.Helper()
	u, err := url.Parse(brokerURL)
	if err != nil || (u.Scheme != "tcp" && u.Scheme != "mqtt") {
		t.Skipf("proxy test needs a tcp:// broker, have %q", brokerURL)
	}
	return testenv.NewProxy(t, u.Host)
}
