// Package daemon is presenced: it builds ingest, the engine, the
// write-behind sinks, events, restart recovery, the cluster node, the HTTP
// API and, when no broker is configured, an embedded MQTT broker from one
// Config (each component's Config registers its own flags), and runs them
// as one ordered list (Daemon.stages) in a lifecycle.Group.
//
// New validates the Config, builds every component without I/O, and binds
// the embedded broker's port, so that a taken port fails at once. Run
// starts the stages in order: the store clients; the embedded broker; the
// API (/healthz answers, /readyz says why it is not ready yet); the sinks
// (Redis keys and device index, Postgres, history, events); the engine's clock;
// the cluster node (it joins, then waits for its membership to settle);
// restart recovery (the state is rebuilt from Redis before any message
// arrives); the write gate (the Redis sink and the events, started
// before, begin writing only now); ingest (it subscribes);
// the demo fleet. /readyz turns 200 once the state is rebuilt and ingest
// subscribed.
//
// On SIGINT or SIGTERM (Run's ctx ends), or when a component fails, Run
// closes the stages in reverse order: the demo fleet; ingest, which stops
// input and hands every queued message to the engine; recovery's rebuilds
// in flight; the cluster node, which leaves and hands its devices off
// within its own bounds; the engine, with a last Advance and Deliver; the
// sinks, in parallel within -shutdown-timeout (what cannot be written is
// logged with its count); the API; the broker; the store clients.
//
// Without Redis, Postgres or an MQTT_URL it runs on an embedded broker with
// in-memory state only; -demo N adds a simulated fleet so a newcomer sees
// devices come and go. Every setting: docs/CONFIGURATION.md.
package daemon
