// Package cluster lets several presence nodes share the devices: each
// device is owned by exactly one live node, the one that keeps its state
// and timer.
//
//	MQTT broker --$share/presence/...--> ingest (every node)
//	                                       |  ingest.Handler
//	                                       v
//	                                    Router ---- owned here -----------> Local (engine)
//	                                       |
//	                                       +-- owned by peer P --> queue(P) --TCP--> P's server --> P's Local
//
// Every node subscribes to the same shared subscription. A node's Router,
// the ingest.Handler, applies a message to its own engine if it owns the
// device, and otherwise queues it for the owner, which receives it over one
// persistent TCP connection per peer.
//
// Ownership is two fixed functions, the same on every node and in every
// version: a device id maps to one of Config.Partitions partitions by a
// stable hash (PartitionOf), a partition to the live member with the
// highest rendezvous weight (NewTable). The same member names give the same
// Table everywhere without coordination, and a join or a leave moves only
// the partitions gained or lost. Membership is hashicorp/memberlist; its
// events are debounced into a new Table, reported as a Change
// (Config.OnChange).
//
// After every table change a node hands the devices it no longer owns to
// their new owner (Local.Range, Local.Adopt); a graceful Close leaves, hands everything
// off, then stops. The partitions of a member that crashed are rebuilt
// from Redis by their new owners (Change.Rebuild; the daemon's
// recovery.Recovery does it), while the Router holds their messages until
// Node.RebuildDone (Config.RebuildHold). Forwarding is at most once and
// never stalls ingest longer than Config.EnqueueWait; a stale owner is
// fenced at the store by last-seen.
//
// New builds a Node over the local engine; Start listens on the data
// address, joins the gossip and installs a first table; Router returns the
// ingest.Handler; Close waits for every goroutine it started. A daemon
// without cluster settings builds no Node.
//
// Running a cluster: docs/CLUSTER.md. Frames, handoff ordering, fencing and
// split brain: PROTOCOL.md.
package cluster
