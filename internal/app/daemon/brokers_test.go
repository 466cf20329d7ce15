package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/presence-dev/presence/api"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// TestClusterPlainSubscriptions runs three presenced nodes behind the MQTT
// gateway of nats-server, which has no shared subscriptions, with
// PRESENCE_SHARE_GROUP=none: each node reads the whole stream, keeps
// exactly the devices it owns and forwards nothing.
func TestClusterPlainSubscriptions(t *testing.T) {
	s := newStack(t)
	url := testenv.NATSMQTT(t)
	c := s.config()
	c.Ingest.BrokerURL = url
	c.Ingest.ShareGroup = "none" // as an operator writes it
	a := startClusterNode(t, s, c, "node-a", "")
	b := startClusterNode(t, s, c, "node-b", a.gossip)
	d := startClusterNode(t, s, c, "node-c", a.gossip)
	nodes := []*clusterNode{a, b, d}
	pollUntil(t, 30*time.Second, "the cluster formed", func() error { return formed(nodes...) })
	pollUntil(t, 30*time.Second, "every node ready (its probe back)", func() error {
		for _, n := range nodes {
			if err := n.getJSON("/readyz", &struct{}{}); err != nil {
				return err
			}
		}
		return nil
	})

	pub := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID(s.name + "-pub"))
	if tok := pub.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", url, tok.Error())
	}
	defer pub.Disconnect(100)
	var ids []string
	for i := range 90 {
		id := strconv.Itoa(9001 + i)
		ids = append(ids, id)
		tok := pub.Publish(s.name+"/devices/"+id+"/telemetry", 1, false, "{}")
		if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	pollUntil(t, 20*time.Second, "each device held by its owner only", func() error {
		_, err := ownedExactly(ids, nodes...)
		return err
	})
	// Each message is read by the 3 nodes and kept by 1; the others may
	// still be parsing the last ones.
	pollUntil(t, 20*time.Second, "every other node skipped each message", func() error {
		skipped := 0.0
		for _, n := range nodes {
			m, err := testenv.ScrapeMetrics("http://" + n.api + "/metrics")
			if err != nil {
				return err
			}
			if f := m["presence_cluster_forwarded_messages_total"]; f != 0 {
				t.Fatalf("%s forwarded %v messages; with plain subscriptions every owner reads its own", n.name, f)
			}
			skipped += m["presence_cluster_skipped_messages_total"]
		}
		if want := float64(2 * len(ids)); skipped != want {
			return fmt.Errorf("nodes skipped %v messages in all, want %v", skipped, want)
		}
		return nil
	})
}

// TestPersistentSessionRestart: presenced with -mqtt-persistent-session
// against Mosquitto is stopped, devices publish at QoS 1 meanwhile, and it
// starts again: the broker delivers what it kept, and the devices are
// online, last seen when the messages arrived (after the restart), in the
// engine and in Redis.
func TestPersistentSessionRestart(t *testing.T) {
	s := newStack(t)
	c := s.config()
	c.Ingest.CleanSession = false
	c.Ingest.ClientIDPrefix = s.name + "-p"
	t.Cleanup(func() { // the sessions outlive presenced: discard them
		for i := range c.Ingest.Connections {
			cl := paho.NewClient(paho.NewClientOptions().AddBroker(testenv.MQTTURL()).
				SetClientID(fmt.Sprintf("%s-%d", c.Ingest.ClientIDPrefix, i)).SetCleanSession(true))
			if tok := cl.Connect(); tok.WaitTimeout(5*time.Second) && tok.Error() == nil {
				cl.Disconnect(50)
			}
		}
	})
	first := startDaemon(t, c)
	first.stop(t)

	const n = 40
	for i := range n {
		s.publish(8001+i, "telemetry", "{}")
	}
	restart := time.Now()
	second := startDaemon(t, c)
	testenv.Eventually(t, 15*time.Second, func() error {
		if got := second.d.Engine().Counts().Online; got != n {
			return fmt.Errorf("%d devices online after the restart, want the %d that published while it was down", got, n)
		}
		return nil
	})
	for i := range n {
		d, err := second.d.Engine().Device(strconv.Itoa(8001 + i))
		if err != nil || d.LastSeen.Before(restart) {
			t.Fatalf("device %d: %+v, %v; want last seen at its arrival, after the restart at %v", 8001+i, d, err, restart)
		}
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		status, lastSeen, err := s.redisState(8001)
		if err != nil || status != "online" || lastSeen.Before(restart.Truncate(time.Millisecond)) {
			return fmt.Errorf("Redis: %q %v %v", status, lastSeen, err)
		}
		return nil
	})
}

// TestReadyzNamesMissingSharedSubscriptions: behind the NATS MQTT gateway
// with the default share group presenced is subscribed but receives
// nothing; /readyz says so: to a request with the API token it names the
// fix, to anyone else only the failing check.
func TestReadyzNamesMissingSharedSubscriptions(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	url := testenv.NATSMQTT(t)
	name := testenv.Name(t)
	const token = "readyz-test-token-0123456789abcdef"
	c := DefaultConfig()
	c.Ingest.BrokerURL = url
	c.Ingest.ClientIDPrefix = name
	c.Ingest.Topics[0].Pattern = name + "/devices/{id}/telemetry"
	c.Ingest.Topics[1].Pattern = name + "/devices/{id}/status"
	c.Ingest.ProbeTimeout = time.Second
	c.API.Addr = "127.0.0.1:0"
	c.API.Token = token
	d, err := New(c, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon stopped with %v", err)
		}
	}()
	readyz := func(auth string) (int, api.Readiness, error) {
		req, err := http.NewRequest("GET", "http://"+d.HTTPAddr()+"/readyz", nil)
		if err != nil {
			return 0, api.Readiness{}, err
		}
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
		if err != nil {
			return 0, api.Readiness{}, err
		}
		defer resp.Body.Close()
		var r api.Readiness
		err = json.NewDecoder(resp.Body).Decode(&r)
		return resp.StatusCode, r, err
	}
	testenv.Eventually(t, 15*time.Second, func() error {
		if d.HTTPAddr() == "" {
			return errors.New("API not serving yet")
		}
		code, r, err := readyz(token)
		switch {
		case err != nil:
			return err
		case code == http.StatusOK:
			return errors.New("/readyz ready behind a broker that delivers nothing")
		case !strings.Contains(r.Error, "PRESENCE_SHARE_GROUP=none"):
			return fmt.Errorf("/readyz with the token: %d %+v, want the fix named", code, r)
		}
		t.Logf("/readyz with the token: %+v", r)
		return nil
	})
	for _, auth := range []string{"", "wrong-token"} {
		code, r, err := readyz(auth)
		if err != nil {
			t.Fatal(err)
		}
		if code != http.StatusServiceUnavailable || r.Status != "not ready" || !slices.Equal(r.Reasons, []string{"ingest"}) {
			t.Errorf("/readyz with token %q: %d %+v, want 503 naming the failing checks", auth, code, r)
		}
		if strings.Contains(r.Error, "PRESENCE_SHARE_GROUP") || strings.Contains(r.Error, name) { // the details name the topics
			t.Errorf("/readyz with token %q shows the details: %+v", auth, r)
		}
	}
}
