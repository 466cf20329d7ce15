// Package loadgen simulates a fleet of MQTT devices publishing telemetry,
// for load tests and for watching presence's offline detection at scale.
// The binary cmd/presence-loadgen is a thin wrapper around it: ParseFlags
// builds a Config, New a Runner, and Run publishes until the duration or
// count is reached and returns a Summary.
//
// # Model
//
// N devices (index 0..N-1, id IDStart+index, optionally prefixed) publish on
// a topic template at a total rate R, so each device publishes once per
// period P = N/R. Publications are spread evenly: global slot k is due at
// k/R after the start and belongs to device k mod N. Device i is served by
// connection i mod Conns, so every connection carries an even share of the
// load.
//
// A fraction of the devices (the "silencers", spread evenly over
// connections and phases) skips its slots from SilentAfter on, and
// optionally resumes ReturnAfter later; with Announce set, a silencer
// publishes "offline" on the status topic at its first skipped slot and
// "online" when it comes back.
//
// # Pacing
//
// One goroutine per connection wakes every Tick and publishes every slot
// that is due (a token bucket refilled by the clock, never a sleep per
// message); a second one per connection waits for their completion within a
// bounded in-flight window. There is never a goroutine per message or per
// device. Schedule is the pure, clock-free part, tested deterministically.
package loadgen
