package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/netaddr"
	"github.com/presence-dev/presence/internal/ratelog"
	"github.com/presence-dev/presence/internal/wire"
)

// Store is what the API reads: *engine.Engine satisfies it.
type Store interface {
	// Device returns one device's state, engine.ErrNotFound if unknown.
	Device(id string) (engine.DeviceState, error)
	// Devices appends the state of each id to dst, in order; an unknown id
	// gets Status engine.StatusUnknown.
	Devices(ids []string, dst []engine.DeviceState) []engine.DeviceState
	// Counts returns fleet totals.
	Counts() engine.Counts
}

// StatsStore is a Store that also has engine counters; GET /v1/stats then
// includes them under "engine". *engine.Engine satisfies it.
type StatsStore interface {
	Store
	Stats() engine.Stats
}

// Server is the HTTP API. New builds it; Start binds Config.Addr and
// serves; Close shuts down gracefully. Handler serves it in any other
// http.Server. It starts no goroutine outside Start.
type Server struct {
	cfg   Config
	store Store
	stats StatsStore // nil when store has no Stats
	log   *slog.Logger

	mux       *http.ServeMux
	handler   http.Handler
	m         *apiMetrics
	unmatched *routeMetrics
	sets      []*metrics.Set // written by /metrics

	token [sha256.Size]byte // hash of Config.Token, compared in constant time
	auth  bool

	rejectLog *ratelog.Limiter[reason]
	errorLog  *ratelog.Limiter[struct{}] // internal errors and panics
	readyLog  *ratelog.Limiter[string]   // readiness failures, by reasons

	batchPool sync.Pool // *batchBuf

	ctl *controlMetrics // with Config.Controller

	run server // Start and Close
}

// New validates cfg and builds a Server over store with the API's routes.
func New(cfg Config, store Store) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if store == nil {
		return nil, errors.New("api: nil Store")
	}
	s := &Server{cfg: cfg, store: store, log: cfg.Logger, mux: http.NewServeMux()}
	s.stats, _ = store.(StatsStore)
	if s.log == nil {
		s.log = slog.Default()
	}
	if cfg.Token != "" {
		s.auth, s.token = true, sha256.Sum256([]byte(cfg.Token))
	}
	set := cfg.Metrics
	if set == nil {
		set = metrics.NewSet()
	}
	s.m = newAPIMetrics(set)
	s.rejectLog = ratelog.New[reason](cfg.LogInterval, nil)
	s.errorLog = ratelog.New[struct{}](cfg.LogInterval, nil)
	s.readyLog = ratelog.New[string](cfg.LogInterval, nil)
	s.unmatched = newRouteMetrics(set, "unmatched")
	for _, x := range append(cfg.MetricSets[:len(cfg.MetricSets):len(cfg.MetricSets)], set) {
		if !containsSet(s.sets, x) {
			s.sets = append(s.sets, x)
		}
	}
	s.handler = http.HandlerFunc(s.serveHTTP)

	s.Handle("GET /v1/devices/{id}", http.HandlerFunc(s.device))
	s.Handle("POST /v1/devices:batchGet", http.HandlerFunc(s.batchGet))
	s.Handle("GET /v1/stats", http.HandlerFunc(s.statsHandler))
	if cfg.Writer != nil {
		s.HandleWrite("POST /v1/devices/{id}/status", http.HandlerFunc(s.setStatus))
	}
	if cfg.Controller != nil {
		s.mountControls()
	}
	s.HandlePublic("GET /metrics", http.HandlerFunc(s.metricsHandler))
	s.HandlePublic("GET /healthz", http.HandlerFunc(s.healthz))
	s.HandlePublic("GET /readyz", http.HandlerFunc(s.readyz))
	return s, nil
}

func containsSet(sets []*metrics.Set, x *metrics.Set) bool {
	for _, s := range sets {
		if s == x {
			return true
		}
	}
	return false
}

// Handler returns the API as an http.Handler: routing, metrics, panic
// recovery and, on protected routes, the bearer token check.
func (s *Server) Handler() http.Handler { return s.handler }

// Metrics returns the set holding the API's metrics (Config.Metrics or the
// one New created). /metrics already writes it.
func (s *Server) Metrics() *metrics.Set { return s.m.set }

// Handle mounts h at pattern (http.ServeMux syntax, e.g. "GET /v1/events")
// behind the API's middleware: request metrics labelled with the pattern,
// panic recovery and, when Config.Token is set, the bearer token. Like
// http.ServeMux.Handle it panics if pattern is invalid or conflicts with a
// route already mounted. Safe to call while serving.
//
// A catch-all such as "/" or "GET /" also receives the API's unknown paths
// and wrong methods; mount a dashboard as "GET /{$}" plus its own prefix
// (e.g. "GET /ui/") to keep JSON 404 and 405 answers for the rest.
func (s *Server) Handle(pattern string, h http.Handler) { s.handle(pattern, h, false) }

// HandleWrite is Handle for a route that changes state. When the API
// listens beyond loopback without Config.Token it answers 403 instead of
// serving (WritesAllowed): nothing open to the network takes writes. A
// POST or PUT must say Content-Type: application/json (415 otherwise),
// which a web page cannot send to another site without the CORS preflight
// this API never grants (a DELETE, bodiless, always needs that preflight);
// without a token a write must also name a loopback Host (and Origin, if
// any), which a DNS-rebinding page cannot.
func (s *Server) HandleWrite(pattern string, h http.Handler) {
	allowed := s.WritesAllowed()
	s.Handle(pattern, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !allowed {
			s.reject(w, r, http.StatusForbidden, reasonWritesRefused,
				"writes are refused: the API listens beyond loopback without a token; set -api-token (PRESENCE_API_TOKEN)")
			return
		}
		if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); r.Method != http.MethodDelete && (err != nil || mt != "application/json") {
			s.reject(w, r, http.StatusUnsupportedMediaType, reasonMediaType, "a write needs Content-Type: application/json")
			return
		}
		if !s.auth && (!loopbackHost(r.Host) || r.Header.Get("Origin") != "" && !loopbackOrigin(r.Header.Get("Origin"))) {
			s.reject(w, r, http.StatusForbidden, reasonWritesRefused,
				"writes without a token are taken only for a loopback Host and Origin; set -api-token (PRESENCE_API_TOKEN)")
			return
		}
		h.ServeHTTP(w, r)
	}))
}

// WritesAllowed reports whether routes mounted with HandleWrite serve: with
// Config.Token, or on a loopback address (Config.Addr).
func (s *Server) WritesAllowed() bool { return s.auth || netaddr.Loopback(s.cfg.Addr) }

// loopbackHost reports whether a Host header names this machine's
// loopback (localhost, 127.0.0.0/8, ::1), with or without a port.
func loopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	return netaddr.Loopback(net.JoinHostPort(host, "0"))
}

// loopbackOrigin is loopbackHost for an Origin header.
func loopbackOrigin(origin string) bool {
	u, err := url.Parse(origin)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && loopbackHost(u.Host)
}

// HandlePublic is Handle without the bearer token: for probes, scrapes and
// static assets.
func (s *Server) HandlePublic(pattern string, h http.Handler) { s.handle(pattern, h, true) }

func (s *Server) handle(pattern string, h http.Handler, public bool) {
	// Metrics first: the route may serve as soon as it is mounted. If the
	// mux then panics (bad pattern), the unused histogram stays registered.
	rt := &route{s: s, h: h, m: newRouteMetrics(s.m.set, pattern), public: public || !s.auth}
	s.mux.Handle(pattern, rt)
}

// route is one mounted handler with its middleware.
type route struct {
	s      *Server
	h      http.Handler
	m      *routeMetrics
	public bool
}

func (rt *route) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if rec, ok := w.(*recorder); ok {
		rec.route = rt
	}
	if !rt.public && !rt.s.authorized(w, r) {
		return
	}
	rt.h.ServeHTTP(w, r)
}

// RequireToken wraps h so that, when Config.Token is set, a request
// without it is answered 401 as every /v1/ route answers it (and counted
// in the API's metrics); without a token h is served as is. For handlers
// served on another listener, such as the daemon's pprof endpoint.
func (s *Server) RequireToken(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.auth && !s.authorized(w, r) {
			return
		}
		h.ServeHTTP(w, r)
	})
}

// authorized checks the bearer token, answering 401 when it fails.
func (s *Server) authorized(w http.ResponseWriter, r *http.Request) bool {
	switch s.credential(r) {
	case credentialValid:
		return true
	case credentialNone:
		w.Header().Set("WWW-Authenticate", `Bearer realm="presence"`)
		s.reject(w, r, http.StatusUnauthorized, reasonUnauthorized,
			"missing bearer token: send one header Authorization: Bearer <token>")
	default:
		w.Header().Set("WWW-Authenticate", `Bearer realm="presence", error="invalid_token"`)
		s.reject(w, r, http.StatusUnauthorized, reasonUnauthorized, "invalid bearer token")
	}
	return false
}

// credential is what a request presents in its Authorization header.
type credential uint8

const (
	credentialNone    credential = iota // no header, several, or another scheme than Bearer
	credentialInvalid                   // the Bearer scheme, not with Config.Token
	credentialValid                     // Config.Token (never without one)
)

// credential checks the request's bearer token. The token is compared as
// a SHA-256 hash in constant time, so neither its content nor its length
// leaks through timing.
func (s *Server) credential(r *http.Request) credential {
	h := r.Header.Values("Authorization")
	if len(h) != 1 {
		return credentialNone // Authorization is not a list (RFC 9110 §5.3)
	}
	tok, ok := bearerToken(h[0])
	switch {
	case !ok:
		return credentialNone
	case !s.auth:
		return credentialInvalid
	}
	got := sha256.Sum256([]byte(tok))
	if subtle.ConstantTimeCompare(got[:], s.token[:]) != 1 {
		return credentialInvalid
	}
	return credentialValid
}

// bearerToken parses an Authorization header value: the scheme Bearer in
// any case (RFC 9110 §11.1), one or more spaces, the token (RFC 6750
// §2.1). bearer reports whether the value uses that scheme at all; token is
// then what follows the spaces, "" if nothing does, unchecked: it is
// compared whole with Config.Token, which holds no whitespace. Spaces and
// tabs around the value are not part of it (RFC 9110 §5.5; net/http trims
// them off the wire already).
func bearerToken(h string) (token string, bearer bool) {
	const scheme = "Bearer"
	h = strings.Trim(h, " \t")
	if len(h) < len(scheme) || !strings.EqualFold(h[:len(scheme)], scheme) {
		return "", false
	}
	rest := h[len(scheme):]
	if rest != "" && rest[0] != ' ' {
		return "", false // another scheme, "Bearerx"
	}
	return strings.TrimLeft(rest, " "), true
}

// serveHTTP is the outer middleware: it routes, times and counts every
// request, turns the mux's plain-text 404 and 405 into JSON, and recovers
// from panics.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &recorder{ResponseWriter: w}
	s.m.inFlight.Add(1)
	defer func() {
		s.m.inFlight.Add(-1)
		p := recover()
		if p != nil && p != http.ErrAbortHandler {
			s.recovered(rec, r, p)
		}
		s.finish(rec, r, time.Since(start))
		if p == http.ErrAbortHandler || (p != nil && !rec.recovered) {
			// The handler asked for it, or the response was already under
			// way: abort the connection so the client sees a failure, not a
			// truncated success. net/http does not log ErrAbortHandler.
			panic(http.ErrAbortHandler)
		}
	}()
	s.mux.ServeHTTP(rec, r)
}

// recovered handles a panic of a handler: counted, logged, 500 if nothing
// was written yet.
func (s *Server) recovered(rec *recorder, r *http.Request, p any) {
	s.m.panics.Inc()
	if ok, n := s.errorLog.Allow(struct{}{}); ok {
		s.log.Error("api: handler panic", "method", r.Method, "path", wire.Truncate(r.URL.Path, 128),
			"panic", fmt.Sprint(p), "stack", string(debug.Stack()), "suppressed", n)
	}
	if !rec.wroteHeader {
		rec.recovered = true
		wire.WriteError(rec, http.StatusInternalServerError, "internal error")
	}
}

// finish records a request once it is done.
func (s *Server) finish(rec *recorder, r *http.Request, d time.Duration) {
	code := rec.code
	if !rec.wroteHeader {
		code = http.StatusOK // what net/http sends for a handler that wrote nothing
	}
	if rec.route != nil {
		rec.route.m.observe(code, d)
		return
	}
	s.unmatched.observe(code, d)
	switch code {
	case http.StatusNotFound:
		s.count(r, code, reasonNoRoute, rec.msg)
	case http.StatusMethodNotAllowed:
		s.count(r, code, reasonMethodNotAllowed, rec.msg)
	}
}

// reject answers a refused request with {"error": msg}, counts it and logs
// it at a limited rate.
func (s *Server) reject(w http.ResponseWriter, r *http.Request, code int, why reason, msg string) {
	wire.WriteError(w, code, msg)
	s.count(r, code, why, msg)
}

func (s *Server) count(r *http.Request, code int, why reason, msg string) {
	s.m.rejected[why].Inc()
	if ok, n := s.rejectLog.Allow(why); ok {
		s.log.Info("api: request rejected", "reason", why.String(), "status", code,
			"method", r.Method, "path", wire.Truncate(r.URL.Path, 128), "remote", r.RemoteAddr,
			"error", msg, "suppressed", n)
	}
}

// fail answers 500 for an unexpected store error, logged at a limited rate.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	if ok, n := s.errorLog.Allow(struct{}{}); ok {
		s.log.Error("api: internal error", "method", r.Method, "path", wire.Truncate(r.URL.Path, 128),
			"error", err.Error(), "suppressed", n)
	}
	wire.WriteError(w, http.StatusInternalServerError, "internal error")
}

// recorder remembers the status of a response and the route that served it.
// A response of the mux itself (no route: 404, 405) is rewritten to the
// API's JSON error shape.
type recorder struct {
	http.ResponseWriter
	route       *route // set by the route that serves the request
	code        int
	wroteHeader bool
	recovered   bool   // the 500 of a recovered panic
	rewrite     bool   // the mux's own error body is being replaced
	msg         string // the replacement's message
}

func (rec *recorder) WriteHeader(code int) {
	if rec.wroteHeader || code < 200 {
		// 1xx are interim; a second final status is logged by net/http.
		rec.ResponseWriter.WriteHeader(code)
		return
	}
	rec.wroteHeader, rec.code = true, code
	if rec.route == nil && code >= 400 {
		rec.rewriteError(code)
		return
	}
	rec.ResponseWriter.WriteHeader(code)
}

// rewriteError answers the mux's own error (http.Error with plain text) in
// JSON, keeping its other headers (Allow).
func (rec *recorder) rewriteError(code int) {
	rec.rewrite = true
	switch code {
	case http.StatusNotFound:
		rec.msg = "no such endpoint; see the endpoint list in the api package documentation"
	case http.StatusMethodNotAllowed:
		rec.msg = "method not allowed; allowed: " + rec.Header().Get("Allow")
	default:
		rec.msg = strings.ToLower(http.StatusText(code))
	}
	wire.WriteJSON(rec.ResponseWriter, code, wire.AppendError(nil, rec.msg))
}

func (rec *recorder) Write(p []byte) (int, error) {
	if !rec.wroteHeader {
		rec.WriteHeader(http.StatusOK)
	}
	if rec.rewrite {
		return len(p), nil // the mux's text body, already replaced
	}
	return rec.ResponseWriter.Write(p)
}

// Flush lets streaming handlers (server-sent events) flush through the
// middleware.
func (rec *recorder) Flush() {
	if !rec.wroteHeader {
		rec.WriteHeader(http.StatusOK)
	}
	http.NewResponseController(rec.ResponseWriter).Flush() //nolint:errcheck // not every writer flushes
}

// Unwrap gives http.ResponseController the underlying writer (deadlines,
// hijacking).
func (rec *recorder) Unwrap() http.ResponseWriter { return rec.ResponseWriter }
