package bench

import (
	"bufio"
	"context"
	"fmt"
	"net/url"
	"os/exec"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/presence-dev/presence/internal/app/loadgen"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// The QoS 1 burst of BenchmarkEndToEnd/qos=1, the same for every system: a
// fleet that comes online at once, each device publishing one QoS 1 message,
// paced at a rate of burstRates (20,000 msgs/s: the burst lasts 5 s).
const (
	burstDevices  = 100_000
	burstPubConns = 4
	burstSubConns = 2 // subscriber connections of every system (presence's default)
)

// burstRates are the offered rates, msgs/s: the burst of issue 11, and
// twice it, past what a paho connection acknowledges on this machine.
var burstRates = []int{20_000, 40_000}

// benchQoS1 runs the QoS 1 burst into presence and its two baselines. At
// QoS 1 the broker keeps at most max_inflight_messages (Mosquitto: 20)
// unacknowledged messages per subscriber connection and queues at most
// max_queued_messages (1000) more; beyond that it drops. So delivered-% is
// set by how fast a subscriber acknowledges, and the baselines show what the
// broker allows: a bare paho subscriber and the C client, mosquitto_sub.
func benchQoS1(b *testing.B) {
	for _, rate := range burstRates {
		b.Run(fmt.Sprintf("rate=%dk", rate/1000), func(b *testing.B) {
			b.Run("system=presence", func(b *testing.B) { benchBurstPresence(b, float64(rate), true) })
			b.Run("system=presence-in-memory", func(b *testing.B) { benchBurstPresence(b, float64(rate), false) })
			b.Run("system=paho", func(b *testing.B) { benchBurstPaho(b, float64(rate)) })
			b.Run("system=mosquitto_sub", func(b *testing.B) { benchBurstMosquittoSub(b, float64(rate)) })
		})
	}
}

func (f *fixture) burstLoad(rate float64) loadgen.Config {
	cfg := f.load()
	cfg.Devices = burstDevices
	cfg.Rate = rate
	cfg.Count = burstDevices
	cfg.Conns = burstPubConns
	cfg.QoS = 1
	return cfg
}

// benchBurstPresence is the daemon with its defaults, with Redis
// write-behind (status and last-seen keys, the device index, the event
// Stream and Pub/Sub) or in memory only. Handled is received by ingest and
// accepted by the engine.
func benchBurstPresence(b *testing.B, rate float64, withRedis bool) {
	f := newFixture(b, 0)
	cfg := f.daemonConfig()
	if !withRedis {
		cfg.Redis.URL = ""
	}
	if cfg.Ingest.Connections != burstSubConns || cfg.Ingest.QoS != 1 {
		b.Fatalf("daemon defaults changed (%d connections, QoS %d): update the benchmark's workload", cfg.Ingest.Connections, cfg.Ingest.QoS)
	}
	d := startBenchDaemon(b, cfg)
	testenv.Eventually(b, 30*time.Second, func() error { return getOK("http://" + d.HTTPAddr() + "/readyz") })
	eng := d.Engine()
	iterate(b, func() e2eResult {
		return publishLoad(b, f.burstLoad(rate), func() uint64 { return eng.Stats().Touches })
	})
	m, err := testenv.ScrapeMetrics("http://" + d.HTTPAddr() + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(m["presence_ingest_messages_dropped_total"], "ingest-dropped")
}

// benchBurstPaho is the paho client configured as ingest's connections are,
// with a handler that only counts.
func benchBurstPaho(b *testing.B, rate float64) {
	f := newFixture(b, 0)
	var n atomic.Uint64
	cfg := subscriberConfig(f)
	cfg.Connections, cfg.QoS = burstSubConns, 1
	sub, err := Subscribe(cfg, func(int, mqtt.Message) { n.Add(1) })
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Close()
	iterate(b, func() e2eResult { return publishLoad(b, f.burstLoad(rate), n.Load) })
}

// benchBurstMosquittoSub runs burstSubConns mosquitto_sub processes in one
// shared group at QoS 1 and counts the topics they print.
func benchBurstMosquittoSub(b *testing.B, rate float64) {
	path, err := exec.LookPath("mosquitto_sub")
	if err != nil {
		b.Skip("mosquitto_sub not installed (Debian package mosquitto-clients)")
	}
	f := newFixture(b, 0)
	u, err := url.Parse(testenv.MQTTURL())
	if err != nil || u.Scheme != "tcp" && u.Scheme != "mqtt" {
		b.Skipf("mosquitto_sub needs a tcp:// broker, not %q", testenv.MQTTURL())
	}
	host, port := u.Hostname(), u.Port()
	var n atomic.Uint64
	ready := make([]chan struct{}, burstSubConns)
	for i := range burstSubConns {
		ready[i] = make(chan struct{})
		readyTopic := f.name + "/ready/" + strconv.Itoa(i)
		ctx, cancel := context.WithCancel(context.Background())
		cmd := exec.CommandContext(ctx, path, "-h", host, "-p", port, "-q", "1",
			"-i", f.name+"-sub-"+strconv.Itoa(i),
			"-t", "$share/"+f.name+"/"+f.name+"/devices/+/telemetry",
			"-t", readyTopic, "-F", "%t")
		out, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{})
		b.Cleanup(func() { cancel(); <-done; _ = cmd.Wait() })
		go func() {
			defer close(done)
			sc := bufio.NewScanner(out)
			isReady := false
			for sc.Scan() {
				if sc.Text() == readyTopic {
					if !isReady {
						isReady = true
						close(ready[i])
					}
					continue
				}
				n.Add(1)
			}
		}()
	}
	waitSubscribed(b, f, ready)
	iterate(b, func() e2eResult { return publishLoad(b, f.burstLoad(rate), n.Load) })
}

// waitSubscribed publishes on each subscriber's private ready topic until
// the subscriber has printed it: its SUBSCRIBE (which carries the shared
// filter too) has been acknowledged.
func waitSubscribed(b *testing.B, f *fixture, ready []chan struct{}) {
	b.Helper()
	opts := mqtt.NewClientOptions().AddBroker(testenv.MQTTURL()).SetClientID(f.name + "-ready")
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatalf("connect %s: %v", testenv.MQTTURL(), tok.Error())
	}
	defer c.Disconnect(100)
	deadline := time.Now().Add(10 * time.Second)
	for i, r := range ready {
		for {
			c.Publish(f.name+"/ready/"+strconv.Itoa(i), 0, false, "x")
			select {
			case <-r:
			case <-time.After(100 * time.Millisecond):
				if time.Now().After(deadline) {
					b.Fatalf("mosquitto_sub %d not subscribed after 10 s", i)
				}
				continue
			}
			break
		}
	}
}
