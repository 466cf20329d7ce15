package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/presence-dev/presence/internal/lifecycle"
)

// demo simulates a small fleet for -demo: each device talks for a while,
// then goes silent long enough to turn offline (a quarter of them announce
// it with an "offline" status message, as a Last Will would), then comes
// back. It publishes through the broker like real devices, so everything
// from ingest on is exercised. The schedule scales with the timeout: with
// -timeout 10s a device talks for 100-300 s and stays silent 15-45 s, and
// the phases are spread out, so 200 devices make about one transition a
// second: ordinary churn, well below what the mass-outage detector calls an
// incident.
type demo struct {
	n         int
	broker    string // URL
	telemetry string // topic with {id}
	status    string // topic with {id}, or "" for none
	timeout   time.Duration
	log       *slog.Logger
	rng       *rand.Rand
	run       lifecycle.Runner
}

// Start starts publishing.
func (d *demo) Start(ctx context.Context) error {
	return d.run.Start(ctx, func(ctx context.Context) {
		if err := d.publish(ctx); err != nil {
			d.log.Error("demo stopped", "err", err)
		}
	})
}

// Close stops publishing and disconnects.
func (d *demo) Close(ctx context.Context) error { return d.run.Close(ctx, nil) }

type demoDevice struct {
	id       string
	online   bool
	next     time.Time // next message, when online
	phaseEnd time.Time
}

// demoTopic picks the first pattern that names one concrete topic per id.
func demoTopic(patterns []string) string {
	for _, p := range patterns {
		p, _, _ = strings.Cut(p, "=")
		if !strings.ContainsAny(p, "+#") && strings.Count(p, "{id}") == 1 {
			return p
		}
	}
	return ""
}

// publish runs the fleet until ctx ends.
func (d *demo) publish(ctx context.Context) error {
	if d.telemetry == "" {
		return fmt.Errorf("demo: no telemetry topic without wildcards to publish on")
	}
	opts := paho.NewClientOptions().AddBroker(d.broker).
		SetClientID(fmt.Sprintf("presenced-demo-%d", rand.Uint32())).
		SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(time.Second)
	c := paho.NewClient(opts)
	c.Connect() // retries in the background until the broker answers
	defer c.Disconnect(250)

	period := max(d.timeout/4, 100*time.Millisecond)
	now := time.Now()
	devs := make([]demoDevice, d.n)
	for i := range devs {
		devs[i] = demoDevice{
			id:       strconv.Itoa(1001 + i),
			online:   true,
			next:     now.Add(d.jitter(period)),
			phaseEnd: now.Add(d.jitter(d.onlineFor())), // spread out: churn, not an outage
		}
	}
	d.log.Info("demo fleet publishing", "devices", d.n, "topic", d.telemetry, "period", period)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now = <-tick.C:
		}
		if !c.IsConnectionOpen() {
			continue
		}
		for i := range devs {
			dev := &devs[i]
			switch {
			case !now.Before(dev.phaseEnd) && dev.online:
				dev.online, dev.phaseEnd = false, now.Add(d.silentFor())
				if d.status != "" && d.rng.IntN(4) == 0 {
					c.Publish(strings.Replace(d.status, "{id}", dev.id, 1), 0, false, "offline")
				}
			case !now.Before(dev.phaseEnd):
				dev.online, dev.phaseEnd, dev.next = true, now.Add(d.onlineFor()), now
			}
			if dev.online && !now.Before(dev.next) {
				payload := fmt.Sprintf(`{"t":%d,"temp":%.1f}`, now.Unix(), 18+4*d.rng.Float64())
				c.Publish(strings.Replace(d.telemetry, "{id}", dev.id, 1), 0, false, payload)
				dev.next = now.Add(period)
			}
		}
	}
}

func (d *demo) jitter(max time.Duration) time.Duration {
	return time.Duration(d.rng.Int64N(int64(max)))
}
func (d *demo) onlineFor() time.Duration { return 10*d.timeout + d.jitter(20*d.timeout) }
func (d *demo) silentFor() time.Duration { return d.timeout + d.timeout/2 + d.jitter(3*d.timeout) }
