package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

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
			m, err := n.metrics()
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

// metrics scrapes the node's /metrics into series -> value.
func (n *clusterNode) metrics() (map[string]float64, error) {
	resp, err := http.Get("http://" + n.api + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		series, value, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(series, "#") {
			continue
		}
		if v, err := strconv.ParseFloat(value, 64); err == nil {
			out[series] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s /metrics: %w", n.name, err)
	}
	return out, nil
}

// TestReadyzNamesMissingSharedSubscriptions: behind the NATS MQTT gateway
// with the default share group presenced is subscribed but receives
// nothing; /readyz says so and names the fix.
func TestReadyzNamesMissingSharedSubscriptions(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	url := testenv.NATSMQTT(t)
	name := testenv.Name(t)
	c := DefaultConfig()
	c.Ingest.BrokerURL = url
	c.Ingest.ClientIDPrefix = name
	c.Ingest.Topics[0].Pattern = name + "/devices/{id}/telemetry"
	c.Ingest.Topics[1].Pattern = name + "/devices/{id}/status"
	c.Ingest.ProbeTimeout = time.Second
	c.API.Addr = "127.0.0.1:0"
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
	r := &running{d: d}
	testenv.Eventually(t, 15*time.Second, func() error {
		if d.HTTPAddr() == "" {
			return errors.New("API not serving yet")
		}
		var body string
		err := r.get("/readyz", &body)
		switch {
		case err == nil:
			return errors.New("/readyz ready behind a broker that delivers nothing")
		case !strings.Contains(body, "PRESENCE_SHARE_GROUP=none"):
			return fmt.Errorf("/readyz: %v, want the fix named", err)
		}
		t.Logf("/readyz: %s", body)
		return nil
	})
}
