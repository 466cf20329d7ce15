// Package daemon is presenced: it wires ingest, the engine, write-behind,
// the HTTP API and, when no broker is configured, an embedded MQTT broker,
// and runs them with one ordered shutdown.
//
// Start-up: bind the HTTP port and (embedded) broker port first, so that a
// taken port fails at once with what to do; rebuild the engine from Redis
// (restart recovery); start the engine clock, the sinks and the API; then
// subscribe. /readyz turns 200 once hydrated and subscribed.
//
// Shutdown (SIGINT/SIGTERM): stop the demo fleet; close ingest, which hands
// every queued message to the engine; stop the engine clock after a last
// Advance and Deliver; flush Redis, Postgres and history within
// -shutdown-timeout (what cannot be written is logged with its count); stop
// the API.
//
// Without Redis, Postgres or an MQTT_URL it runs on an embedded broker with
// in-memory state only; -demo N adds a simulated fleet so a newcomer sees
// devices come and go.
package daemon
