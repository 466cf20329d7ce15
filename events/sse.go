package events

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/ratelog"
	"github.com/presence-dev/presence/internal/wire"
)

// sseHub serves GET /v1/events. It is the sender of the "sse" destination:
// its worker encodes each event once and hands the bytes to every matching
// client's bounded buffer. A client whose buffer is full is disconnected,
// never waited for.
type sseHub struct {
	cfg SSEConfig
	log *slog.Logger
	enc encoder
	lim *ratelog.Limiter[logLine]

	remote RemoteEvents // the other nodes' events (Hub.SetRemote); nil: none

	mu      sync.RWMutex
	clients map[*sseClient]struct{}
	closed  bool
	done    chan struct{} // closed by close: every stream ends

	connects  *metrics.Counter
	slow      *metrics.Counter
	rejected  *metrics.Counter
	delivered *metrics.Counter
}

type sseClient struct {
	ch       chan []byte
	kicked   chan struct{}
	kickOnce sync.Once
	f        filter
}

func (c *sseClient) kick() { c.kickOnce.Do(func() { close(c.kicked) }) }

func newSSEHub(cfg SSEConfig, log *slog.Logger, set *metrics.Set) *sseHub {
	s := &sseHub{
		cfg:     cfg,
		log:     log.With(logKeyDest, "sse"),
		lim:     newLogLimiter(),
		clients: make(map[*sseClient]struct{}),
		done:    make(chan struct{}),
	}
	set.NewGauge("presence_events_sse_clients", func() float64 {
		s.mu.RLock()
		defer s.mu.RUnlock()
		return float64(len(s.clients))
	})
	s.connects = set.NewCounter("presence_events_sse_connections_total")
	s.slow = set.NewCounter("presence_events_sse_slow_disconnects_total")
	s.rejected = set.NewCounter("presence_events_sse_rejected_total")
	s.delivered = set.NewCounter("presence_events_sse_delivered_total")
	return s
}

func (*sseHub) accepts(Type) bool { return true }

// send broadcasts a batch. It never blocks and never fails.
func (s *sseHub) send(_ context.Context, batch []rec) error {
	s.mu.RLock()
	if len(s.clients) == 0 {
		s.mu.RUnlock()
		return nil
	}
	var kicked []*sseClient
	delivered := 0
	for i := range batch {
		r := &batch[i]
		var msg []byte // encoded on first match, shared by every client
		for c := range s.clients {
			if !c.f.match(r) {
				continue
			}
			if msg == nil {
				msg = append(msg, "data: "...)
				msg = s.enc.appendJSON(msg, r)
				msg = append(msg, '\n', '\n')
			}
			select {
			case c.ch <- msg:
				delivered++
			default:
				kicked = append(kicked, c)
			}
		}
	}
	s.mu.RUnlock()
	s.delivered.Add(delivered)
	if len(kicked) > 0 {
		s.mu.Lock()
		n := 0
		for _, c := range kicked {
			if _, ok := s.clients[c]; ok {
				delete(s.clients, c)
				c.kick()
				n++
			}
		}
		left := len(s.clients)
		s.mu.Unlock()
		s.slow.Add(n)
		if ok, sup := s.lim.Allow(lineSlowClients); ok && n > 0 {
			s.log.Warn("events: slow SSE clients disconnected (buffer full)",
				logKeyDropped, n, logKeyClients, left, logKeySuppressed, sup)
		}
	}
	return nil
}

// close ends every stream; later requests get 503.
func (s *sseHub) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		close(s.done)
	}
}

func (s *sseHub) register(f filter, buffer int) (*sseClient, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return nil, ErrClosed
	case len(s.clients) >= s.cfg.MaxClients:
		return nil, errTooManyClients
	}
	c := &sseClient{ch: make(chan []byte, buffer), kicked: make(chan struct{}), f: f}
	s.clients[c] = struct{}{}
	return c, nil
}

func (s *sseHub) unregister(c *sseClient) {
	s.mu.Lock()
	delete(s.clients, c)
	s.mu.Unlock()
}

var errTooManyClients = errors.New("too many event streams")

// ServeHTTP streams events as text/event-stream until the request's
// context ends, the client falls behind, or the hub closes.
func (s *sseHub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		wire.WriteError(w, http.StatusMethodNotAllowed, "method not allowed; allowed: GET")
		return
	}
	f, err := parseFilter(r.URL.Query(), s.cfg.MaxFilterIDs)
	if err != nil {
		s.rejected.Inc()
		wire.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	c, err := s.register(f, s.cfg.ClientBuffer)
	if err != nil {
		s.rejected.Inc()
		w.Header().Set("Retry-After", "5")
		wire.WriteError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	defer s.unregister(c)
	s.connects.Inc()
	if s.remote != nil && r.URL.Query().Get("scope") != ScopeLocal {
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		q := r.URL.Query()
		q.Del("scope")
		go s.remote(ctx, q, func(msg []byte) bool {
			if ctx.Err() != nil {
				return false
			}
			select {
			case c.ch <- bytes.Clone(msg):
				return true
			default:
				// Behind: disconnected, as for a local event; the client
				// reconnects.
				c.kick()
				s.slow.Inc()
				return false
			}
		})
	}

	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	// write sends buf with a deadline of its own: it lifts the server's
	// WriteTimeout (a stream outlives it) and bounds a write to a stalled
	// client. A writer without deadlines (ErrNotSupported) just writes.
	write := func(buf []byte) bool {
		if err := rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return false
		}
		if _, err := w.Write(buf); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	// EventSource reconnects after "retry" ms when the stream ends.
	if !write([]byte("retry: 2000\n: presence events\n\n")) {
		return
	}
	hb := time.NewTicker(s.cfg.Heartbeat)
	defer hb.Stop()
	var buf []byte
	for {
		select {
		case <-r.Context().Done():
			return
		case <-s.done:
			return
		case <-c.kicked:
			return
		case <-hb.C:
			if !write([]byte(": ping\n\n")) {
				return
			}
		case msg := <-c.ch:
			buf = append(buf[:0], msg...)
			// Take what else is waiting, up to 64 KiB per write.
		more:
			for len(buf) < 64<<10 {
				select {
				case m := <-c.ch:
					buf = append(buf, m...)
				default:
					break more
				}
			}
			if !write(buf) {
				return
			}
			hb.Reset(s.cfg.Heartbeat)
		}
	}
}

// filter selects the events of one stream. Zero value: everything.
type filter struct {
	ids      map[string]struct{} // nil: any (events without an id excluded otherwise)
	statuses uint8               // bit per engine.Status; 0: any
	types    uint8               // bit per Type; 0: any
}

// match applies each filter to the events that have its field: an event
// without the field (a mass_offline has no id and no status) does not
// pass a filter on it.
func (f *filter) match(r *rec) bool {
	if f.types != 0 && f.types&(1<<r.typ) == 0 {
		return false
	}
	if f.ids != nil {
		if r.id == "" { // the incident events
			return false
		}
		if _, ok := f.ids[r.id]; !ok {
			return false
		}
	}
	if f.statuses != 0 {
		var st engine.Status
		switch r.typ {
		case TypeStatus, TypeFlapping, TypeFlappingStopped:
			st = r.status
		case TypeOfflineAlert:
			st = engine.StatusOffline
		default:
			return false
		}
		if f.statuses&(1<<st) == 0 {
			return false
		}
	}
	return true
}

// parseFilter reads ?id=a,b&status=offline&type=status,offline_alert. Each
// parameter may be repeated; values are comma-separated. Unknown
// parameters are errors (a typo would otherwise stream everything).
func parseFilter(q url.Values, maxIDs int) (filter, error) {
	var f filter
	for key, vals := range q {
		switch key {
		case "id":
			for _, v := range vals {
				for id := range strings.SplitSeq(v, ",") {
					if !engine.ValidID(id) {
						return filter{}, fmt.Errorf("id: invalid device id %s", wire.Quote(id, 64))
					}
					if f.ids == nil {
						f.ids = make(map[string]struct{})
					}
					f.ids[id] = struct{}{}
					if len(f.ids) > maxIDs {
						return filter{}, fmt.Errorf("id: more than %d ids", maxIDs)
					}
				}
			}
		case "status":
			for _, v := range vals {
				for st := range strings.SplitSeq(v, ",") {
					switch st {
					case "online":
						f.statuses |= 1 << engine.StatusOnline
					case "offline":
						f.statuses |= 1 << engine.StatusOffline
					default:
						return filter{}, fmt.Errorf("status: %s is not online or offline", wire.Quote(st, 64))
					}
				}
			}
		case "type":
			for _, v := range vals {
				for name := range strings.SplitSeq(v, ",") {
					t, ok := ParseType(name)
					if !ok {
						return filter{}, fmt.Errorf("type: unknown event type %s (status, removed, offline_alert, mass_offline, mass_offline_recovered, flapping, flapping_stopped)", wire.Quote(name, 64))
					}
					f.types |= 1 << t
				}
			}
		case "scope": // which nodes: see sseHub.remote
			for _, v := range vals {
				if v != ScopeCluster && v != ScopeLocal {
					return filter{}, fmt.Errorf("scope: %s is not cluster or local", wire.Quote(v, 64))
				}
			}
		default:
			return filter{}, fmt.Errorf("unknown parameter %s (id, status, type, scope)", wire.Quote(key, 64))
		}
	}
	return f, nil
}

// Scopes of GET /v1/events: the whole cluster's events (the default), or
// this node's alone.
const (
	ScopeCluster = "cluster"
	ScopeLocal   = "local"
)

// RemoteEvents feeds a stream with the events of the other nodes of a
// cluster (Hub.SetRemote): it runs while the stream does (until ctx is
// done) and hands deliver every encoded event ("data: ...\n\n") the
// stream's query (given without scope) asks for; deliver copies it and
// returns false once the stream is gone.
type RemoteEvents func(ctx context.Context, query url.Values, deliver func(msg []byte) bool)

// SetRemote makes GET /v1/events stream the other nodes' events too,
// unless the request says scope=local. Call it before serving.
func (h *Hub) SetRemote(r RemoteEvents) {
	if h.sse != nil {
		h.sse.remote = r
	}
}

// Subscription is one local event stream taken by Hub.Subscribe: C
// carries the encoded events ("data: ...\n\n"), Done is closed when the
// subscriber fell behind (its buffer was full) or the hub closed. Close
// ends it.
type Subscription struct {
	C    <-chan []byte
	Done <-chan struct{}
	s    *sseHub
	c    *sseClient
}

// Close ends the subscription.
func (sub *Subscription) Close() {
	sub.s.unregister(sub.c)
	sub.c.kick() // ends the goroutine that watches it
}

// Subscribe takes a stream of this node's events matching query (the
// parameters of GET /v1/events), as another node does for its own clients.
// It counts as an SSE client (MaxClients).
func (h *Hub) Subscribe(query url.Values) (*Subscription, error) {
	if h.sse == nil {
		return nil, errors.New("events: SSE is disabled")
	}
	return h.SubscribeBuffered(query, h.sse.cfg.ClientBuffer)
}

// SubscribeBuffered is Subscribe with a buffer of its own, in events: the
// stream another node shares among all its streams (it falls behind, and
// is dropped, only past buffer events).
func (h *Hub) SubscribeBuffered(query url.Values, buffer int) (*Subscription, error) {
	if h.sse == nil {
		return nil, errors.New("events: SSE is disabled")
	}
	f, err := parseFilter(query, h.sse.cfg.MaxFilterIDs)
	if err != nil {
		return nil, err
	}
	c, err := h.sse.register(f, buffer)
	if err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-c.kicked:
		case <-h.sse.done:
		}
		close(done)
	}()
	return &Subscription{C: c.ch, Done: done, s: h.sse, c: c}, nil
}

// StreamFilter is the filter of one GET /v1/events stream (its id, status
// and type parameters), for a node that receives the other nodes' events
// encoded, unfiltered, once for all its streams, and hands each stream
// those it asks for (events.RemoteEvents' caller).
type StreamFilter struct{ f filter }

// NewStreamFilter reads a stream's parameters as GET /v1/events does;
// maxIDs bounds the ids.
func NewStreamFilter(query url.Values, maxIDs int) (StreamFilter, error) {
	f, err := parseFilter(query, maxIDs)
	return StreamFilter{f}, err
}

// Encoded is an encoded event ("data: {json}\n\n") with what a
// StreamFilter looks at.
type Encoded struct {
	Msg []byte
	r   rec
}

// SplitEncoded calls fn with each event of msg, one or more encoded events
// back to back, as a node's event stream sends them. An event whose JSON
// does not parse is skipped.
func SplitEncoded(msg []byte, fn func(Encoded)) {
	for len(msg) > 0 {
		end := bytes.Index(msg, []byte("\n\n"))
		if end < 0 {
			return
		}
		one := msg[:end+2]
		msg = msg[end+2:]
		body, ok := bytes.CutPrefix(one, []byte("data: "))
		if !ok {
			continue
		}
		var head struct {
			Type   string `json:"type"`
			ID     string `json:"id"`
			Status string `json:"status"`
		}
		if json.Unmarshal(bytes.TrimSpace(body), &head) != nil {
			continue
		}
		// A type this node does not know (a newer peer's) is type 0: it
		// passes only the streams without a type or status filter.
		t, _ := ParseType(head.Type)
		fn(Encoded{Msg: one, r: rec{typ: t, id: head.ID, status: engine.ParseStatus(head.Status)}})
	}
}

// Match reports whether the stream asks for e.
func (f StreamFilter) Match(e *Encoded) bool { return f.f.match(&e.r) }
