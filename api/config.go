package api

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Config configures a Server. Start from DefaultConfig; Validate (also called
// by New) reports every problem at once.
type Config struct {
	// Addr is the TCP address Start binds, host:port.
	// The default 127.0.0.1:8080 serves this machine only; use ":8080" or
	// "0.0.0.0:8080" to serve the network (then set Token, or put the API
	// behind a proxy that authenticates).
	Addr string

	// Token, when not empty, is the bearer token every /v1/ route (and every
	// route mounted with Handle) requires: "Authorization: Bearer <Token>",
	// compared in constant time. /healthz, /readyz and /metrics stay open so
	// probes and scrapers need no secret (/readyz tells why it is not ready
	// only to a request with the token); mount them elsewhere or firewall
	// them if the metrics are sensitive. Use 32 or more random bytes (e.g.
	// "openssl rand -hex 32"). Printable ASCII without spaces.
	Token string

	// MaxBatchIDs bounds the ids of one batchGet request (1..1,000,000).
	// A larger batch is refused whole with 413, before any lookup; clients
	// split it. Each id costs about 100 bytes of transient memory.
	MaxBatchIDs int

	// MaxBodyBytes bounds a request body (bytes, at least 1 KiB); a larger
	// one is refused with 413 without reading it all. The default 4 MiB fits
	// MaxBatchIDs = 10,000 ids of the longest kind (128 bytes, every byte
	// escaped). Raise it with MaxBatchIDs.
	MaxBodyBytes int64

	// Cluster, if set, answers device lookups and /v1/stats for the whole
	// cluster (a clustered daemon); nil answers from Store alone. A request
	// with scope=local is answered from Store all the same.
	Cluster Cluster
	// ClusterTimeout bounds how long a cluster-wide answer waits for the
	// other nodes; what a node has not answered by then is reported
	// unavailable, the answer partial. Default 1 s.
	ClusterTimeout time.Duration

	// Writer, if set, applies the explicit statuses of
	// POST /v1/devices/{id}/status: the engine, or in a cluster its
	// Router (which forwards to the owner). Nil: the route is not served.
	Writer Writer

	// Controller, if set, applies the device controls: PUT and DELETE
	// /v1/devices/{id}/timeout, DELETE /v1/devices/{id} and their batch
	// forms (docs/API.md). Nil: those routes are not served.
	Controller Controller

	// Ready reports whether the daemon is ready to serve traffic (hydrated
	// from Redis, subscribed to the broker, ...): /readyz answers 200 when it
	// returns nil and 503 otherwise. The 503 names the failing checks to
	// anyone: wrap each failure with NotReady("ingest", err) (errors.Join
	// several); an unnamed one shows as "unspecified". The error's text,
	// which may hold addresses or credentials, goes only to a request with
	// Token (none without Token) and to the log. It is called on every
	// /readyz request, so keep it cheap. Nil means always ready.
	Ready func() error

	// MetricSets are written by /metrics, in order, before the API's own set
	// (Metrics) and the Go runtime and process metrics. Each component
	// registers its own set (engine, ingest, writeback, ...). A set listed
	// twice, or equal to Metrics, is written once.
	MetricSets []*metrics.Set
	// Metrics receives the API's own metrics (names presence_api_*); it
	// must not be shared with another Server. Nil creates a new set; see
	// Server.Metrics.
	Metrics *metrics.Set
	// ProcessMetrics adds the Go runtime and process metrics (go_*,
	// process_*) to /metrics. Default true; turn it off when another
	// handler in the process already exports them.
	ProcessMetrics bool

	// ReadHeaderTimeout bounds reading a request's headers (slow clients
	// hold a connection and a goroutine until then). Must be positive.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, body included; 0 means no
	// limit. 30 s reads a 4 MiB body at about 140 KB/s.
	ReadTimeout time.Duration
	// WriteTimeout bounds writing a response, from the end of the request
	// headers; 0 means no limit. A streaming handler mounted with Handle
	// (server-sent events) must lift it for its own response:
	// http.NewResponseController(w).SetWriteDeadline(time.Time{}).
	WriteTimeout time.Duration
	// IdleTimeout closes keep-alive connections idle that long; 0 means
	// ReadTimeout.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds request headers (at least 1 KiB).
	MaxHeaderBytes int
	// ShutdownTimeout bounds the graceful shutdown of Close: in-flight
	// requests get that long to finish, then the remaining connections are
	// closed.
	ShutdownTimeout time.Duration

	// LogInterval limits logging of refused requests, internal errors and
	// readiness failures: at most one line per reason per interval; the
	// next line says how many were suppressed. 0 logs every one.
	LogInterval time.Duration
	// Logger receives the logs; nil is slog.Default().
	Logger *slog.Logger
}

// Defaults of DefaultConfig.
const (
	DefaultAddr        = "127.0.0.1:8080"
	DefaultMaxBatchIDs = 10000
)

// DefaultConfig returns the defaults described on each Config field.
func DefaultConfig() Config {
	return Config{
		Addr:              DefaultAddr,
		MaxBatchIDs:       DefaultMaxBatchIDs,
		MaxBodyBytes:      4 << 20,
		ProcessMetrics:    true,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ShutdownTimeout:   10 * time.Second,
		LogInterval:       10 * time.Second,
		ClusterTimeout:    time.Second,
	}
}

// Validate reports every invalid field, joined.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("api: %s: %s", field, fmt.Sprintf(format, args...)))
	}
	if c.Cluster != nil && c.ClusterTimeout <= 0 {
		bad("ClusterTimeout", "%v, want > 0 with Cluster", c.ClusterTimeout)
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		bad("Addr (-http-addr)", "%q is not host:port (e.g. 127.0.0.1:8080 or :8080): %v", c.Addr, err)
	}
	for i := 0; i < len(c.Token); i++ {
		if b := c.Token[i]; b <= ' ' || b > '~' {
			bad("Token (-api-token)", "byte %d is not printable ASCII or is a space; a bearer token cannot carry it", i)
			break
		}
	}
	if c.MaxBatchIDs < 1 || c.MaxBatchIDs > 1_000_000 {
		bad("MaxBatchIDs", "%d, want 1..1000000", c.MaxBatchIDs)
	}
	if c.MaxBodyBytes < 1<<10 {
		bad("MaxBodyBytes", "%d, want >= 1024", c.MaxBodyBytes)
	}
	for i, set := range c.MetricSets {
		if set == nil {
			bad("MetricSets", "entry %d is nil", i)
		}
	}
	if c.ReadHeaderTimeout <= 0 {
		bad("ReadHeaderTimeout", "%v, want > 0", c.ReadHeaderTimeout)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"ReadTimeout", c.ReadTimeout},
		{"WriteTimeout", c.WriteTimeout},
		{"IdleTimeout", c.IdleTimeout},
		{"LogInterval", c.LogInterval},
	} {
		if d.v < 0 {
			bad(d.name, "%v, want >= 0", d.v)
		}
	}
	if c.MaxHeaderBytes < 1<<10 {
		bad("MaxHeaderBytes", "%d, want >= 1024", c.MaxHeaderBytes)
	}
	if c.ShutdownTimeout <= 0 {
		bad("ShutdownTimeout", "%v, want > 0", c.ShutdownTimeout)
	}
	return errors.Join(errs...)
}
