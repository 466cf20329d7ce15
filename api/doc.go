// Package api is the HTTP API of presenced: device presence
// (GET /v1/devices/{id}, POST /v1/devices:batchGet), fleet totals
// (GET /v1/stats), explicit statuses (POST /v1/devices/{id}/status,
// through Config.Writer), the device controls (a device's own timeout,
// decommission: PUT and DELETE /v1/devices/{id}/timeout,
// DELETE /v1/devices/{id} and their batch forms, through
// Config.Controller; EngineController for an engine alone), Prometheus
// metrics (GET /metrics) and health
// probes (GET /healthz, GET /readyz). It reads a Store (*engine.Engine)
// and keeps no state of its own.
//
// Routes that change state are mounted with HandleWrite: beyond loopback
// without Config.Token they answer 403, so nothing open to the network
// takes writes.
//
// Server routes, times and counts every request, answers every error in
// JSON, recovers from panics and, with Config.Token, checks the bearer
// token. Other packages mount their routes on it with Handle (behind the
// token) or HandlePublic: the reports, the event stream, the cluster view
// and the dashboard.
//
// GET /readyz is open, so it shows anyone only the names of the failing
// checks (NotReady, Readiness); why they fail, text that may hold addresses
// or credentials, goes to a request with the token and to the log.
//
//	srv, err := api.New(cfg, eng) // cfg from api.DefaultConfig(); no I/O
//	err = srv.Start(ctx)          // binds cfg.Addr at once, then serves in the background
//	...
//	err = srv.Close(shutdownCtx)  // graceful shutdown
//
// Device, BatchGetResponse and Stats document the JSON. Every endpoint,
// its errors, limits and metrics: docs/API.md.
package api
