package engine_test

import (
	"fmt"
	"time"

	"github.com/presence-dev/presence/engine"
)

func Example() {
	start := time.Date(2025, 12, 14, 10, 30, 0, 0, time.UTC)
	now := start
	cfg := engine.DefaultConfig()
	cfg.Now = func() time.Time { return now }
	cfg.Sink = engine.SinkFunc(func(batch []engine.Transition) {
		for _, t := range batch {
			fmt.Printf("%s %v -> %v at %s (%v)\n", t.ID, t.From, t.To, t.At.Format("15:04:05"), t.Cause)
		}
	})
	e, err := engine.New(cfg)
	if err != nil {
		panic(err)
	}

	e.Touch("123", now) // first message: online
	e.Deliver()
	e.TouchBatch([]engine.Touch{{ID: "456", At: now, Timeout: 5 * time.Second}}) // a fast sensor
	e.Deliver()

	now = start.Add(10 * time.Second) // Start's clock would do this every Tick/4
	e.Advance(now)
	e.Deliver()

	e.MarkOffline("123", now) // its Last Will
	e.Deliver()
	fmt.Printf("%+v\n", e.Counts())
	// Output:
	// 123 unknown -> online at 10:30:00 (telemetry)
	// 456 unknown -> online at 10:30:00 (telemetry)
	// 456 online -> offline at 10:30:05 (timeout)
	// 123 online -> offline at 10:30:10 (last_will)
	// {Total:2 Online:0 Offline:2}
}
