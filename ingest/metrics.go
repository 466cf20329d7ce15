package ingest

import (
	"strconv"

	"github.com/VictoriaMetrics/metrics"
)

// ingestMetrics are one Ingester's metrics. Labels are bounded: reason
// names and connection numbers, never device ids.
type ingestMetrics struct {
	set      *metrics.Set
	received []*metrics.Counter // per connection
	// receivedHTTP: HTTP touches (conn="http"); httpRejected: requests
	// refused whole, by requestReason.
	receivedHTTP *metrics.Counter
	httpRejected [numRequestReasons]*metrics.Counter
	dropped      [numReasons]*metrics.Counter
	batches      *metrics.Counter
	touches      *metrics.Counter
	offline      *metrics.Counter
	// offlineUnknown: MarkOffline said engine.ErrNotFound.
	offlineUnknown *metrics.Counter
	rejected       *metrics.Counter
	hErrors        *metrics.Counter
	connects       *metrics.Counter
	lost           *metrics.Counter
	subErrs        *metrics.Counter
	batchLen       *metrics.Histogram
	// Subscription probes (see prober): published, and received by
	// origin: this Ingester's ("ok") or another's ("foreign").
	probesSent, probesOK, probesForeign *metrics.Counter
}

func newIngestMetrics(set *metrics.Set, in *Ingester) *ingestMetrics {
	m := &ingestMetrics{set: set}
	for i := range in.cfg.Connections {
		m.received = append(m.received,
			set.NewCounter(`presence_ingest_messages_received_total{conn="`+strconv.Itoa(i)+`"}`))
	}
	m.receivedHTTP = set.NewCounter(`presence_ingest_messages_received_total{conn="http"}`)
	for r, name := range requestReasonNames {
		m.httpRejected[r] = set.NewCounter(`presence_ingest_http_requests_rejected_total{reason="` + name + `"}`)
	}
	for r := reasonNone + 1; r < numReasons; r++ {
		m.dropped[r] = set.NewCounter(`presence_ingest_messages_dropped_total{reason="` + r.String() + `"}`)
	}
	m.batches = set.NewCounter("presence_ingest_batches_total")
	m.touches = set.NewCounter("presence_ingest_touches_total")
	m.offline = set.NewCounter("presence_ingest_offline_total")
	m.offlineUnknown = set.NewCounter("presence_ingest_offline_unknown_total")
	m.rejected = set.NewCounter("presence_ingest_touches_rejected_total")
	m.hErrors = set.NewCounter("presence_ingest_handler_errors_total")
	m.connects = set.NewCounter("presence_ingest_connects_total")
	m.lost = set.NewCounter("presence_ingest_connections_lost_total")
	m.subErrs = set.NewCounter("presence_ingest_subscribe_errors_total")
	m.batchLen = set.NewHistogram("presence_ingest_batch_size")
	m.probesSent = set.NewCounter("presence_ingest_probes_sent_total")
	m.probesOK = set.NewCounter(`presence_ingest_probes_received_total{result="ok"}`)
	m.probesForeign = set.NewCounter(`presence_ingest_probes_received_total{result="foreign"}`)
	set.NewGauge("presence_ingest_queue_depth", func() float64 { return float64(in.queueDepth()) })
	set.NewGauge("presence_ingest_connections_subscribed", func() float64 {
		_, subscribed := in.connState()
		return float64(subscribed)
	})
	set.NewGauge("presence_ingest_ready", func() float64 {
		if in.Ready() {
			return 1
		}
		return 0
	})
	return m
}
