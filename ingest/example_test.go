package ingest_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/ingest"
)

func ExampleParser_Parse() {
	p, err := ingest.NewParser([]ingest.Topic{
		{Pattern: "devices/{id}/telemetry"},
		{Pattern: "devices/{id}/status", Kind: ingest.KindStatus},
		{Pattern: "lowpower/{id}/telemetry", Timeout: 10 * time.Minute},
	}, 256, 64<<10)
	if err != nil {
		panic(err)
	}
	for _, in := range []struct{ topic, payload string }{
		{"devices/sensor-1/telemetry", `{"t":21.5}`},
		{"devices/sensor-1/status", "offline"},
		{"lowpower/tag-7/telemetry", "x"},
		{"devices/bad id/telemetry", ""},
		{"devices/sensor-1/status", "asleep"},
	} {
		m, err := p.Parse(in.topic, []byte(in.payload))
		if err != nil {
			fmt.Printf("%-28s dropped: %s\n", in.topic, ingest.DropReason(err))
			continue
		}
		fmt.Printf("%-28s id=%s kind=%s offline=%v timeout=%v\n", in.topic, m.ID, m.Kind, m.Offline, m.Timeout)
	}
	// Output:
	// devices/sensor-1/telemetry   id=sensor-1 kind=telemetry offline=false timeout=0s
	// devices/sensor-1/status      id=sensor-1 kind=status offline=true timeout=0s
	// lowpower/tag-7/telemetry     id=tag-7 kind=telemetry offline=false timeout=10m0s
	// devices/bad id/telemetry     dropped: invalid_id
	// devices/sensor-1/status      dropped: bad_status
}

// printHandler stands in for *engine.Engine.
type printHandler struct{}

func (printHandler) TouchBatch(batch []engine.Touch) int {
	for _, t := range batch {
		fmt.Println("touch", t.ID)
	}
	return 0
}

func (printHandler) MarkOffline(id string, at time.Time) error {
	fmt.Println("offline", id)
	return nil
}

// How a daemon wires ingest: build, start, wait for readiness, and on
// shutdown Close before flushing the engine and write-behind.
func ExampleNew() {
	cfg := ingest.DefaultConfig()
	cfg.BrokerURL = os.Getenv("MQTT_URL") // e.g. tcp://127.0.0.1:1883
	slow, _ := ingest.ParseTopicSpec(ingest.KindTelemetry, "lowpower/{id}/telemetry=10m")
	cfg.Topics = append(cfg.Topics, slow)
	cfg.Logger = slog.Default()

	in, err := ingest.New(cfg, printHandler{}) // the daemon passes its *engine.Engine
	if err != nil {
		fmt.Fprintln(os.Stderr, err) // every invalid field, one per line
		os.Exit(2)
	}
	if err := in.Start(context.Background()); err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := in.WaitReady(ctx); err != nil { // /readyz uses in.Ready()
		fmt.Fprintln(os.Stderr, err)
	}
	// ... on SIGTERM:
	in.Close(context.Background()) // input stopped, every accepted message handed to the engine
	// then flush the engine's transitions and the write-behind.
}
