// Package bench holds presence's end-to-end benchmarks and the baseline
// peers they compare it with: a bare MQTT subscriber (the ceiling) and
// SeedTracker, a faithful Go port of the seed's DeviceStatusTracker
// (SEED.md), the design presence replaces. The benchmarks run against the
// real Mosquitto, Redis and PostgreSQL of the machine (MQTT_URL, REDIS_URL,
// DATABASE_URL override the local defaults; see
// internal/testsupport/testenv), with a unique topic root, Redis key prefix
// and tables per run, all removed afterwards. Under -short they skip.
// Results are in BENCHMARKS.md, not here.
//
//	go test ./bench -run '^$' -bench . -benchtime 1x -count 3 -timeout 30m
//
// # BenchmarkEndToEnd: messages fully handled per second
//
// Three sub-benchmarks, run one after the other in one go test run, get
// exactly the same input: two publisher connections (internal/app/loadgen)
// publish 300,000 telemetry messages for 10,000 devices (ids 1..10000, 30
// messages each, round robin) to "<root>/devices/{id}/telemetry" on the same
// broker, unpaced: each connection keeps up to 1000 publishes in flight and
// goes as fast as the client and the broker take them.
//
//   - system=presence is the real daemon (internal/app/daemon) with its
//     defaults: 2 subscriber connections in one shared-subscription group,
//     QoS 1 subscriptions, the engine, Redis write-behind (status and
//     last-seen keys under a unique prefix) and Postgres write-behind into a
//     devices table holding the 10,000 rows, plus the history table.
//   - system=bare-subscriber has the same 2 connections in one shared group
//     at QoS 1, and a handler that only counts: no system built on paho can
//     receive more, so it is the ceiling.
//   - system=seed-design has the same subscriptions, and handles every
//     message synchronously in the paho callback with
//     SeedTracker.UpdateDeviceActivity: SET status EX 24h, SET lastseen EX
//     24h, UPDATE devices SET last_seen = $1 WHERE id = $2, one round trip
//     each, as the seed does; meanwhile the seed's background monitor
//     (SeedTracker.Monitor) runs check_and_update_status for every device,
//     then sleeps a second, over and over.
//
// Each iteration reports msgs/s: messages handled divided by the wall time
// from the first publish to the last message handled. Handled means: for
// presence, a touch accepted by the engine (engine Stats().Touches); for the
// bare subscriber, a message its handler counted; for the seed, an
// UpdateDeviceActivity that returned without error (its Redis and Postgres
// writes done). The handled counter is polled every 2 ms; the iteration ends
// when it reaches the number published, or when it has not moved for a
// second after the publishers finished (the broker dropped the rest). A
// system is never credited for a message it did not handle: delivered-%
// (handled / published) says how much it got, and pub-msgs/s shows the rate
// the publishers achieved in that run.
//
// The seed's per-message work is durable when it is counted; presence's is
// written behind. So presence also waits, after the last touch, until Redis
// (status and last-seen key of every device) and Postgres (last_seen of every
// row) hold the last-seen time the engine has for every device, and reports
// flush-ms (last touch to verified, measured by polling both stores, so an
// upper bound) and durable-msgs/s (handled / time from first publish to
// verified durable). broker-lost-% and queue-full tell where presence's
// undelivered messages went: never received from the broker, or dropped by
// ingest's bounded queues.
//
// Why the publishes are QoS 0 while every subscription is QoS 1 (presence's
// default): MQTT delivers at the lower of the two, so the messages reach all
// three systems at QoS 0. At QoS 1 Mosquitto lets a subscriber connection
// have only max_inflight_messages (20) unacknowledged messages and drops
// beyond max_queued_messages (1000), so the broker's acknowledgement window,
// not the system under test, would set the pace of all three. At QoS 0 the
// broker writes as fast as each subscriber reads, and what a subscriber does
// not read in time the broker drops, visibly (delivered-%). Periodic
// telemetry, where the next message supersedes the last, is commonly sent
// at QoS 0.
//
// Why unpaced rather than a fixed offered rate: a rate that all three
// sustain would say nothing about headroom (presence and the bare subscriber
// would both show the offered rate), and a rate only the fast ones sustain
// makes the seed drop most of it anyway. Unpaced, every system is measured at
// its saturation point on the same input. The seed does not make the run
// take minutes: the broker drops what it cannot take, so its iteration lasts
// about as long as the broker keeps messages queued for it.
//
// The comparison is kind to the seed: the port is Go (no interpreter, no
// GIL), the two connections' callbacks run in parallel, and the Redis and
// Postgres clients are pooled with prepared statements. Everything shares
// the machine's cores with the broker, the publishers, Redis and Postgres,
// for all three systems alike.
//
// # BenchmarkEndToEnd/qos=1: a QoS 1 burst
//
// A fleet comes online at once: 100,000 devices each publish one QoS 1
// message, from 4 publisher connections, paced at 20,000 msgs/s (a 5 s
// burst; rate=40k offers twice that). Messages reach the subscribers at QoS
// 1, so the broker's in-flight window per subscriber connection
// (Mosquitto's max_inflight_messages, 20 by default) and its queue per
// connection (max_queued_messages, 1000) apply: a subscriber that
// acknowledges too slowly makes the broker drop, and delivered-% says how
// much arrived. Presence, in two configurations, and two baselines get the
// same burst on the same broker, each with 2 subscriber connections in one
// shared group at QoS 1:
//
//   - system=presence is the daemon with its defaults and Redis
//     write-behind; handled is touches accepted by the engine, and
//     ingest-dropped what ingest itself dropped (its queues full);
//     system=presence-in-memory is the same daemon without Redis;
//   - system=paho is paho configured as ingest's connections are (in-order
//     callbacks on paho's goroutine), counting in its handler;
//   - system=mosquitto_sub is two mosquitto_sub -q 1 processes (the C
//     client of Mosquitto), counting the topics they print; skipped when the
//     binary is missing (Debian package mosquitto-clients).
//
// msgs/s is handled over the time from the first publish to the last
// message handled; the iteration ends as in BenchmarkEndToEnd.
//
// # BenchmarkCluster: one node against three
//
// The same input into one unclustered presenced (nodes=1) and into three
// in-process presenced nodes joined into one cluster (nodes=3; the
// benchmark waits until all three agree on the table), each with the
// daemon's defaults and Redis and Postgres write-behind on the same prefix
// and tables. Handled is the touches accepted by the engines, summed over
// the nodes; fwd-msgs, fwd-% and fwd-B/msg come from the nodes'
// presence_cluster_forwarded_* counters, cpu-us/msg is this process's CPU
// (daemons and publishers) per message handled. On one machine the three
// nodes share its cores with each other, the broker, the publishers, Redis
// and Postgres: this measures the cost of forwarding, not how throughput
// scales with nodes.
//
// # BenchmarkMassExpiry: 1M devices offline at once, no event lost
//
// The daemon with its defaults and Redis (the Stream on a key of its own),
// 1,000,000 devices made online through the engine (TouchBatch, not MQTT),
// then given one deadline; policy=drop-oldest (the Stream's behaviour
// before issue 11) beside policy=backpressure (the default). It reports the
// offline events that reached the stream, those dropped, and the time from
// the deadline to the last and the median one.
//
// # BenchmarkHydrate: restart recovery from Redis
//
// devices=1M stores 1,000,000 devices' status and last-seen keys under a
// unique prefix (pipelined SETs with the 24 h TTL): 60% online and within
// the default 60 s timeout, 20% online in Redis but past their deadline (the
// daemon was down), 20% offline. One op rebuilds a fresh engine (default
// configuration, the two trackers of the Redis and Postgres sinks) with the
// daemon's own restart recovery, recovery.Recovery.Start, twice: without a
// complete device index (scan-seconds: the keyspace walk, which then fills
// the index) and with it (seconds: the 1024 index sets and the devices'
// keys). Each rebuild is checked: every device restored, exactly the live
// ones online, one offline transition (cause restart) for each expired one.
// It reports devices and devices/s, and redis-keys (DBSIZE: the keyspace
// walk covers other users' keys too). After the timed ops it starts the
// real daemon once on the same keys and reports the rebuild time the daemon
// logs as daemon-seconds.
//
// # BenchmarkDaemonScale: 1M and 10M devices through the whole daemon
//
// In one run, each size through four phases (see the benchmark's comment):
// hydration from Redis (first start, which walks the keyspace and builds
// the device index, and a later start, which reads it); one first message
// per device through Mosquitto, to a bare paho subscriber and then to the
// daemon with Redis, PostgreSQL, history, events and alerts on, both in
// the same closed loop (at most 20,000 messages in flight, so the broker
// drops nothing and the rate is the receiver's); a mass expiry of every
// device at one deadline, timed until the Redis keys, the PostgreSQL rows
// and every event are written, each status key then read back; and the
// live heap and RSS per device in both steady states, the longest GC
// pause, and Redis's memory for the seed's two keys per device.
//
// # BenchmarkHTTPTouches: POST /v1/touches beside MQTT ingest
//
// One daemon, BenchmarkEndToEnd's workload (300,000 messages for 10,000
// known devices a round, two connections): through Mosquitto, then posted
// by two HTTP clients with 1, 100 and 1,000 ids a request; msgs/s is the
// touches the engine accepted per second.
//
// # The baseline peers
//
// SeedTracker ports update_device_activity, get_last_seen,
// is_device_online, get_device_status, check_and_update_status,
// sync_status_to_database and sync_last_seen_to_database one for one, with
// the seed's round trips; its tests (seed_test.go) show it marks a device
// online and offline as the seed does, against the real Redis and Postgres
// and through the broker. Subscriber is the paho side shared by the bare
// subscriber and the seed: connections configured as presence's ingest
// configures its own (clean session, in-order callbacks on paho's goroutine).
package bench
