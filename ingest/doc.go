// Package ingest subscribes to device messages on an MQTT broker and turns
// them into presence input for the engine: activity (engine.Touch) and
// explicit offline transitions (a device's Last Will).
//
// # Data path
//
//	broker --$share/presence/devices/+/telemetry--> conn 0 ┐            ┌-> shard 0 worker -> Handler.TouchBatch
//	       --$share/presence/devices/+/status-----> conn 1 ┴-> callback ┼-> shard 1 worker -> Handler.MarkOffline
//	                                                       (parse, hash) └-> ...
//
// Config.Connections paho clients subscribe to the filters derived from the
// topic patterns ("devices/{id}/telemetry" -> "devices/+/telemetry"), as
// shared subscriptions ("$share/GROUP/FILTER", MQTT 5 and Mosquitto >= 1.6
// for 3.1.1 clients) so the broker splits the stream between connections,
// and between the nodes of a cluster that use the same group.
//
// The message callback runs in paho's router goroutine and never blocks:
// it stamps the receive time (the touch time; Config.Clock), parses the
// topic without allocating (Parser), and appends the message to the queue of
// the shard its device id hashes to. A full queue drops the message and
// counts it (reason queue_full); it never waits for the engine. One worker
// per shard takes its whole queue at once and hands it to the Handler in
// batches of at most Config.BatchSize, after letting a batch fill for up to
// Config.BatchDelay. A device always hashes to the same shard, and each
// connection delivers in order, so a device's messages reach the Handler in
// the order they arrived on a connection (the broker gives no order across
// the members of a shared subscription anyway; the engine keeps last_seen
// monotonic).
//
// # Input rules
//
// A topic pattern has exactly one whole "{id}" level; the other levels are
// literal, "+", or a final "#". Patterns are tried in order and the first
// match wins. A device id is 1 to 128 bytes of printable ASCII without '/',
// '+' or '#' (ValidID). A telemetry message of any payload marks the device
// active. A status message's payload is "online" (activity) or "offline"
// (engine MarkOffline), surrounding whitespace ignored, any case. Each
// pattern may carry an offline timeout for its devices (Topic.Timeout).
// Everything else is dropped and counted by reason: topic_too_long,
// no_match, invalid_id, payload_too_large, bad_status (plus queue_full,
// and closed while shutting down), and logged at most once per
// Config.LogInterval per reason. Bad input never panics (fuzzed).
//
// # Connections
//
// paho retries the first connection every Config.ConnectRetryInterval and
// reconnects after a loss with exponential backoff capped by
// Config.MaxReconnectInterval. Every connect subscribes again (retrying with
// backoff if the broker refuses), whatever the session: with the default
// clean sessions the broker forgets subscriptions on disconnect, and a
// presence message is only meaningful at the time it arrives, so messages
// queued by a persistent session during an outage would be stamped with
// the wrong time. Messages published while a connection is down are lost
// to it (with a shared subscription the broker sends new ones to the other
// members); devices report periodically, so the next message restores
// their state. An outage longer than a device's timeout makes it go
// offline and back online. Ready reports whether every connection is
// connected and subscribed (for /readyz).
//
// QoS 1 (default) acknowledges a message when it is queued here, not once
// the engine has it: a crash loses what sits in the queues, at most
// Config.Shards * Config.QueueSize messages, a few milliseconds' worth.
//
// # Lifecycle and shutdown
//
// New builds (no I/O), Start connects and starts the workers, Run(ctx) is
// Start, wait, Close. Close disconnects first, so nothing new arrives, then
// lets every worker hand its pending messages to the Handler and waits for
// all goroutines. A daemon's SIGTERM path is therefore:
//
//	ingester.Close()  // input stopped, every accepted message in the engine
//	// then: final engine tick and delivery of transitions, then
//	// write-behind flush with a deadline.
//
// # Observability
//
// Metrics live in a metrics.Set per Ingester (Ingester.Metrics):
// presence_ingest_messages_received_total{conn}, _messages_dropped_total
// {reason}, _batches_total, _batch_size, _touches_total,
// _touches_rejected_total, _offline_total, _offline_unknown_total (a Last
// Will of a device the engine does not know), _handler_errors_total,
// _queue_depth, _connects_total, _connections_lost_total,
// _subscribe_errors_total, _connections_subscribed, _ready. Stats returns
// the same figures as a struct.
package ingest
