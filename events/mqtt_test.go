package events

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

func mqttClient(t *testing.T, handler mqtt.MessageHandler) mqtt.Client {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(testenv.MQTTURL()).
		SetClientID(testenv.Name(t)).SetOrderMatters(true).SetDefaultPublishHandler(handler))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("mqtt connect to %s: %v", testenv.MQTTURL(), tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// presenceWatch subscribes to the presence topics under prefix and keeps,
// in arrival order, the live (not retained) messages as status events; at
// the end of the test it clears the retained messages of devices
// dev-0000..dev-<devices-1>.
type presenceWatch struct {
	mu  sync.Mutex
	got []Event
}

func watchPresence(t *testing.T, prefix string, devices int) *presenceWatch {
	t.Helper()
	w := &presenceWatch{}
	sub := mqttClient(t, func(_ mqtt.Client, m mqtt.Message) {
		if m.Retained() {
			return
		}
		id := strings.TrimSuffix(strings.TrimPrefix(m.Topic(), prefix+"/"), "/presence")
		w.mu.Lock()
		w.got = append(w.got, Event{Type: "status", ID: id, Status: string(m.Payload())})
		w.mu.Unlock()
	})
	if tok := sub.Subscribe(prefix+"/+/presence", 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	t.Cleanup(func() {
		// Clear the retained messages (an empty retained payload).
		for i := range devices {
			sub.Publish(fmt.Sprintf("%s/dev-%04d/presence", prefix, i), 1, true, "").WaitTimeout(time.Second)
		}
	})
	return w
}

// check waits until as many messages as want arrived, then checks that
// each status change came once, in order per device. MQTT carries no
// times: the order is checked by status only.
func (w *presenceWatch) check(t *testing.T, want []engine.Transition, timeout time.Duration) {
	t.Helper()
	testenv.Eventually(t, timeout, func() error {
		w.mu.Lock()
		defer w.mu.Unlock()
		if len(w.got) < len(want) {
			return fmt.Errorf("received %d of %d", len(w.got), len(want))
		}
		return nil
	})
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := range want {
		want[i].At = t0
	}
	for i := range w.got {
		w.got[i].At = t0
	}
	checkOnceInOrder(t, want, w.got)
}

// TestMQTTRetainedOnceInOrder: a subscriber sees every status change
// once, in order per device, as "online"/"offline" on devices/{id}/presence
// (here under a unique prefix); a late subscriber gets each device's last
// status from the retained message; alerts are not published.
func TestMQTTRetainedOnceInOrder(t *testing.T) {
	prefix := testenv.Name(t)
	cfg := bareConfig()
	cfg.MQTT.Enabled, cfg.MQTT.BrokerURL = true, testenv.MQTTURL()
	cfg.MQTT.Topic = prefix + "/{id}/presence"
	h, err := New(cfg, Deps{Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}

	w := watchPresence(t, prefix, 10)
	runHub(t, h)

	want := trace(10, 30, 5)
	feed(h, want, 5)
	// Alerts are not device states: not published.
	h.HandleTransitions(nil)
	h.publish([]rec{{typ: TypeOfflineAlert, id: "dev-0000", at: 1}})
	w.check(t, want, 20*time.Second)

	// A new subscriber gets the last status of each device, retained.
	last := map[string]string{}
	for _, w := range want {
		last[w.ID] = w.To.String()
	}
	retained := map[string]string{}
	var rmu sync.Mutex
	late := mqttClient(t, func(_ mqtt.Client, m mqtt.Message) {
		if !m.Retained() {
			return
		}
		id := strings.TrimSuffix(strings.TrimPrefix(m.Topic(), prefix+"/"), "/presence")
		rmu.Lock()
		retained[id] = string(m.Payload())
		rmu.Unlock()
	})
	late.Subscribe(prefix+"/+/presence", 1, nil).WaitTimeout(5 * time.Second)
	testenv.Eventually(t, 10*time.Second, func() error {
		rmu.Lock()
		defer rmu.Unlock()
		for id, st := range last {
			if retained[id] != st {
				return fmt.Errorf("device %s: retained %q, want %q", id, retained[id], st)
			}
		}
		return nil
	})
}

// TestMQTTBackpressure: retained MQTT is a destination that holds state
// (the default policy pushes back): 2,000 events through a queue of 50 all
// reach the broker, in order per device, none dropped.
func TestMQTTBackpressure(t *testing.T) {
	prefix := testenv.Name(t)
	cfg := bareConfig()
	cfg.MQTT.Enabled, cfg.MQTT.BrokerURL = true, testenv.MQTTURL()
	cfg.MQTT.Topic = prefix + "/{id}/presence"
	cfg.MQTT.Delivery.QueueCapacity, cfg.MQTT.Delivery.BatchSize = 50, 10
	if cfg.MQTT.Delivery.OnFull != Backpressure {
		t.Fatalf("retained MQTT's default policy is %v, want Backpressure", cfg.MQTT.Delivery.OnFull)
	}
	h, err := New(cfg, Deps{Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	w := watchPresence(t, prefix, 20)
	runHub(t, h)
	want := trace(20, 100, 9)
	feed(h, want, 9)
	w.check(t, want, 30*time.Second)
	if n := h.dests[0].m.Dropped.Get(); n != 0 {
		t.Fatalf("dropped %d events", n)
	}
}
