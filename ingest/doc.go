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
// connection reads through a 64 KiB buffer (openConn): paho reads a packet
// with three reads or more, and on a bare socket each is a system call.
// At QoS 1 that is what kept a burst from overflowing the broker: a
// subscriber acknowledges late when its reads are slow, the broker's
// in-flight window per connection (Mosquitto: 20) stays full, and its
// queue per connection (1000) overflows (BENCHMARKS.md, "QoS 1 bursts").
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
// is subscribed and a probe published on every filter came back (prober):
// a broker can grant a subscription and deliver nothing on it.
//
// New builds without I/O; Start connects and starts the workers; Close
// disconnects first, then lets every worker hand its pending messages to
// the Handler, so a graceful shutdown closes ingest before the engine. With
// QoS 1 a message is acknowledged once it is queued here, so a crash loses
// what sits in the queues, at most Config.Shards * Config.QueueSize
// messages.
//
// Topic rules, settings and drop reasons: docs/CONFIGURATION.md. Measured
// costs: BENCHMARKS.md.
package ingest
