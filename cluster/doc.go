// Package cluster lets several presence nodes share the devices: each device
// is owned by exactly one live node, the one that keeps its state and timer.
//
// # Big picture
//
//	MQTT broker --$share/presence/...--> ingest (every node)
//	                                       |  ingest.Handler
//	                                       v
//	                                    Router ---- owned here -----------> Local (engine)
//	                                       |
//	                                       +-- owned by peer P --> queue(P) --TCP--> P's server --> P's Local
//
// Every node subscribes to the same shared subscription, so the broker hands
// each message to some node. That node's Router (an ingest.Handler) applies
// the message to its own engine if it owns the device, and otherwise queues
// it for the owner, which receives it over one persistent TCP connection per
// peer (the data connection; PROTOCOL.md describes the frames).
//
// Ownership is two fixed functions, identical on every node and in every
// version: a device id maps to one of Config.Partitions partitions (1024) by
// a stable 64-bit hash (PartitionOf), and a partition to the live member
// with the highest rendezvous weight (NewTable). The same member names give
// the same Table everywhere, with no coordination; a node joining or
// leaving moves only the partitions it gains or loses (about 1/N).
//
// Membership is hashicorp/memberlist (SWIM gossip): node name, gossip
// address, seeds, an optional AES key. Each node advertises its data address
// and protocol version in the memberlist node metadata. Membership events
// are debounced (Config.Debounce) into a new Table; a Change reports it to
// the daemon (Config.OnChange). The seeds are joined again periodically so
// that the two sides of a healed network partition merge.
//
// # Handoff
//
// After every table change, each node streams the state of the devices it
// holds but no longer owns (engine.DeviceState records) to their new owner
// on a separate data connection, which adopts them (HandoffLocal.Adopt) and
// acknowledges; the old owner then forgets them (HandoffLocal.Remove). A
// graceful Close leaves the cluster, hands everything off, then stops. A
// crashed node hands nothing off: the survivors see Change.Rebuild and
// rebuild those partitions from Redis (the daemon does, through the
// per-partition device index writeback.RedisIndex); they do the same for a
// node that left, in case its handoff did not get through. With
// Config.RebuildHold set, the Router holds those partitions' messages from
// the moment the new table is installed until Node.RebuildDone(change) (or the
// hold's deadline, or the hold filling up) and then applies them in
// arrival order: a device's first message at its new owner lands after its
// rebuilt state, not before it as a new device (which would report it
// online a second time). A held partition that a later table gives to
// another node is applied here first, and handed off with the rest.
//
// # Guarantees and limits
//
//   - Forwarding is at most once: a message is lost if a peer queue is full
//     (the caller waited Config.EnqueueWait at most), if the connection
//     fails while it is written, or if it reaches a node that does not own
//     it after one re-forward. Every loss is counted
//     (presence_cluster_dropped_messages_total{reason}). Devices report
//     periodically, and the engine keeps last_seen monotonic, so a lost
//     touch only matters if it was the last one before a timeout.
//   - The Router never blocks on the network: ingest's worker waits at most
//     EnqueueWait per call, and not at all for a peer that is not connected.
//   - While tables differ (a membership change is spreading, ~Debounce plus
//     gossip time), a message may be applied by a node that has just lost
//     the device. Handoff passes sweep every device held but not owned, and
//     one more pass runs a few seconds after a pass that moved devices, so
//     such strays reach their owner; until then both may time the device
//     (at most one duplicate transition).
//   - A stale owner is fenced at the store by last-seen: the daemon's Redis
//     writes are guarded (writeback.RedisConfig.Guarded) and Postgres
//     updates are too, so neither moves back; partition epochs are planned
//     (PROTOCOL.md).
//
// # Lifecycle
//
// New validates the Config and builds a Node over the local engine; Start
// listens on the data address, starts memberlist, installs a first table
// and joins the seeds; Router returns the ingest.Handler. Close (graceful:
// leave, handoff, flush, stop) waits for every goroutine it started: one
// debounce loop, one rejoin loop, one handoff loop, one sender per peer, one
// accept loop and one reader per inbound connection. A daemon without
// cluster settings does not build a Node and gives ingest the engine
// directly, exactly as before.
package cluster
