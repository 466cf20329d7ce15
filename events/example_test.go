package events_test

import (
	"fmt"
	"time"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/events"
)

// A hub with only the SSE stream and the alerts (no Redis): what the
// daemon builds when Redis is not configured.
func ExampleNew() {
	cfg := events.DefaultConfig()
	cfg.PubSub.Enabled, cfg.Stream.Enabled = false, false
	cfg.Alerts.OfflineAfter = 10 * time.Minute
	hub, err := events.New(cfg, events.Deps{FleetSize: func() int { return 1200 }})
	if err != nil {
		panic(err)
	}
	hub.HandleTransitions([]engine.Transition{{
		ID: "dev-1", From: engine.StatusOnline, To: engine.StatusOffline,
		At: time.Now(), Cause: engine.CauseTimeout,
	}})
	fmt.Println(hub.SSEHandler() != nil)
	// Output: true
}

// A webhook receiver checks the signature of each request.
func ExampleVerifySignature() {
	body := []byte(`{"batch":"x","events":[]}`)
	header := events.Sign([]byte("secret"), body) // what the hub sends
	fmt.Println(header)
	fmt.Println(events.VerifySignature([]byte("secret"), body, header))
	// Output:
	// sha256=8af452820a0847fc48cdbfbb25931e275fecd3d55d2de1be3904fcdd9cd870df
	// true
}
