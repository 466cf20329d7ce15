package ingest

import (
	"context"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/presence-dev/presence/engine"

	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

var benchTopics = []Topic{
	{Pattern: "devices/{id}/telemetry"},
	{Pattern: "devices/{id}/status", Kind: KindStatus},
}

var benchInputs = []struct {
	name, topic, payload string
}{
	{"telemetry", "devices/sensor-000123/telemetry", `{"t":21.5,"h":40}`},
	{"status", "devices/sensor-000123/status", "offline"},
	{"nomatch", "other/sensor-000123/telemetry", ""},
	{"invalid", "devices/sensor 000123/telemetry", ""},
}

// splitParse is the baseline: what Parser.Parse does, written the obvious
// way with strings.Split.
func splitParse(topics []Topic, maxTopicLen, maxPayloadLen int, topic string, payload []byte) (Message, error) {
	if len(topic) > maxTopicLen {
		return Message{}, ErrTopicTooLong
	}
	for i, t := range topics {
		id, ok := splitMatch(t.Pattern, topic)
		if !ok {
			continue
		}
		if !ValidID(id) {
			return Message{}, ErrInvalidID
		}
		if len(payload) > maxPayloadLen {
			return Message{}, ErrPayloadTooLarge
		}
		m := Message{ID: id, Kind: t.Kind, Timeout: t.Timeout, Pattern: i}
		if t.Kind == KindStatus {
			switch strings.ToLower(strings.TrimSpace(string(payload))) {
			case "online":
			case "offline":
				m.Offline = true
			default:
				return Message{}, ErrBadStatus
			}
		}
		return m, nil
	}
	return Message{}, ErrNoMatch
}

// BenchmarkParse compares Parser.Parse with the strings.Split baseline.
//
//	go test -run '^$' -bench 'BenchmarkParse$' -benchmem -count 6 ./ingest/
func BenchmarkParse(b *testing.B) {
	p, err := NewParser(benchTopics, 256, 64<<10)
	if err != nil {
		b.Fatal(err)
	}
	for _, in := range benchInputs {
		payload := []byte(in.payload)
		b.Run("input="+in.name+"/impl=ingest", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, _ = p.Parse(in.topic, payload)
			}
		})
		b.Run("input="+in.name+"/impl=split", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, _ = splitParse(benchTopics, 256, 64<<10, in.topic, payload)
			}
		})
	}
}

type nopHandler struct{ n atomic.Int64 }

func (h *nopHandler) TouchBatch(batch []engine.Touch) int       { h.n.Add(int64(len(batch))); return 0 }
func (h *nopHandler) MarkOffline(id string, at time.Time) error { h.n.Add(1); return nil }

// BenchmarkHandoff measures the whole message callback (clock, parse,
// hash, queue) with workers draining into a no-op handler, from
// GOMAXPROCS goroutines like several connections. impl=chan is the
// baseline: the same callback with one buffered channel per shard and a
// worker that receives and batches. Producers saturate every core, so the
// queues overflow: compare delivered/s (messages that reached the
// handler per second), not ns/op (a drop is cheaper than a hand-off).
//
//	go test -run '^$' -bench 'BenchmarkHandoff$' -benchmem -count 6 ./ingest/
func BenchmarkHandoff(b *testing.B) {
	topics := make([]string, 4096)
	for i := range topics {
		topics[i] = fmt.Sprintf("devices/sensor-%06d/telemetry", i)
	}
	payload := []byte(`{"t":21.5}`)
	const shards, queue, batch = 4, 16384, 512

	b.Run("impl=shard", func(b *testing.B) {
		h := &nopHandler{}
		in := newUnstarted(b, h, func(c *Config) {
			c.Shards, c.QueueSize, c.BatchSize = shards, queue, batch
		})
		var next atomic.Uint64
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			i := next.Add(1) * 997
			for pb.Next() {
				i++
				in.onMessage(0, topics[i%uint64(len(topics))], payload)
			}
		})
		in.Close(context.Background()) // timed: delivering what is queued is part of the work
		b.StopTimer()
		b.ReportMetric(float64(in.Stats().Dropped["queue_full"])/float64(b.N), "drops/op")
		b.ReportMetric(float64(h.n.Load())/b.Elapsed().Seconds(), "delivered/s")
	})

	b.Run("impl=chan", func(b *testing.B) {
		h := &nopHandler{}
		p, _ := NewParser(benchTopics, 256, 64<<10)
		seed := maphash.MakeSeed()
		chans := make([]chan engine.Touch, shards)
		var wg sync.WaitGroup
		for s := range chans {
			chans[s] = make(chan engine.Touch, queue)
			wg.Go(func() {
				buf := make([]engine.Touch, 0, batch)
				for t := range chans[s] {
					buf = append(buf[:0], t)
				fill:
					for len(buf) < batch {
						select {
						case t, ok := <-chans[s]:
							if !ok {
								break fill
							}
							buf = append(buf, t)
						default:
							break fill
						}
					}
					h.TouchBatch(buf)
				}
			})
		}
		var drops atomic.Int64
		var next atomic.Uint64
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			i := next.Add(1) * 997
			for pb.Next() {
				i++
				topic := topics[i%uint64(len(topics))]
				now := time.Now()
				m, err := p.Parse(topic, payload)
				if err != nil {
					continue
				}
				select {
				case chans[maphash.String(seed, m.ID)%shards] <- engine.Touch{ID: m.ID, At: now, Timeout: m.Timeout}:
				default:
					drops.Add(1)
				}
			}
		})
		for _, c := range chans {
			close(c)
		}
		wg.Wait()
		b.StopTimer()
		b.ReportMetric(float64(drops.Load())/float64(b.N), "drops/op")
		b.ReportMetric(float64(h.n.Load())/b.Elapsed().Seconds(), "delivered/s")
	})
}

// BenchmarkMosquitto measures messages per second through the real broker
// (MQTT_URL): the same two publishers (QoS 0, 4096 devices) feed either a
// bare paho subscriber that only counts (the ceiling), or an Ingester with a
// no-op handler. One op is one message.
//
//	go test -run '^$' -bench 'BenchmarkMosquitto' -benchtime 200000x -count 5 ./ingest/
func BenchmarkMosquitto(b *testing.B) {
	url := testenv.MQTTURL()
	if c, err := net.DialTimeout("tcp", strings.TrimPrefix(url, "tcp://"), time.Second); err != nil {
		b.Skipf("no broker at %s: %v", url, err)
	} else {
		c.Close()
	}
	prefix := fmt.Sprintf("bench/%08x/", rand.Uint32())
	topics := make([]string, 4096)
	for i := range topics {
		topics[i] = fmt.Sprintf("%sdevices/dev-%06d/telemetry", prefix, i)
	}
	payload := []byte(`{"t":21.5,"h":40,"bat":3.9}`)

	// run publishes b.N messages and waits until count() reaches b.N or
	// stops progressing; it reports msgs/s and the loss.
	run := func(b *testing.B, count func() int64) {
		pubs := make([]mqtt.Client, 2)
		for i := range pubs {
			pubs[i] = mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).
				SetClientID(fmt.Sprintf("bench-pub-%08x", rand.Uint32())))
			if tok := pubs[i].Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				b.Fatal(tok.Error())
			}
			defer pubs[i].Disconnect(100)
		}
		base := count()
		b.ResetTimer()
		start := time.Now()
		var wg sync.WaitGroup
		for p, c := range pubs {
			wg.Go(func() {
				for i := p; i < b.N; i += len(pubs) {
					c.Publish(topics[i%len(topics)], 0, false, payload)
				}
			})
		}
		wg.Wait()
		// The broker drops what a saturated subscriber cannot take, so the
		// end is the last message received, not the b.N-th.
		last, lastChange := int64(-1), time.Now()
		for {
			n := count() - base
			if n != last {
				last, lastChange = n, time.Now()
			}
			if n >= int64(b.N) || time.Since(lastChange) > time.Second {
				break
			}
			time.Sleep(time.Millisecond)
		}
		elapsed := lastChange.Sub(start)
		b.StopTimer()
		n := last
		b.ReportMetric(float64(n)/elapsed.Seconds(), "msgs/s")
		b.ReportMetric(1-float64(n)/float64(b.N), "lost")
	}

	b.Run("system=bare-paho", func(b *testing.B) {
		var n atomic.Int64
		c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).
			SetClientID(fmt.Sprintf("bench-sub-%08x", rand.Uint32())).SetOrderMatters(true).
			SetDefaultPublishHandler(func(mqtt.Client, mqtt.Message) { n.Add(1) }))
		if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			b.Fatal(tok.Error())
		}
		defer c.Disconnect(100)
		if tok := c.Subscribe(prefix+"devices/+/telemetry", 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			b.Fatal(tok.Error())
		}
		run(b, n.Load)
	})
	for _, conns := range []int{1, 2} {
		b.Run(fmt.Sprintf("system=ingest/conns=%d", conns), func(b *testing.B) {
			h := &nopHandler{}
			cfg := DefaultConfig()
			cfg.BrokerURL = url
			cfg.Topics = []Topic{{Pattern: prefix + "devices/{id}/telemetry"}}
			cfg.Connections = conns
			cfg.ShareGroup = fmt.Sprintf("bench%08x", rand.Uint32())
			in, err := New(cfg, h)
			if err != nil {
				b.Fatal(err)
			}
			defer in.Close(context.Background())
			if err := in.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := in.WaitReady(ctx); err != nil {
				b.Fatal(err)
			}
			run(b, h.n.Load)
			b.ReportMetric(float64(in.Stats().Dropped["queue_full"]), "queue_full")
		})
	}
}
