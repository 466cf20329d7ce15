package cluster

import "github.com/VictoriaMetrics/metrics"

// dropReason says why a message was not delivered; it labels
// presence_cluster_dropped_messages_total.
type dropReason uint8

const (
	// dropQueueFull: the peer's queue stayed full for EnqueueWait (or the
	// peer was not connected and its queue was full).
	dropQueueFull dropReason = iota
	// dropSendError: the connection failed while the batch was written.
	dropSendError
	// dropNotOwner: a received message for a partition this node does not
	// own that had already been re-forwarded once.
	dropNotOwner
	// dropClosed: the router was closing.
	dropClosed
	// dropLocalError: the local engine refused an offline mark received
	// from a peer (unknown or invalid device).
	dropLocalError
	numDropReasons
)

func (r dropReason) String() string {
	switch r {
	case dropQueueFull:
		return "queue_full"
	case dropSendError:
		return "send_error"
	case dropNotOwner:
		return "not_owner"
	case dropClosed:
		return "closed"
	case dropLocalError:
		return "local_error"
	}
	return "unknown"
}

// clusterMetrics are one Node's metrics. Labels are bounded (drop reasons);
// never device ids, nor peer names (members churn, metrics would pile up).
type clusterMetrics struct {
	set *metrics.Set

	// forwarding, sender side
	fwdMessages *metrics.Counter // written to a peer connection
	fwdBytes    *metrics.Counter
	fwdBatches  *metrics.Counter
	dropped     [numDropReasons]*metrics.Counter
	connects    *metrics.Counter // successful dials
	dialErrors  *metrics.Counter
	connLost    *metrics.Counter
	localMsgs   *metrics.Counter // applied locally by the router
	rejected    *metrics.Counter // invalid before forwarding
	skipped     *metrics.Counter // another node's, with Config.ReadsAll

	// receiver side
	recvMessages *metrics.Counter
	recvBytes    *metrics.Counter
	recvBatches  *metrics.Counter
	reforwarded  *metrics.Counter
	bounced      *metrics.Counter // applied here rather than sent back to the sender
	badFrames    *metrics.Counter
	refused      map[rejection]*metrics.Counter // connections closed in the handshake, by reason
	handshakeErr *metrics.Counter               // client side: a peer failed our handshake

	// queries (query.go)
	queriesSent   *metrics.Counter
	queryErrors   *metrics.Counter // errors and answers not in time
	queriesServed *metrics.Counter

	// membership and handoff
	tableChanges   *metrics.Counter
	moved          *metrics.Counter // partitions that changed owner
	rejoinErrors   *metrics.Counter
	handoffSent    *metrics.Counter // records
	handoffRecv    *metrics.Counter
	handoffErrors  *metrics.Counter
	handoffRemoved *metrics.Counter

	// rebuild hold
	holdPartitions *metrics.Counter // partitions held for a rebuild
	holdExpired    *metrics.Counter // of them, released by RebuildHold, not RebuildDone
	holdOverflow   *metrics.Counter // messages applied at once: the hold was full

	// device controls received before their device (pending.go)
	controlsPending *metrics.Counter
}

func newClusterMetrics(set *metrics.Set) *clusterMetrics {
	m := &clusterMetrics{set: set}
	m.fwdMessages = set.NewCounter("presence_cluster_forwarded_messages_total")
	m.fwdBytes = set.NewCounter("presence_cluster_forwarded_bytes_total")
	m.fwdBatches = set.NewCounter("presence_cluster_forwarded_batches_total")
	for r := range numDropReasons {
		m.dropped[r] = set.NewCounter(`presence_cluster_dropped_messages_total{reason="` + r.String() + `"}`)
	}
	m.connects = set.NewCounter("presence_cluster_peer_connects_total")
	m.dialErrors = set.NewCounter("presence_cluster_peer_dial_errors_total")
	m.connLost = set.NewCounter("presence_cluster_peer_connections_lost_total")
	m.localMsgs = set.NewCounter("presence_cluster_local_messages_total")
	m.rejected = set.NewCounter("presence_cluster_rejected_messages_total")
	m.skipped = set.NewCounter("presence_cluster_skipped_messages_total")
	m.recvMessages = set.NewCounter("presence_cluster_received_messages_total")
	m.recvBytes = set.NewCounter("presence_cluster_received_bytes_total")
	m.recvBatches = set.NewCounter("presence_cluster_received_batches_total")
	m.reforwarded = set.NewCounter("presence_cluster_reforwarded_messages_total")
	m.bounced = set.NewCounter("presence_cluster_bounced_messages_total")
	m.badFrames = set.NewCounter("presence_cluster_bad_frames_total")
	m.refused = make(map[rejection]*metrics.Counter, len(rejections))
	for _, r := range rejections {
		m.refused[r] = set.NewCounter(`presence_cluster_refused_connections_total{reason="` + string(r) + `"}`)
	}
	m.handshakeErr = set.NewCounter("presence_cluster_peer_handshake_errors_total")
	m.queriesSent = set.NewCounter("presence_cluster_queries_sent_total")
	m.queryErrors = set.NewCounter("presence_cluster_query_errors_total")
	m.queriesServed = set.NewCounter("presence_cluster_queries_served_total")
	m.tableChanges = set.NewCounter("presence_cluster_table_changes_total")
	m.moved = set.NewCounter("presence_cluster_partitions_moved_total")
	m.rejoinErrors = set.NewCounter("presence_cluster_rejoin_errors_total")
	m.handoffSent = set.NewCounter("presence_cluster_handoff_sent_records_total")
	m.handoffRecv = set.NewCounter("presence_cluster_handoff_received_records_total")
	m.handoffErrors = set.NewCounter("presence_cluster_handoff_errors_total")
	m.holdPartitions = set.NewCounter("presence_cluster_hold_partitions_total")
	m.holdExpired = set.NewCounter("presence_cluster_hold_expired_partitions_total")
	m.holdOverflow = set.NewCounter("presence_cluster_hold_overflow_total")
	m.controlsPending = set.NewCounter("presence_cluster_controls_pending_total")
	m.handoffRemoved = set.NewCounter("presence_cluster_handoff_removed_records_total")
	return m
}
