package events

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// TestAllDestinationsOnceInOrder runs every destination at once, plus a
// webhook that never answers: each working destination receives each
// transition exactly once, in order per device, and the dead one only
// fills (and drops from) its own queue.
func TestAllDestinationsOnceInOrder(t *testing.T) {
	rdb := newRedis(t)
	name := testenv.Name(t)
	cfg := bareConfig()
	cfg.PubSub.Enabled, cfg.PubSub.Channel = true, name
	cfg.Stream.Enabled, cfg.Stream.Key = true, name
	cfg.MQTT.Enabled, cfg.MQTT.BrokerURL, cfg.MQTT.Topic = true, testenv.MQTTURL(), name+"/{id}/presence"
	cfg.SSE.Enabled = true
	t.Cleanup(func() { rdb.Del(context.Background(), name) })

	rv, srv := newReceiver(t, "k", 0)
	stuck := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body) // then the server notices the client leaving
		<-r.Context().Done()
	}))
	t.Cleanup(stuck.Close)
	dead := webhookCfg(stuck.URL, "k")
	dead.Name, dead.Delivery.QueueCapacity, dead.Delivery.Timeout = "dead", 100, 500*time.Millisecond
	cfg.Webhooks = []WebhookConfig{webhookCfg(srv.URL, "k"), dead}

	h, err := New(cfg, Deps{Redis: rdb, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sub := rdb.Subscribe(ctx, name)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var mqttGot []Event
	m := mqttClient(t, func(_ mqtt.Client, msg mqtt.Message) {
		if msg.Retained() || len(msg.Payload()) == 0 {
			return
		}
		id := strings.TrimSuffix(strings.TrimPrefix(msg.Topic(), name+"/"), "/presence")
		mu.Lock()
		mqttGot = append(mqttGot, Event{Type: "status", ID: id, Status: string(msg.Payload()), At: t0})
		mu.Unlock()
	})
	m.Subscribe(name+"/+/presence", 1, nil).WaitTimeout(5 * time.Second)
	srvSSE := httptest.NewServer(h.SSEHandler())
	t.Cleanup(srvSSE.Close)
	sse := openStream(t, srvSSE.URL, "")
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}

	want := trace(25, 40, 8)
	feed(h, want, 8)

	var psGot []Event
	ch := sub.Channel(redis.WithChannelSize(len(want) + 10))
	for len(psGot) < len(want) {
		select {
		case msg := <-ch:
			psGot = append(psGot, decode(t, []byte(msg.Payload)))
		case <-time.After(20 * time.Second):
			t.Fatalf("pubsub: %d of %d", len(psGot), len(want))
		}
	}
	checkOnceInOrder(t, want, psGot)
	checkOnceInOrder(t, want, sse.next(t, len(want)))
	testenv.Eventually(t, 20*time.Second, func() error {
		rv.mu.Lock()
		n := len(rv.events)
		rv.mu.Unlock()
		mu.Lock()
		k := len(mqttGot)
		mu.Unlock()
		if s := rdb.XLen(ctx, name).Val(); n < len(want) || k < len(want) || s < int64(len(want)) {
			return fmt.Errorf("webhook %d, mqtt %d, stream %d of %d", n, k, s, len(want))
		}
		return nil
	})
	res, _ := rdb.XRange(ctx, name, "-", "+").Result()
	var stGot []Event
	for _, m := range res {
		stGot = append(stGot, entryEvent(t, m))
	}
	checkOnceInOrder(t, want, stGot)
	rv.mu.Lock()
	checkOnceInOrder(t, want, rv.events)
	rv.mu.Unlock()
	mu.Lock()
	noTimes := append([]engine.Transition(nil), want...) // MQTT carries no times
	for i := range noTimes {
		noTimes[i].At = t0
	}
	checkOnceInOrder(t, noTimes, mqttGot)
	mu.Unlock()

	var deadDest *dest
	for _, d := range h.dests {
		if d.name == "dead" {
			deadDest = d
		}
	}
	if deadDest.m.Dropped.Get() == 0 || deadDest.m.Sent.Get() != 0 {
		t.Fatalf("dead webhook: dropped %d sent %d", deadDest.m.Dropped.Get(), deadDest.m.Sent.Get())
	}
	// The dead webhook cannot be flushed at Close: close with a short
	// deadline here so the cleanup's Close returns the same result fast.
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := h.Close(cctx); err == nil {
		t.Fatal("Close reported nothing unsent for the dead webhook")
	}
}

// Only the MQTT destination leaves types out (it publishes statuses).
func TestAcceptsAll(t *testing.T) {
	if acceptsAll(&mqttSender{}) || !acceptsAll(&pubsubSender{}) || !acceptsAll(&streamSender{}) || !acceptsAll(&sseHub{}) {
		t.Fatal("acceptsAll disagrees with the senders")
	}
}
