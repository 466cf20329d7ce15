package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/presence-dev/presence/events"
	"github.com/presence-dev/presence/internal/testenv"
)

// Every transition reaches Redis Pub/Sub, the Redis Stream, the retained
// MQTT presence topic and the SSE stream, in order.
func TestEventsReachEveryDestination(t *testing.T) {
	s := newStack(t)
	c := s.config()
	c.Timeout = time.Minute
	c.EventsMQTTTopic = s.name + "/devices/{id}/presence"
	ctx := context.Background()
	sub := s.rdb.Subscribe(ctx, c.EventsChannel)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil { // the subscription confirmation
		t.Fatal(err)
	}
	r := startDaemon(t, c)

	req, _ := http.NewRequest("GET", "http://"+r.d.HTTPAddr()+"/v1/events?id=501", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("SSE: %v %v", err, resp)
	}
	defer resp.Body.Close()
	sse := make(chan events.Event, 10)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var e events.Event
				if json.Unmarshal([]byte(data), &e) == nil && e.Type == "status" {
					sse <- e
				}
			}
		}
	}()

	s.publish(501, "telemetry", "{}")
	s.publish(502, "telemetry", "{}") // filtered out of the SSE stream
	time.Sleep(300 * time.Millisecond)
	s.publish(501, "status", "offline")

	want := []string{"online/telemetry", "offline/last_will"}
	var got []string
	msgs := sub.Channel()
	deadline := time.After(5 * time.Second)
	for len(got) < 3 {
		select {
		case m := <-msgs:
			var e events.Event
			if err := json.Unmarshal([]byte(m.Payload), &e); err != nil {
				t.Fatalf("pubsub payload %q: %v", m.Payload, err)
			}
			if e.ID == "501" {
				got = append(got, e.Status+"/"+e.Cause)
			} else {
				got = append(got, "other")
			}
		case <-deadline:
			t.Fatalf("pubsub got %v", got)
		}
	}
	if strings.Join(filter(got, "other"), ",") != strings.Join(want, ",") {
		t.Fatalf("pubsub order %v, want %v", got, want)
	}
	for _, w := range want {
		select {
		case e := <-sse:
			if e.ID != "501" || e.Status+"/"+e.Cause != w {
				t.Fatalf("SSE got %+v, want %s", e, w)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("SSE: no %s", w)
		}
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		n, err := s.rdb.XLen(ctx, c.EventsStream).Result()
		if err != nil || n != 3 {
			return fmt.Errorf("stream length %d (%v)", n, err)
		}
		return nil
	})

	// A dashboard subscribing later gets the last state, retained.
	got2 := make(chan string, 1)
	o := paho.NewClientOptions().AddBroker(testenv.MQTTURL()).SetClientID(s.name + "-late")
	late := paho.NewClient(o)
	if tok := late.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer late.Disconnect(100)
	late.Subscribe(s.name+"/devices/501/presence", 1, func(_ paho.Client, m paho.Message) { got2 <- string(m.Payload()) })
	select {
	case p := <-got2:
		if p != "offline" {
			t.Fatalf("retained presence %q", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no retained presence message")
	}
	for _, id := range []string{"501", "502"} { // clear the retained messages
		late.Publish(s.name+"/devices/"+id+"/presence", 1, true, "").Wait()
	}
}

func filter(xs []string, drop string) []string {
	var out []string
	for _, x := range xs {
		if x != drop {
			out = append(out, x)
		}
	}
	return out
}
