package ingest

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/ratelog"
	"github.com/presence-dev/presence/internal/wire"
)

// Handler receives what ingest heard. *engine.Engine implements it.
//
// The Ingester calls it from Config.Shards worker goroutines at once (all
// messages of one device from the same worker, in arrival order), so it
// must be safe for concurrent use.
type Handler interface {
	// TouchBatch records activity. The slice is reused after the call
	// returns: copy what you keep (a Touch.ID may be a substring of an MQTT
	// topic or of an HTTP request). rejected counts touches refused (e.g.
	// invalid ids).
	TouchBatch(batch []engine.Touch) (rejected int)
	// MarkOffline applies a status "offline" message (a Last Will) received
	// at at.
	MarkOffline(id string, at time.Time) error
}

// Ingester subscribes to the broker over Config.Connections connections and
// feeds a Handler. See the package documentation for the data path.
type Ingester struct {
	cfg    Config
	h      Handler
	parser *Parser
	subs   map[string]byte // subscription filter -> QoS
	log    *slog.Logger
	clock  func() time.Time
	m      *ingestMetrics
	seed   maphash.Seed
	shards []shard
	conns  []*conn
	probe  *prober

	dropLog    *ratelog.Limiter[reason]        // one line per drop reason per LogInterval
	handlerLog *ratelog.Limiter[struct{}]      // MarkOffline failures
	requestLog *ratelog.Limiter[requestReason] // HTTP requests refused whole

	// Ingest keeps its own state machine rather than a lifecycle.Runner:
	// Close must disconnect from the broker first (no new input), wait
	// for paho's subscribe loops, and only then let the workers hand what
	// they queued to the Handler.
	mu         sync.Mutex // guards started, connecting, closed and subWG.Add
	started    bool       // workers running
	connecting bool       // clients started
	closed     bool
	done       chan struct{} // closed by Close
	workers    sync.WaitGroup
	probing    sync.WaitGroup // the prober's loop
	subWG      sync.WaitGroup // subscribe loops running in paho's OnConnect goroutines
	http       sync.WaitGroup // HTTP requests handing input over (enterHTTP)
	closeOnce  sync.Once
}

// New validates cfg and builds an Ingester; it connects nothing until
// Start. h receives the messages.
func New(cfg Config, h Handler) (*Ingester, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if h == nil {
		return nil, errors.New("ingest: nil Handler")
	}
	parser, err := NewParser(cfg.Topics, cfg.MaxTopicLen, cfg.MaxPayloadLen)
	if err != nil {
		return nil, err
	}
	cfg.Topics = append([]Topic(nil), cfg.Topics...)
	in := &Ingester{
		cfg:    cfg,
		h:      h,
		parser: parser,
		subs:   make(map[string]byte),
		log:    cfg.Logger,
		clock:  cfg.Clock,
		seed:   maphash.MakeSeed(),
		shards: make([]shard, cfg.Shards),
		done:   make(chan struct{}),
	}
	if in.log == nil {
		in.log = slog.Default()
	}
	if in.clock == nil {
		in.clock = time.Now
	}
	in.dropLog = ratelog.New[reason](cfg.LogInterval, in.clock)
	in.handlerLog = ratelog.New[struct{}](cfg.LogInterval, in.clock)
	in.requestLog = ratelog.New[requestReason](cfg.LogInterval, in.clock)
	for _, f := range parser.Filters() {
		in.subs[in.subscription(f)] = cfg.QoS
	}
	for i := range in.shards {
		in.shards[i].init(cfg.QueueSize)
	}
	set := cfg.Metrics
	if set == nil {
		set = metrics.NewSet()
	}
	in.m = newIngestMetrics(set, in)
	nonce := strconv.FormatUint(uint64(rand.Uint32()), 16)
	in.conns = in.newConns(nonce)
	in.probe = newProber(in, nonce)
	return in, nil
}

// subscription is the filter as subscribed: shared when ShareGroup is set.
func (in *Ingester) subscription(filter string) string {
	if in.cfg.ShareGroup == "" {
		return filter
	}
	return "$share/" + in.cfg.ShareGroup + "/" + filter
}

// Start starts the workers and the connections and returns at once: the
// connections keep retrying in the background until Close. Use Ready or
// WaitReady to know when every connection is subscribed. It fails with
// ErrClosed after Close, and when called twice.
func (in *Ingester) Start(context.Context) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	switch {
	case in.closed:
		return ErrClosed
	case in.started:
		return errors.New("ingest: already started")
	}
	in.startWorkersLocked()
	in.connecting = true
	in.log.Info("ingest: connecting", "broker", redact(in.cfg.BrokerURL),
		"connections", len(in.conns), "subscriptions", len(in.subs), "share_group", in.cfg.ShareGroup)
	for _, c := range in.conns {
		c.client.Connect() // with ConnectRetry the token completes only once connected
	}
	return nil
}

func (in *Ingester) startWorkersLocked() {
	in.started = true
	for i := range in.shards {
		in.workers.Add(1)
		go in.runShard(&in.shards[i])
	}
	in.probing.Go(in.probe.run)
}

// Close stops ingest in the order a graceful shutdown needs: it
// disconnects every connection (no new input), waits for the subscribe
// loops, then lets every worker hand its pending messages to the Handler
// and waits for the workers. When Close returns the Handler has received
// every message that was accepted and will not be called again. Close is
// idempotent; a concurrent call waits for the first. It needs no deadline
// of its own: handing over is in memory, and disconnecting is bounded by
// DisconnectQuiesce.
func (in *Ingester) Close(context.Context) error {
	in.closeOnce.Do(func() {
		in.mu.Lock()
		in.closed = true
		connecting := in.connecting
		close(in.done)
		in.mu.Unlock()
		if connecting {
			var wg sync.WaitGroup
			for _, c := range in.conns {
				wg.Go(func() { c.client.Disconnect(uint(in.cfg.DisconnectQuiesce / time.Millisecond)) })
			}
			wg.Wait()
		}
		in.probing.Wait() // after the disconnects: a probe being published fails at once
		in.subWG.Wait()
		in.http.Wait() // HTTP input already taken reaches the Handler before Close returns
		// A paho callback still running after Disconnect finds its shard
		// closed and counts a "closed" drop; it never reaches the handler.
		for i := range in.shards {
			in.shards[i].close()
		}
		in.workers.Wait()
		if connecting {
			in.log.Info("ingest: closed")
		}
	})
	return nil
}

// Ready reports whether every connection is connected and subscribed, and
// the subscriptions proved that they deliver (see Config.ProbeTimeout).
func (in *Ingester) Ready() bool { return in.ReadyErr() == nil }

// ReadyErr is nil when Ready, else why not (for /readyz): a connection not
// subscribed, or a probe that has not come back, with the likely cause.
func (in *Ingester) ReadyErr() error {
	if err := in.connReadyErr(); err != nil {
		return err
	}
	return in.probe.readyErr()
}

// WaitReady waits until Ready or ctx ends; then the error says why it is
// not ready.
func (in *Ingester) WaitReady(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for !in.Ready() {
		select {
		case <-ctx.Done():
			if err := in.ReadyErr(); err != nil {
				return fmt.Errorf("ingest: not ready: %w (%v)", ctx.Err(), err)
			}
			return fmt.Errorf("ingest: not ready: %w", ctx.Err())
		case <-in.done:
			return ErrClosed
		case <-t.C:
		}
	}
	return nil
}

// Metrics returns the set holding this Ingester's metrics
// (presence_ingest_*), for metrics.RegisterSet or a /metrics handler.
func (in *Ingester) Metrics() *metrics.Set { return in.m.set }

// Parser returns the Ingester's parser.
func (in *Ingester) Parser() *Parser { return in.parser }

// Subscriptions returns the filters subscribed on every connection (with
// the $share prefix when sharing).
func (in *Ingester) Subscriptions() []string {
	out := make([]string, 0, len(in.subs))
	for _, f := range in.parser.Filters() {
		out = append(out, in.subscription(f))
	}
	return out
}

// Stats is a snapshot of the Ingester's counters.
type Stats struct {
	Received uint64 // messages received, all connections and HTTP
	// ReceivedHTTP: of those, HTTP touches (POST /v1/touches).
	ReceivedHTTP uint64
	Dropped      map[string]uint64 // by reason (see DropReason); non-zero only
	Touches      uint64            // touches handed to Handler.TouchBatch
	Rejected     uint64            // of those, rejected by the handler
	Offline      uint64            // Handler.MarkOffline calls
	// OfflineUnknown: of those, for devices the handler did not know
	// (engine.ErrNotFound).
	OfflineUnknown uint64
	Batches        uint64 // Handler.TouchBatch calls
	// QueueDepth is the number of messages waiting in the shard queues.
	QueueDepth int
	// Connected and Subscribed count connections in each state, out of
	// Connections.
	Connected, Subscribed, Connections int
}

// Stats returns the current counters.
func (in *Ingester) Stats() Stats {
	s := Stats{
		Dropped:        make(map[string]uint64),
		Touches:        in.m.touches.Get(),
		Rejected:       in.m.rejected.Get(),
		Offline:        in.m.offline.Get(),
		OfflineUnknown: in.m.offlineUnknown.Get(),
		Batches:        in.m.batches.Get(),
		QueueDepth:     in.queueDepth(),
		Connections:    len(in.conns),
	}
	for _, c := range in.m.received {
		s.Received += c.Get()
	}
	s.ReceivedHTTP = in.m.receivedHTTP.Get()
	s.Received += s.ReceivedHTTP
	for r := reasonNone + 1; r < numReasons; r++ {
		if n := in.m.dropped[r].Get(); n > 0 {
			s.Dropped[r.String()] = n
		}
	}
	s.Connected, s.Subscribed = in.connState()
	return s
}

func (in *Ingester) queueDepth() int {
	n := 0
	for i := range in.shards {
		n += in.shards[i].len()
	}
	return n
}

// onMessage is the MQTT message callback of connection conn. It never
// blocks: it stamps the message, parses the topic, and queues the message
// on its device's shard, or counts a drop.
func (in *Ingester) onMessage(conn int, topic string, payload []byte) {
	now := in.clock()
	msg, r := in.parser.parse(topic, payload)
	if msg.probe { // counted by the prober, not as a device message
		in.probe.received(topic, msg.ID)
		return
	}
	in.m.received[conn].Inc()
	if r == reasonNone {
		in.probe.heardPattern(msg.Pattern) // a device message proves its filter too
		t := engine.Touch{ID: msg.ID, At: now, Timeout: msg.Timeout}
		if msg.Offline {
			t.Timeout = offlineMark
		}
		s := &in.shards[maphash.String(in.seed, msg.ID)%uint64(len(in.shards))]
		if r = s.push(t, in.cfg.BatchSize); r == reasonNone {
			return
		}
	}
	in.drop(r, now, topic, len(payload))
}

func (in *Ingester) drop(r reason, now time.Time, topic string, payloadLen int) {
	in.m.dropped[r].Inc()
	if ok, sup := in.dropLog.AllowAt(r, now); ok {
		in.log.Warn("ingest: message dropped", "reason", r.String(),
			"topic", wire.Truncate(topic, 128), "payload_bytes", payloadLen, "suppressed", sup)
	}
}
