// Package events publishes every status change of every device, and the
// alerts derived from them, to the consumers that want them pushed: Redis
// Pub/Sub, a Redis Stream, retained MQTT messages, webhooks and
// Server-Sent Events.
//
// # Wiring
//
//	hub, err := events.New(cfg, events.Deps{
//		Redis:     rdb,                                        // Pub/Sub and Stream
//		FleetSize: func() int { return eng.Counts().Total },  // mass-outage share
//		Logger:    log,
//	})
//	// engine.Config.Sink = hub (beside the other sinks)
//	go hub.Run(ctx)
//	apiServer.Handle("GET /v1/events", hub.SSEHandler())
//	metrics.RegisterSet(hub.Metrics())
//	...
//	hub.Close(shutdownCtx) // sends what is queued, within shutdownCtx
//
// # Events
//
// Every event is one JSON object with a "type". Times are UTC with
// microseconds and an explicit offset, like the Redis last-seen contract
// (TimeLayout, "2025-12-14T10:30:45.123456+00:00"; Python's
// datetime.fromisoformat and Go's time.RFC3339 read it).
//
// status, one per engine transition:
//
//	{"type":"status","id":"dev-1","status":"offline","previous":"online",
//	 "at":"2025-12-14T10:30:45.123456+00:00","cause":"timeout"}
//
// status and previous are "online", "offline" or (previous of a device's
// first message) "unknown". at is when the change became true: the message
// time for online, the deadline (last seen + timeout) for a timeout, the
// status message time for a Last Will. cause is telemetry, timeout,
// last_will, restart (the deadline passed while presenced was down) or
// handoff (a cluster node took the device over). "coalesced":true appears
// when the engine folded several changes of the device into this one
// because its consumers fell behind (see engine.Sink).
//
// offline_alert, once per offline period that reaches AlertConfig.OfflineAfter
// (15 min by default):
//
//	{"type":"offline_alert","id":"dev-1","status":"offline",
//	 "at":"2025-12-14T10:45:45.123456+00:00","cause":"timeout",
//	 "since":"2025-12-14T10:30:45.123456+00:00","offline_seconds":900}
//
// since is the status event's at; at is since + OfflineAfter (the alert is
// emitted within AlertConfig.CheckInterval of it); cause is that of the
// offline transition.
//
// mass_offline, once per incident:
//
//	{"type":"mass_offline","incident":"1765708245123-1","at":"...",
//	 "count":120,"fleet":1200,"share":0.1,"window_seconds":30}
//
// count is the devices that went offline within the window and were still
// offline when the incident opened; fleet is Deps.FleetSize() then (0 when
// unknown) and share is count/fleet.
//
// mass_offline_recovered, once per incident:
//
//	{"type":"mass_offline_recovered","incident":"1765708245123-1","at":"...",
//	 "started":"...","count":1000,"recovered":800,"still_offline":200,
//	 "fleet":1200,"share":0.8,"duration_seconds":125}
//
// count is every device of the incident (those of the trigger and those
// that joined it later), recovered those back online, share
// recovered/count.
//
// # Alerts
//
// Prolonged offline: each offline transition puts the device in a min-heap
// ordered by its offline time; a device that comes back is removed; a ticker
// (CheckInterval) pops the devices whose time is up and emits their
// offline_alert. There is no goroutine or timer per device, and at most
// one record per offline device (about 100 bytes with its map entry); a
// device is forgotten once alerted. A device that comes back and goes
// offline again starts a new period and can alert again.
//
// Mass outage: the devices that went offline (cause timeout or last_will;
// restart and handoff transitions are our own recovery, not an outage)
// within the last MassConfig.Window and are still offline are counted in a
// ring of 32 time buckets (hub clock, the time the transition arrived).
// When that count reaches MassConfig.Count, or reaches MassConfig.Share of
// Deps.FleetSize() and at least MassConfig.MinCount, an incident opens:
// one mass_offline, with those devices as its members. While the condition
// still holds, every device that goes offline joins the open incident (a
// broker loss spreads the offline transitions over the devices' reporting
// intervals). The members' own offline_alerts are suppressed while the
// incident is open (counted in presence_events_offline_alerts_suppressed_total);
// their status events still flow to every destination. The incident
// recovers when MassConfig.RecoverShare (80%) of its members are back
// online: one mass_offline_recovered; the members still offline then get
// their own offline_alert when due (at once if their threshold passed
// during the incident). There is at most one open incident; an incident
// that never recovers stays open. Ordinary churn (a few devices flapping,
// a small gateway going away) stays far below both thresholds.
//
// # Destinations and back-pressure
//
// HandleTransitions runs on the engine's delivery goroutine. It converts
// the batch once into compact 48-byte records, updates the alert state,
// and copies the records into each destination's bounded queue
// (DeliveryConfig.QueueCapacity); it never waits for a destination. When a
// queue is full its oldest events are dropped and counted
// (presence_events_dropped_total{dest=...}) with a rate-limited log line.
// One worker per destination sends its queue in batches of
// DeliveryConfig.BatchSize and retries a failed batch, unchanged, with
// exponential backoff and jitter; a dead destination therefore costs its
// own queue, nothing else.
//
//   - Redis Pub/Sub (PubSubConfig.Channel, default "device:status:events"):
//     one PUBLISH of the event JSON per event, a pipeline per batch.
//   - Redis Stream (StreamConfig.Key, default "device:status:stream"): one
//     XADD per event, "MAXLEN ~ StreamConfig.MaxLen" (1,000,000), a
//     pipeline per batch. The entry's fields are the event's JSON fields,
//     every value a string: type, id, status, previous, at, cause (and
//     coalesced) for a status event; the fields above for the other types.
//   - MQTT (MQTTConfig, off by default): status events only, payload
//     "online" or "offline" on MQTTConfig.Topic ("devices/{id}/presence"),
//     QoS 1, retained, so a subscriber gets every device's last status at
//     once. paho reconnects by itself; while disconnected batches fail and
//     wait in the queue.
//   - Webhooks (WebhookConfig, none by default): one worker per URL, POST
//     {"batch":"<id>","events":[...]} with Content-Type application/json,
//     X-Presence-Signature: sha256=<hex HMAC-SHA256 of the body with
//     Secret> (Sign, VerifySignature), X-Presence-Timestamp (Unix seconds of
//     the attempt) and X-Presence-Delivery (the batch id). A 2xx accepts the
//     batch; a network error, 408, 429 or 5xx is retried with backoff, the
//     same body and batch id; any other status drops the batch (counted as
//     an error and as dropped).
//   - SSE (Hub.SSEHandler, GET /v1/events): see below.
//
// # Delivery guarantees
//
// Per destination, events are sent in the order the engine delivered them,
// so in order per device. A batch that failed ambiguously (a timeout after
// Redis applied part of a pipeline, a webhook that processed the request
// but whose answer was lost) is sent again: at least once, consumers
// deduplicate by (id, at, status) or, for webhooks, by batch id. Events
// dropped from a full queue are lost for that destination only, and
// counted. Pub/Sub reaches only subscribers connected at that moment; the
// Stream is the durable one.
//
// # Reading the stream with a consumer group
//
// Create the group once, at the end of the stream ($), creating the stream
// if needed (use 0 instead of $ to also read what is already there):
//
//	XGROUP CREATE device:status:stream presence-consumers $ MKSTREAM
//
// Each consumer process has a stable name and, on start, first re-reads its
// own pending entries (delivered before a crash, never acknowledged) with
// id 0, until that returns none, then reads new entries with >:
//
//	XREADGROUP GROUP presence-consumers worker-1 COUNT 500 STREAMS device:status:stream 0
//	XREADGROUP GROUP presence-consumers worker-1 COUNT 500 BLOCK 5000 STREAMS device:status:stream >
//
// and acknowledges each entry once it has processed it:
//
//	XACK device:status:stream presence-consumers <entry-id> [<entry-id> ...]
//
// Entries of a consumer that died for good are taken over by another one
// after they were idle for a while (here 60 s), repeating with the
// returned cursor until it is 0-0:
//
//	XAUTOCLAIM device:status:stream presence-consumers worker-2 60000 0-0 COUNT 500
//
// Processing is at least once (an entry processed but not yet acknowledged
// at a crash is delivered again): make it idempotent. Consumers that fall
// more than MaxLen entries behind lose the oldest ones to trimming.
// TestStreamConsumerGroupRestart runs exactly this sequence.
//
// # Server-Sent Events
//
// GET /v1/events answers text/event-stream; each event is one
// "data: <json>\n\n" message (no "event:" field, so EventSource's onmessage
// receives every type), ": ping" comments every SSEConfig.Heartbeat (15 s)
// and a "retry: 2000" hint. Filters, each repeatable and comma-separated:
//
//	?id=a,b         events about these devices (status, offline_alert)
//	?status=offline status events with that status, and offline_alerts
//	?type=mass_offline,mass_offline_recovered
//
// A filter on a field keeps only events that have the field with a listed
// value: ?id= or ?status= excludes the incident events. Unknown parameters,
// invalid ids, more than SSEConfig.MaxFilterIDs ids: 400 {"error":...}.
// More than SSEConfig.MaxClients streams: 503. Each client has a buffer of
// SSEConfig.ClientBuffer events filled by the broadcaster without waiting;
// a client that lets it fill (a stalled reader) is disconnected and counted
// (presence_events_sse_slow_disconnects_total); EventSource reconnects.
// Each write has its own deadline (SSEConfig.WriteTimeout), which replaces
// the server's WriteTimeout for the stream. A stream ends when the request
// context ends or the hub closes. There is no replay (Last-Event-ID is
// ignored): durable consumers use the Stream.
//
// # Metrics
//
// In one set (Deps.Metrics or Hub.Metrics), labelled by destination
// ("pubsub", "stream", "mqtt", "sse", webhook names), never by device:
// presence_events_queued, _sent_total, _dropped_total, _errors_total,
// _retries_total, _send_duration_seconds; presence_events_alerts_total{type},
// _offline_alerts_suppressed_total, _offline_tracked, _incident_active;
// presence_events_sse_clients, _sse_connections_total,
// _sse_slow_disconnects_total, _sse_rejected_total, _sse_delivered_total.
//
// # Cost
//
// BENCHMARKS.fragment.md has the numbers: the engine-side cost per
// transition with and without destinations and alerts, beside a plain
// channel send.
package events
