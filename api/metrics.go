package api

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/presence-dev/presence/internal/wire"
)

// reason is why a request was refused, a label of
// presence_api_requests_rejected_total.
type reason uint8

const (
	reasonInvalidID        reason = iota // the {id} path segment is not a valid id
	reasonInvalidBody                    // malformed JSON, wrong shape, unknown field
	reasonBodyTooLarge                   // more than Config.MaxBodyBytes
	reasonTooManyIDs                     // more than Config.MaxBatchIDs ids
	reasonUnauthorized                   // missing or wrong bearer token
	reasonNoRoute                        // no route for the path (404)
	reasonMethodNotAllowed               // the path exists, not with this method (405)
	reasonInvalidQuery                   // a query parameter with a wrong value
	reasonWritesRefused                  // a write on an open listener beyond loopback, or for another Host (403)
	reasonMediaType                      // a write without Content-Type: application/json (415)
	numReasons
)

var reasonNames = [numReasons]string{
	reasonInvalidID:        "invalid_id",
	reasonInvalidBody:      "invalid_body",
	reasonBodyTooLarge:     "body_too_large",
	reasonTooManyIDs:       "too_many_ids",
	reasonUnauthorized:     "unauthorized",
	reasonNoRoute:          "no_route",
	reasonMethodNotAllowed: "method_not_allowed",
	reasonInvalidQuery:     "invalid_query",
	reasonWritesRefused:    "writes_refused",
	reasonMediaType:        "unsupported_media_type",
}

func (r reason) String() string { return reasonNames[r] }

// Results of one batchGet id, a label of presence_api_batch_ids_total.
const (
	idFound = iota
	idMissing
	idInvalid
	idUnavailable // the owner did not answer (a cluster)
	numIDResults
)

// apiMetrics are one Server's metrics. Labels are bounded: route patterns,
// status codes and reason names, never device ids.
type apiMetrics struct {
	set      *metrics.Set
	rejected [numReasons]*metrics.Counter
	panics   *metrics.Counter
	batchIDs [numIDResults]*metrics.Counter
	inFlight atomic.Int64
}

func newAPIMetrics(set *metrics.Set) *apiMetrics {
	m := &apiMetrics{set: set}
	for r := range numReasons {
		m.rejected[r] = set.NewCounter(`presence_api_requests_rejected_total{reason="` + r.String() + `"}`)
	}
	m.panics = set.NewCounter("presence_api_panics_total")
	for i, name := range [numIDResults]string{"found", "missing", "invalid", "unavailable"} {
		m.batchIDs[i] = set.NewCounter(`presence_api_batch_ids_total{result="` + name + `"}`)
	}
	set.NewGauge("presence_api_requests_in_flight", func() float64 { return float64(m.inFlight.Load()) })
	return m
}

// routeMetrics count one route's requests by status code and time them.
type routeMetrics struct {
	set   *metrics.Set
	label string // route="..." (escaped)
	dur   *metrics.PrometheusHistogram
	codes [600]atomic.Pointer[metrics.Counter] // created on first use
}

// durationBuckets (seconds) span a cached lookup (~50 µs) to a 10k-id batch
// on a busy machine.
var durationBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}

func newRouteMetrics(set *metrics.Set, route string) *routeMetrics {
	rm := &routeMetrics{set: set, label: wire.Label("route", route)}
	rm.dur = set.GetOrCreatePrometheusHistogramExt(
		"presence_api_request_duration_seconds{"+rm.label+"}", durationBuckets)
	return rm
}

// observe records one finished request.
func (rm *routeMetrics) observe(code int, d time.Duration) {
	rm.dur.Update(d.Seconds())
	rm.counter(code).Inc()
}

func (rm *routeMetrics) counter(code int) *metrics.Counter {
	if code < 0 || code >= len(rm.codes) {
		return rm.set.GetOrCreateCounter(rm.name(code))
	}
	if c := rm.codes[code].Load(); c != nil {
		return c
	}
	c := rm.set.GetOrCreateCounter(rm.name(code)) // the set dedupes racing callers
	rm.codes[code].Store(c)
	return c
}

func (rm *routeMetrics) name(code int) string {
	return "presence_api_requests_total{" + rm.label + `,code="` + strconv.Itoa(code) + `"}`
}
