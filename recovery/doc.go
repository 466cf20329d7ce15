// Package recovery rebuilds the engine's state from Redis: at start-up
// (restart recovery) and, in a cluster, for the partitions a node gains
// from a member that crashed. Both read the per-partition device index
// (Index: {prefix}index:{partition} sets, which the Redis sink writes in
// the pipeline of a new device's keys, before them) when it is complete, and walk the keyspace otherwise.
// The daemon, the cluster's rebuilds and the benchmarks all recover
// through it. What is stored, and how long recovery takes, is in
// docs/STORAGE.md and BENCHMARKS.md.
package recovery
