// Package events publishes every status change of every device, every
// decommission (removed), and the alerts derived from them (offline_alert,
// mass_offline, mass_offline_recovered), to the consumers that want them
// pushed: Redis
// Pub/Sub, a Redis Stream, retained MQTT messages, webhooks and Server-Sent
// Events.
//
// Hub is an engine.Sink: HandleTransitions turns each batch into events,
// updates the alert state and copies the events into one bounded queue per
// destination; one worker per destination sends its queue in batches and
// retries a failed batch. A full queue drops its oldest events (Pub/Sub,
// webhooks, SSE: OnFull DropOldest) or, for the destinations that hold
// state for consumers (the Stream, retained MQTT: Backpressure), makes
// HandleTransitions wait for room while their store is up. Event is the JSON every
// destination carries; Sign and VerifySignature are the webhook signature.
//
//	hub, err := events.New(cfg, events.Deps{Redis: rdb, FleetSize: fleetSize, Logger: log})
//	// engine.Config.Sink = hub (beside the other sinks)
//	err = hub.Start(ctx) // the destination workers and the alert ticker
//	apiServer.Handle("GET /v1/events", hub.SSEHandler())
//	...
//	err = hub.Close(shutdownCtx) // ends the streams, sends what is queued within shutdownCtx
//
// Event formats, destinations, delivery guarantees, consumer groups,
// webhook signatures, SSE filters, alert rules and metrics:
// docs/EVENTS.md.
package events
