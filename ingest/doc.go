// Package ingest subscribes to device messages on an MQTT broker and turns
// them into presence input for a Handler (the engine, or a cluster Router):
// activity (TouchBatch) and explicit offline transitions (a device's Last
// Will, MarkOffline).
//
//	broker --$share/presence/devices/+/telemetry--> conn 0 ┐            ┌-> shard 0 worker -> Handler.TouchBatch
//	       --$share/presence/devices/+/status-----> conn 1 ┴-> callback ┼-> shard 1 worker -> Handler.MarkOffline
//	                                                       (parse, hash) └-> ...
//
// Config.Connections paho clients subscribe to the filters of the topic
// patterns (Topic, Pattern: "devices/{id}/telemetry" becomes
// "devices/+/telemetry"), as shared subscriptions, so that the broker
// splits the stream between the connections and between the nodes of a
// cluster; or plainly, for brokers without shared subscriptions. Each
// connection's socket is an ingestConn: it reads through a 64 KiB buffer
// (paho reads a packet with three reads or more, on a bare socket a system
// call each) and, with clean sessions, acknowledges QoS 1 messages as it
// reads them, all those of one read in one write, instead of after paho's
// callback path. At QoS 1
// the broker's in-flight window per connection (Mosquitto: 20) makes the
// acknowledgement's round trip the pace of the stream; a subscriber that
// acknowledges late makes the broker's queue (1000 per connection)
// overflow, and the broker drops (BENCHMARKS.md, "QoS 1 bursts").
//
// The message callback runs on paho's goroutine and never blocks: it
// stamps the receive time (the touch time), parses the topic without
// allocating (Parser) and appends the message to the bounded queue of the
// shard its device id hashes to; a full queue drops the message and counts
// it. One worker per shard hands its queue to the Handler in batches of at
// most Config.BatchSize. A device always hashes to the same shard, so its
// messages reach the Handler in the order they arrived on a connection.
// Bad input is dropped and counted by reason; it never panics (fuzzed).
//
// Connections reconnect and subscribe again by themselves, with clean
// sessions by default (Config.CleanSession): a presence message means
// something at the time it arrives. Ready reports whether every connection
// is subscribed and every filter delivered since, a probe if nothing else
// (prober): a broker can grant a subscription and deliver nothing on it.
//
// New builds without I/O; Start connects and starts the workers; Close
// disconnects first, then lets every worker hand its pending messages to
// the Handler, so a graceful shutdown closes ingest before the engine. With
// QoS 1 a message is acknowledged once it is read (with a persistent
// session, once the callback queued it), so a crash loses what was read
// and not yet handed to the Handler: what sits in the queues (at
// most Config.Shards * Config.QueueSize messages) and in paho's pipeline.
//
// HTTP touches (TouchesHandler, POST /v1/touches) are messages too: stamped
// on receipt, validated and counted as MQTT messages are (conn="http"), and
// handed to the Handler by the request itself while the Ingester runs.
//
// Topic rules, settings and drop reasons: docs/CONFIGURATION.md. Measured
// costs: BENCHMARKS.md.
package ingest
