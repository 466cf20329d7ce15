package loadgen

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

type received struct {
	topic   string
	payload []byte
	at      time.Time
}

// subscribe counts everything under prefix/# at QoS 1; it skips the test when
// no broker answers.
func subscribe(t *testing.T, prefix string) func() []received {
	t.Helper()
	var mu sync.Mutex
	var got []received
	opts := mqtt.NewClientOptions().AddBroker(testenv.MQTTURL()).
		SetClientID(fmt.Sprintf("loadgen-test-sub-%d", time.Now().UnixNano())).
		SetCleanSession(true).SetOrderMatters(false).SetConnectTimeout(3 * time.Second)
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Skipf("no MQTT broker at %s (set MQTT_URL): %v", testenv.MQTTURL(), tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	tok := c.Subscribe(prefix+"/#", 1, func(_ mqtt.Client, m mqtt.Message) {
		r := received{topic: m.Topic(), payload: m.Payload(), at: time.Now()}
		mu.Lock()
		got = append(got, r)
		mu.Unlock()
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	return func() []received {
		mu.Lock()
		defer mu.Unlock()
		return append([]received(nil), got...)
	}
}

// waitQuiet returns the messages once none arrived for 300ms (at most 5s).
func waitQuiet(msgs func() []received) []received {
	n := -1
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		m := msgs()
		if len(m) == n {
			return m
		}
		n = len(m)
	}
	return msgs()
}

// Against the real broker: the generator publishes the schedule at the rate
// asked for, silent devices stop at silent-after and announce it.
func TestIntegrationMosquitto(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	prefix := fmt.Sprintf("loadgen-test/%d-%d", os.Getpid(), time.Now().UnixNano())
	msgs := subscribe(t, prefix)

	cfg := DefaultConfig()
	cfg.Broker = testenv.MQTTURL()
	cfg.Devices, cfg.IDStart, cfg.Rate, cfg.Conns, cfg.QoS = 200, 1000, 2000, 3, 1
	// Long enough past silent-after that the wall-time check below can
	// fail: a silencer still talking near the end would be heard late.
	cfg.Duration, cfg.Progress = 3*time.Second, 0
	cfg.Topic, cfg.StatusTopic = prefix+"/{id}/telemetry", prefix+"/{id}/status"
	cfg.SilentFraction, cfg.SilentAfter, cfg.Announce = 0.25, 700*time.Millisecond, true
	r, err := New(cfg, Options{Logger: newTextLogger(testWriter{t})})
	if err != nil {
		t.Fatal(err)
	}
	sum, err := r.Run(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("summary: %s", sum)
	got := waitQuiet(msgs)
	if len(got) == 0 {
		t.Fatal("the subscriber heard nothing")
	}

	// What the schedule says must have been sent.
	s := r.Schedule()
	var wantTelemetry, wantOffline uint64
	for k := uint64(0); s.At(k) < cfg.Duration; k++ {
		switch s.Kind(k) {
		case KindTelemetry, KindReturn:
			wantTelemetry++
		case KindGoOffline:
			wantOffline++
		}
	}
	if wantOffline != 50 {
		t.Fatalf("schedule has %d go-offline slots, want 50", wantOffline)
	}
	if sum.Sent != wantTelemetry || sum.Status != wantOffline || sum.Errors != 0 {
		t.Errorf("summary %s; want sent=%d status=%d errors=0", sum, wantTelemetry, wantOffline)
	}
	// The counts above are exact; the rate only loosely, as this shared
	// 2-core machine can stall the final tick under -race.
	if sum.Rate < 0.8*float64(wantTelemetry)/cfg.Duration.Seconds() {
		t.Errorf("achieved rate %.0f/s, want ~%.0f/s", sum.Rate, float64(wantTelemetry)/cfg.Duration.Seconds())
	}

	var telemetry, offline int
	silencerLast := map[uint64]time.Time{}
	for _, m := range got {
		rest := strings.TrimPrefix(m.topic, prefix+"/")
		id, kind, _ := strings.Cut(rest, "/")
		var n uint64
		if _, err := fmt.Sscan(id, &n); err != nil || n < cfg.IDStart || n >= cfg.IDStart+uint64(cfg.Devices) {
			t.Fatalf("unexpected topic %q", m.topic)
		}
		d := n - cfg.IDStart
		switch kind {
		case "status":
			if string(m.payload) != "offline" || !s.Silencer(d) {
				t.Errorf("status %q for device %d (silencer %v)", m.payload, d, s.Silencer(d))
			}
			offline++
		case "telemetry":
			telemetry++
			var p struct{ Seq uint64 }
			if err := json.Unmarshal(m.payload, &p); err != nil {
				t.Fatalf("payload %q: %v", m.payload, err)
			}
			if s.Silencer(d) {
				if due := s.At(p.Seq*uint64(cfg.Devices) + d); due >= cfg.SilentAfter {
					t.Errorf("silencer %d published seq %d due at %s, after silent-after", d, p.Seq, due)
				}
				silencerLast[d] = m.at
			}
		default:
			t.Fatalf("unexpected topic %q", m.topic)
		}
	}
	if lo, hi := 0.98*float64(wantTelemetry), 1.02*float64(wantTelemetry); float64(telemetry) < lo || float64(telemetry) > hi {
		t.Errorf("subscriber got %d telemetry messages, want %d ±2%%", telemetry, wantTelemetry)
	}
	if offline != int(wantOffline) {
		t.Errorf("subscriber got %d offline announcements, want %d", offline, wantOffline)
	}
	if len(silencerLast) != 50 {
		t.Errorf("%d silencers published before going silent, want 50", len(silencerLast))
	}
	// In wall time too (the payloads' sequence numbers above are exact):
	// from the first message heard, not from Run's start, which includes
	// connecting; with room for a loaded machine's delivery delays.
	first := got[0].at
	for d, at := range silencerLast {
		if at.Sub(first) > cfg.SilentAfter+time.Second {
			t.Errorf("silencer %d last heard %s after the first message, silent-after is %s", d, at.Sub(first), cfg.SilentAfter)
		}
	}
}

func TestIntegrationUnreachableBroker(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Broker, cfg.ConnectTimeout = "tcp://127.0.0.1:1", 2*time.Second
	r, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("Run = %v, want a connect error naming the broker", err)
	}
}

// testWriter sends log output to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
