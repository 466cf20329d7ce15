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
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// Every transition reaches Redis Pub/Sub, the Redis Stream, the retained
// MQTT presence topic and the SSE stream, in order.
func TestEventsReachEveryDestination(t *testing.T) {
	s := newStack(t)
	c := s.config()
	c.Engine.DefaultTimeout = time.Minute
	c.Events.MQTT.Enabled, c.Events.MQTT.Topic = true, s.name+"/devices/{id}/presence"
	ctx := context.Background()
	sub := s.rdb.Subscribe(ctx, c.Events.PubSub.Channel)
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
	// The status after the telemetry has been handled (they may travel on
	// different subscriber connections).
	testenv.Eventually(t, 5*time.Second, func() error {
		if st, _, err := s.redisState(501); err != nil || st != "online" {
			return fmt.Errorf("501 is %q (%v)", st, err)
		}
		return nil
	})
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
		n, err := s.rdb.XLen(ctx, c.Events.Stream.Key).Result()
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

// A broker loss (the connection between presenced and the broker cut) makes
// the whole fleet time out together: one mass_offline incident, not one
// alert per device, and one mass_offline_recovered when the link is back.
// Ordinary churn before it (a few devices going quiet) raises nothing.
func TestBrokerLossIsOneIncident(t *testing.T) {
	s := newStack(t)
	c := s.config()
	const fleet = 200
	link := testenv.NewProxy(t, strings.TrimPrefix(testenv.MQTTURL(), "tcp://"))
	c.Ingest.BrokerURL = "tcp://" + link.Addr()
	c.Engine.DefaultTimeout = 2 * time.Second
	c.Events.Alerts.Mass.Count, c.Events.Alerts.Mass.Share, c.Events.Alerts.Mass.Window = 100, 0, 10*time.Second
	ctx := context.Background()
	sub := s.rdb.Subscribe(ctx, c.Events.PubSub.Channel)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	startDaemon(t, c)

	stop := make(chan struct{})
	done := make(chan struct{})
	quiet := map[int]bool{7: true, 8: true, 9: true} // churn: they stop after the first round
	go func() {
		defer close(done)
		for round := 0; ; round++ {
			for id := range fleet {
				if round == 0 || !quiet[id] {
					s.pub.Publish(fmt.Sprintf("%s/devices/%d/telemetry", s.name, id), 0, false, "{}")
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
	defer func() { close(stop); <-done }()

	counts := map[string]int{}
	msgs := sub.Channel()
	// collect counts events until typ was seen (or, with typ "", until
	// within has passed).
	collect := func(typ string, within time.Duration) {
		t.Helper()
		deadline := time.After(within)
		for typ == "" || counts[typ] == 0 {
			select {
			case m := <-msgs:
				var e events.Event
				if err := json.Unmarshal([]byte(m.Payload), &e); err != nil {
					t.Fatal(err)
				}
				key := e.Type
				if e.Type == "status" {
					key += "/" + e.Status
				}
				counts[key]++
			case <-deadline:
				if typ == "" {
					return
				}
				t.Fatalf("no %s within %v: %v", typ, within, counts)
			}
		}
	}
	collect("status/offline", 5*time.Second) // the churn: 7, 8 and 9 time out
	collect("", time.Second)
	if counts["mass_offline"] != 0 || counts["status/offline"] != 3 {
		t.Fatalf("churn raised %v", counts)
	}
	link.Cut()
	collect("mass_offline", 10*time.Second)
	link.Restore()
	collect("mass_offline_recovered", 20*time.Second)
	if counts["mass_offline"] != 1 || counts["status/offline"] < fleet-3 {
		t.Fatalf("events %v", counts)
	}
}
