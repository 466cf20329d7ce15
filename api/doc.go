// Package api is the HTTP API of the presenced daemon: device presence,
// fleet totals, Prometheus metrics and health probes. It reads a Store
// (*engine.Engine) and does nothing else: no state of its own, no goroutine
// outside Serve.
//
// # Endpoints
//
// Every answer is JSON (except /metrics) and is never cached
// (Cache-Control: no-store). Every error is {"error": "..."} with its status
// code. Times are UTC with microseconds and an explicit offset, the Redis
// contract's format, "2025-12-14T10:30:45.123456+00:00" (TimeLayout); Python
// reads them with datetime.fromisoformat.
//
// GET /v1/devices/{id} answers one device:
//
//	200 {"id":"123","status":"online","last_seen":"2025-12-14T10:30:45.123456+00:00",
//	     "since":"2025-12-14T10:02:11.000000+00:00","timeout_seconds":60}
//	400 the id is not a valid device id (1 to 128 bytes of printable ASCII
//	    without spaces, '/', '+' or '#'; percent-encode '?', '%' and '#')
//	404 this node has never seen the device
//
// The id is one path segment, percent-encoded as needed. The two valid ids
// "." and ".." cannot be written as a path segment (the router cleans such
// paths and redirects): ask for them with batchGet.
//
// status is "online" or "offline"; last_seen is the newest message; since is
// when the current status began (for an offline device: its deadline,
// last_seen + timeout, or the time of its Last Will); timeout_seconds is how
// long it may stay silent.
//
// POST /v1/devices:batchGet answers up to 10,000 devices at once
// (Config.MaxBatchIDs):
//
//	request:  {"ids": ["123", "456", "no such", "bad/id"]}
//	200       {"devices": [{...as above...}, ...], "missing": ["no such"], "invalid": ["bad/id"]}
//
// Every distinct id lands in exactly one list, in request order; repeated
// ids are answered once; the three lists are always present. An invalid id
// does not fail the batch: it is listed under "invalid" so that one bad id
// among thousands costs the client nothing else. The body is refused whole
// with 400 when it is not exactly one JSON object with the single field
// "ids", spelled exactly so and given once, an array of strings (unknown
// fields are errors), and with 413 when it holds more than MaxBatchIDs ids
// or more than Config.MaxBodyBytes bytes (4 MiB): split the batch. The
// Content-Type is not checked. A 10,000-id batch takes about 6 ms on one
// core (BenchmarkBatchGet10k).
//
// GET /v1/stats answers fleet totals, plus the engine's counters when the
// Store has them (StatsStore):
//
//	200 {"total":3,"online":2,"offline":1,"engine":{"touches":..., "rejected":...,
//	     "stale":..., "online_transitions":..., "offline_transitions":...,
//	     "delivered":..., "queued":..., "coalesced":..., "collapsed":...,
//	     "resyncing":..., "wheel_entries":...}}
//
// Totals are taken shard by shard, so under load they approximate one
// instant. See engine.Stats for the meaning of each counter.
//
// GET /metrics is the Prometheus text exposition: the sets of
// Config.MetricSets (one per component: engine, ingest, writeback...), the
// API's own presence_api_* metrics, and the Go runtime and process metrics
// (go_*, process_*).
//
// GET /healthz answers 200 {"status":"ok"} as long as the process serves
// (liveness). GET /readyz answers 200 {"status":"ready"} once Config.Ready
// returns nil (the daemon: hydrated from Redis and subscribed to the
// broker), else 503 {"error":"not ready: <reason>"} (readiness: take the
// node out of a load balancer, do not restart it).
//
// An unknown path answers 404 and a wrong method 405 with an Allow header,
// both in JSON. HEAD is accepted wherever GET is.
//
// # Authentication
//
// When Config.Token is set (PRESENCE_API_TOKEN in the daemon), every /v1/
// route, and every route the daemon mounts with Handle, requires
// "Authorization: Bearer <token>"; without it, or with a wrong token, the
// answer is 401 with a WWW-Authenticate header. The token is compared in
// constant time (of SHA-256 hashes, so its length does not leak either).
// /healthz, /readyz and /metrics stay open so probes and scrapers need no
// secret: they reveal no device, only figures. Bind to a private address,
// or firewall them, if even those must stay private. There is no TLS here:
// terminate it in a proxy when the API leaves the machine.
//
// # Limits and timeouts
//
// Request headers must arrive within Config.ReadHeaderTimeout (5 s), the
// whole request within ReadTimeout (30 s), the answer within WriteTimeout
// (60 s); headers are limited to MaxHeaderBytes (64 KiB). Serve shuts down
// gracefully when its context is done: no new connection, request contexts
// cancelled (streams end), ShutdownTimeout (10 s) for the rest.
//
// # Metrics
//
//	presence_api_requests_total{route,code}            requests by route pattern and status
//	presence_api_request_duration_seconds{route}       histogram (le buckets), 100 µs to 2.5 s
//	presence_api_requests_rejected_total{reason}       refused requests: invalid_id, invalid_body,
//	                                                   body_too_large, too_many_ids, unauthorized,
//	                                                   no_route, method_not_allowed
//	presence_api_batch_ids_total{result}               batchGet ids: found, missing, invalid
//	presence_api_panics_total                          handler panics recovered (answered 500)
//	presence_api_requests_in_flight                    requests being served
//
// route is the mounted pattern ("GET /v1/devices/{id}") or "unmatched"; no
// label ever holds a device id. Refused requests are also logged, at most
// one line per reason per Config.LogInterval (10 s), the next line saying
// how many were suppressed. A 404 for an unknown device is an answer, not a
// refusal: it shows only in presence_api_requests_total.
//
// # Extending
//
// Later endpoints (server-sent events, history, cluster, a dashboard) are
// mounted by the daemon with Server.Handle (behind the token) or
// Server.HandlePublic, and get the same metrics and panic recovery. A
// streaming handler lifts the write timeout for its response with
// http.NewResponseController(w).SetWriteDeadline(time.Time{}), flushes with
// the same controller, and ends when r.Context() is done.
//
// # Use
//
//	srv, err := api.New(cfg, eng) // cfg from api.DefaultConfig()
//	ln, err := srv.Listen()       // early: a taken port fails the start-up at once
//	...                           // hydrate, subscribe
//	err = srv.Serve(ctx, ln)      // until ctx is done, then graceful shutdown
package api
