package daemon

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5/pgxpool"
	goredis "github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/api"
	"github.com/presence-dev/presence/cluster"
	"github.com/presence-dev/presence/control"
	"github.com/presence-dev/presence/dashboard"
	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/events"
	"github.com/presence-dev/presence/ingest"
	"github.com/presence-dev/presence/internal/lifecycle"
	"github.com/presence-dev/presence/internal/netaddr"
	"github.com/presence-dev/presence/recovery"
	"github.com/presence-dev/presence/report"
	"github.com/presence-dev/presence/writeback/postgres"
	"github.com/presence-dev/presence/writeback/redis"
)

// Daemon is presenced: ingest feeds the engine, write-behind keeps Redis and
// Postgres in step, the API answers questions. New builds every component;
// Run starts them in order, serves until its context ends, then closes them
// in the reverse order (docs/ARCHITECTURE.md draws it).
type Daemon struct {
	cfg Config // resolved
	log *slog.Logger

	stores  *stores
	broker  *broker // nil with an external broker
	api     *api.Server
	keys    *redis.Sink        // the Redis sink; nil without Redis
	masters *redis.MasterWatch // rewrites the keys after a Redis failover; nil without Redis
	devices *postgres.Sink
	history *postgres.History
	events  *events.Hub
	pprof   *pprofServer   // nil unless PprofAddr
	fleet   *control.Fleet // the cluster-wide answers; nil when not clustered
	mem     *memReturner
	index   *recovery.Index
	eng     *engine.Engine
	node    *cluster.Node // nil when not clustered
	settle  *settle       // waits for the membership to settle; nil when not clustered
	rec     *recovery.Recovery
	held    *lifecycle.Gate // the Redis writers wait for it: recovery done
	ing     *ingest.Ingester
	demo    *demo

	engineMetrics *metrics.Set
	group         *lifecycle.Group
}

// New validates cfg and builds a daemon: it opens nothing but the embedded
// broker's port (so that a taken port fails at once); Run starts the rest.
func New(cfg Config, log *slog.Logger) (*Daemon, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &Daemon{log: log, stores: &stores{}}
	if err := d.build(cfg); err != nil {
		d.stores.Close(context.Background())
		if d.broker != nil {
			d.broker.Close(context.Background())
		}
		return nil, err
	}
	return d, nil
}

// stage is one stage of Run's start order (lifecycle.Group.Add).
type stage struct {
	budget time.Duration
	parts  []lifecycle.Part
}

// stages are the components in start order; Close goes the other way.
// Components that are not configured are nil and left out.
func (d *Daemon) stages() []stage {
	p := lifecycle.Named
	return []stage{
		{0, []lifecycle.Part{p("stores", d.stores)}},         // the clients, closed last
		{0, []lifecycle.Part{p("redis-masters", d.masters)}}, // a failover: every key written again
		{0, []lifecycle.Part{p("memory", d.mem)}},            // returns a burst's freed memory
		{0, []lifecycle.Part{p("broker", d.broker)}},
		{0, []lifecycle.Part{p("api", d.api)}}, // health and readiness first
		{0, []lifecycle.Part{p("pprof", d.pprof)}},
		// The sinks, flushed together at shutdown within ShutdownTimeout.
		{d.cfg.ShutdownTimeout, []lifecycle.Part{p("redis", d.keys), p("postgres", d.devices),
			p("history", d.history), p("events", d.events)}},
		{0, []lifecycle.Part{p("engine", d.eng)}},    // closed after ingest and cluster: the last Deliver
		{0, []lifecycle.Part{p("cluster", d.node)}},  // closed: leave, hand off (its own bounds)
		{0, []lifecycle.Part{p("settle", d.settle)}}, // started: the membership settled
		{0, []lifecycle.Part{p("recovery", d.rec)}},  // started: rebuilt from Redis
		{0, []lifecycle.Part{p("writes", d.held)}},   // opened: the sinks write to Redis from here on
		{0, []lifecycle.Part{p("ingest", d.ing)}},    // subscribed last; closed first: hands over
		{0, []lifecycle.Part{p("demo", d.demo)}},     // publishes to the broker
	}
}

// build makes every component; New closes what it opened if it fails.
func (d *Daemon) build(cfg Config) error {
	log := d.log
	brokerURL := cfg.Ingest.BrokerURL
	if brokerURL == "" {
		explicit := cfg.EmbeddedMQTTAddr != defaultEmbeddedMQTTAddr
		var err error
		if d.broker, err = newBroker(cfg.EmbeddedMQTTAddr, explicit, log); err != nil {
			return err
		}
		brokerURL = d.broker.url()
	}
	cfg = cfg.resolve(brokerURL)
	d.cfg = cfg
	d.mem = newMemReturner(log.With("component", "memory"))
	if cfg.clustered() && !cfg.Ingest.CleanSession {
		log.Warn("persistent MQTT sessions in a cluster: while a node is down the broker may keep queueing its share of the stream for it (Mosquitto does), and those messages reach their owners only when it returns",
			"client_id_prefix", cfg.Ingest.ClientIDPrefix)
	}
	if cfg.API.Token == "" && !netaddr.Loopback(cfg.API.Addr) {
		log.Warn("the HTTP API listens beyond loopback without -api-token: anyone who reaches it reads every device's status, "+
			"and its writes (POST /v1/touches, POST /v1/devices/{id}/status) are refused (set PRESENCE_API_TOKEN, or keep it behind an authenticating proxy)", "addr", cfg.API.Addr)
	}
	if err := d.buildStores(); err != nil {
		return err
	}
	sinks, err := d.buildTransitionSinks()
	if err != nil {
		return err
	}
	if err := d.buildEngine(sinks); err != nil {
		return err
	}
	if err := d.buildCluster(); err != nil {
		return err
	}
	ic := cfg.Ingest
	ic.Logger = log.With("component", "ingest")
	var handler ingest.Handler = d.eng
	if d.node != nil {
		handler = d.node.Router() // forwards what other nodes own
	}
	if d.ing, err = ingest.New(ic, handler); err != nil {
		return err
	}
	if cfg.Demo > 0 {
		d.demo = newDemo(cfg, brokerURL, log.With("component", "demo"))
	}
	if err := d.buildAPI(); err != nil {
		return err
	}
	d.group = lifecycle.NewGroup(log)
	for _, s := range d.stages() {
		d.group.Add(s.budget, s.parts...)
	}
	return nil
}

// buildStores opens the clients of Redis and Postgres (they connect on
// first use).
func (d *Daemon) buildStores() error {
	var err error
	if d.cfg.Redis.Enabled() {
		if d.stores.redis, err = d.cfg.Redis.NewClient(); err != nil {
			return err
		}
	}
	if d.cfg.Postgres.Enabled() {
		if d.stores.pool, err = d.cfg.Postgres.Open(context.Background()); err != nil {
			return err
		}
		if why := d.cfg.Postgres.Unverified(); why != "" {
			d.log.Warn("PostgreSQL is not on this host and its connections are not verified TLS: " + why +
				"; set sslmode=verify-full (and sslrootcert if its CA is not the system's) in DATABASE_URL")
		}
	}
	return nil
}

// buildTransitionSinks makes what receives every transition: metrics,
// history, events. (The device index is written by the Redis sink, with
// the keys: it waits for no transition.)
func (d *Daemon) buildTransitionSinks() (fanout, error) {
	cfg, log := d.cfg, d.log
	d.engineMetrics = metrics.NewSet()
	sinks := fanout{newTransitionCounter(d.engineMetrics)}
	var err error
	if d.stores.pool != nil && cfg.History.Table != "" {
		hc := cfg.History
		hc.Logger = log.With("component", "history")
		hc.Yield = d.historyYields
		if d.history, err = postgres.NewHistory(d.stores.pool, hc); err != nil {
			return nil, err
		}
		sinks = append(sinks, d.history)
	}
	d.events, err = events.New(cfg.Events, events.Deps{
		Redis:     d.stores.redis,
		FleetSize: func() int { return d.eng.Counts().Total }, // called once running
		Logger:    log.With("component", "events"),
	})
	if err != nil {
		return nil, err
	}
	if d.stores.redis != nil { // restart recovery and cluster rebuilds read it
		if d.index, err = recovery.NewIndex(d.stores.redis, cfg.Recovery.Index, nil); err != nil {
			return nil, err
		}
	}
	// Last: a stream or retained-MQTT destination that pushes back makes
	// this call wait, and the sinks before it have their batch by then.
	sinks = append(sinks, d.events)
	return sinks, nil
}

// buildEngine makes the engine, its write-behind sinks and restart
// recovery.
func (d *Daemon) buildEngine(sinks fanout) error {
	cfg, log := d.cfg, d.log
	ec := cfg.Engine
	ec.Sink, ec.Logger = sinks, log.With("component", "engine")
	var err error
	if d.eng, err = engine.New(ec); err != nil {
		return err
	}
	registerEngineMetrics(d.engineMetrics, d.eng)
	if d.stores.redis != nil {
		tr, err := d.eng.NewTracker()
		if err != nil {
			return err
		}
		kc := cfg.Keys
		kc.Flush.Logger = log.With("component", "redis")
		kc.IndexKeyOf = d.index.KeyOf // new devices enter the index with their keys, removed ones leave it
		kc.TimeoutsKeyOf = d.index.TimeoutsKeyOf
		if d.keys, err = redis.New(d.stores.redis, tr, kc); err != nil {
			return err
		}
		mw := redis.DefaultMasterWatchConfig()
		mw.Logger = kc.Flush.Logger
		if kc.Guarded {
			mw.NeedVersion = "7.0" // PEXPIRETIME
		}
		if d.masters, err = redis.NewMasterWatch(d.stores.redis, mw, tr.MarkAll); err != nil {
			return err
		}
		rc := cfg.Recovery
		rc.Logger = log.With("component", "recovery")
		if d.rec, err = recovery.New(rc, d.index, d.keys, d.eng); err != nil {
			return err
		}
		// The sinks start before recovery, so that they close after the
		// engine; their Redis writes (the restart transitions' keys and
		// events) wait until the rebuild is done, which then has Redis to
		// itself: no message is heard until it is.
		d.held = lifecycle.NewGate()
		d.keys.Hold(d.held.Open())
		d.events.Hold(d.held.Open())
	}
	if d.stores.pool != nil {
		tr, err := d.eng.NewTracker()
		if err != nil {
			return err
		}
		pc := cfg.Devices
		pc.Flush.Logger = log.With("component", "postgres")
		pc.Flush.Yield = d.redisBusy
		if d.devices, err = postgres.New(d.stores.pool, tr, pc); err != nil {
			return err
		}
	}
	return nil
}

// buildCluster makes the cluster node, when clustered.
func (d *Daemon) buildCluster() error {
	if !d.cfg.clustered() {
		return nil
	}
	cc := d.cfg.Cluster
	cc.Logger = d.log.With("component", "cluster")
	cc.OnChange = func(c cluster.Change) { // called once started
		d.log.Info("cluster membership changed", "members", len(c.New.Members()), "moved", len(c.Moved),
			"joined", c.Joined, "left", c.Left, "failed", c.Failed, "rebuild", len(c.Rebuild()))
		if d.rec != nil {
			d.rec.OnChange(c) // rebuilds what it gained from a crashed member
		}
	}
	var err error
	if d.node, err = cluster.New(cc, flapLocal{d.eng, d.events}); err != nil {
		return err
	}
	d.settle = &settle{d.node}
	if d.rec != nil {
		d.rec.SetCluster(d.node)
	}
	return nil
}

// buildAPI makes the HTTP API with every route.
func (d *Daemon) buildAPI() error {
	cfg, log := d.cfg, d.log
	ac := cfg.API
	ac.Logger = log.With("component", "api")
	ac.Ready = d.ready
	ac.MetricSets = d.metricSets()
	rc := report.DefaultConfig()
	var fl *control.Fleet
	if d.node != nil {
		fl = control.NewFleet(d.node, d.eng, log.With("component", "fleet"))
		d.fleet = fl
		ac.Cluster, ac.ClusterTimeout = fl, cfg.Cluster.QueryTimeout
		rc.Cluster, rc.ClusterTimeout = fl.Lists, cfg.Cluster.QueryTimeout
	}
	ac.Writer = statusWriter{d.ing, d.node}
	var err error
	if ac.Controller, err = d.controller(); err != nil {
		return err
	}
	if d.api, err = api.New(ac, flapLocal{d.eng, d.events}); err != nil {
		return err
	}
	pool := d.stores.pool
	if d.history != nil {
		rc.Table = cfg.History.Table
	} else {
		pool = nil // no history: history and uptime answer 503
	}
	rc.Logger = log.With("component", "report")
	rep, err := report.New(pool, d.eng, rc)
	if err != nil {
		return err
	}
	if fl != nil {
		fl.Register(rep, d.events)
	}
	rep.Mount(d.api)
	d.api.Handle("GET /v1/events", d.events.SSEHandler())
	d.api.Handle("GET /v1/cluster", http.HandlerFunc(d.serveCluster))
	d.api.HandleWrite("POST /v1/touches", d.ing.TouchesHandler())
	dashboard.Mount(d.api)
	if cfg.PprofAddr != "" {
		d.pprof = newPprofServer(cfg.PprofAddr, d.api.RequireToken, log.With("component", "pprof"))
	}
	return nil
}

// metricSets are the metric sets of every component but the API (which
// writes its own), for /metrics.
func (d *Daemon) metricSets() []*metrics.Set {
	sets := []*metrics.Set{d.engineMetrics}
	if d.index != nil {
		sets = append(sets, d.index.Metrics())
	}
	for _, s := range d.stages() {
		for _, p := range s.parts {
			if p.C == lifecycle.Component(d.api) {
				continue
			}
			if m, ok := p.C.(interface{ Metrics() *metrics.Set }); ok && !lifecycle.IsNil(p.C) {
				sets = append(sets, m.Metrics())
			}
		}
	}
	return sets
}

// busyAt is the backlog of a Redis writer (devices dirty, events queued)
// past which it has a burst to write: twenty pipelines, the key writer's
// FlushAt. Steady traffic stays below it (a 250 ms flush of 40,000
// messages/s is 10,000 devices at the most).
const busyAt = 20_000

// redisBusy reports whether the Redis writers have a burst to write: the
// key writer has more than busyAt devices waiting, or Pub/Sub and the
// Stream more than busyAt events. The PostgreSQL writers (devices, history) yield to them
// meanwhile, up to -pg-max-yield: on two cores they would otherwise share
// the CPU, and Redis, the consumers' contract, would lag (BENCHMARKS.md,
// mass expiry).
func (d *Daemon) redisBusy() bool {
	return d.keys != nil && d.keys.Pending() > busyAt ||
		d.events != nil && d.events.RedisBacklog() > busyAt
}

// historyYields: the history, the least urgent writer, also waits for
// the devices table while it has more than a flush's worth waiting (its
// FlushAt): the two share PostgreSQL, and the table is what other systems
// read.
func (d *Daemon) historyYields() bool {
	return d.redisBusy() || d.devices != nil && d.devices.Pending() > max(d.cfg.Devices.Flush.FlushAt, busyAt)
}

// ready is /readyz: joined to the cluster (when clustered), rebuilt from
// Redis and subscribed to the broker.
func (d *Daemon) ready() error {
	if d.node != nil {
		if err := d.node.Joined(); err != nil {
			return api.NotReady("cluster", err)
		}
	}
	if d.rec != nil {
		if err := d.rec.Ready(); err != nil {
			return api.NotReady("recovery", err)
		}
	}
	if err := d.ing.ReadyErr(); err != nil {
		return api.NotReady("ingest", err)
	}
	return nil
}

// HTTPAddr is the address the API listens on ("" before Run started it).
func (d *Daemon) HTTPAddr() string { return d.api.Addr() }

// PprofAddr is the address of the pprof endpoint ("" when off).
func (d *Daemon) PprofAddr() string { return d.pprof.Addr() }

// BrokerURL is the MQTT broker presenced reads from.
func (d *Daemon) BrokerURL() string { return d.cfg.Ingest.BrokerURL }

// Engine is the daemon's engine (tests and the cluster layer use it).
func (d *Daemon) Engine() *engine.Engine { return d.eng }

// Run starts every component in order (the API first, then the sinks, the
// engine's clock, the cluster node, restart recovery and, last, ingest),
// serves until ctx ends or a component fails, then closes them in the
// reverse order: ingest hands over what it queued, a cluster node leaves
// and hands its devices off, the engine delivers its last transitions, the
// sinks flush within Config.ShutdownTimeout, the API closes. It returns nil
// after a clean shutdown (what could not be flushed is logged), or the
// failure.
func (d *Daemon) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, d.beginShutdown)
	defer stop()
	if err := d.group.Start(ctx); err != nil {
		if ctx.Err() != nil { // a signal during start-up (restart recovery)
			d.log.Info("stopped during start-up")
			return nil
		}
		return err
	}
	var failure error
	select {
	case <-ctx.Done():
		d.log.Info("shutting down")
	case failure = <-d.group.Failed():
		d.log.Error("shutting down after a failure", "err", failure)
		d.beginShutdown()
	}
	if err := d.group.Close(context.WithoutCancel(ctx)); err != nil {
		d.log.Error("shutdown incomplete", "err", err)
	}
	d.log.Info("stopped")
	return failure
}

// beginShutdown bounds what the shutdown may wait for before the sinks'
// own budget: the event destinations' back-pressure on the engine's last
// delivery, at most ShutdownTimeout from now.
func (d *Daemon) beginShutdown() { d.events.StopWaitingAfter(d.cfg.ShutdownTimeout) }

// settle waits, once the cluster node started, until it has joined its
// cluster (cluster.Node.Joined: a node given seeds that none of them let in
// neither restores nor subscribes, and is not ready, rather than time
// alone the devices the others time) and its membership has settled, so
// that recovery restores (and ingest hears) only what the node keeps, and
// restart transitions are not reported by several nodes.
type settle struct{ node *cluster.Node }

func (s *settle) Start(ctx context.Context) error {
	s.node.WaitJoined(ctx)
	s.node.Settle(ctx)
	return ctx.Err()
}
func (*settle) Close(context.Context) error { return nil }

// stores are the clients the components share: closed after all of them.
type stores struct {
	redis goredis.UniversalClient
	pool  *pgxpool.Pool
}

func (*stores) Start(context.Context) error { return nil }

func (s *stores) Close(context.Context) error {
	var err error
	if s.redis != nil {
		err = s.redis.Close()
	}
	if s.pool != nil {
		s.pool.Close()
	}
	return err
}

// newDemo is the -demo fleet on the first concrete topics.
func newDemo(cfg Config, brokerURL string, log *slog.Logger) *demo {
	var telemetry, status []string
	for _, t := range cfg.Ingest.Topics {
		if t.Kind == ingest.KindStatus {
			status = append(status, t.Pattern)
		} else {
			telemetry = append(telemetry, t.Pattern)
		}
	}
	return &demo{n: cfg.Demo, broker: brokerURL, telemetry: demoTopic(telemetry), status: demoTopic(status),
		timeout: cfg.Engine.DefaultTimeout, log: log, rng: rand.New(rand.NewPCG(rand.Uint64(), 1))}
}
