package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/api"
	"github.com/presence-dev/presence/cluster"
	"github.com/presence-dev/presence/dashboard"
	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/events"
	"github.com/presence-dev/presence/ingest"
	"github.com/presence-dev/presence/report"
	"github.com/presence-dev/presence/writeback"
)

// Daemon is presenced: ingest feeds the engine, write-behind keeps Redis and
// Postgres in step, the API answers questions. New builds and binds
// everything (so a taken port fails at once); Run serves until its context
// ends, then shuts down in order and flushes what is pending.
type Daemon struct {
	cfg Config
	log *slog.Logger

	eng    *engine.Engine
	broker *broker // nil with an external broker
	ing    *ingest.Ingester
	api    *api.Server
	httpLn net.Listener

	redis     redis.UniversalClient // nil without Redis
	redisSink *writeback.Redis
	pool      *pgxpool.Pool // nil without Postgres
	pgSink    *writeback.Postgres
	history   *writeback.History // nil without Postgres or history
	events    *events.Hub
	node      *cluster.Node         // nil when not clustered
	index     *writeback.RedisIndex // per-partition device ids; with Redis

	engineMetrics *metrics.Set
	hydrated      atomic.Bool
	hydrateErr    atomic.Pointer[error]
}

// New builds a daemon from a validated configuration. Nothing runs until Run.
func New(cfg Config, log *slog.Logger) (*Daemon, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &Daemon{cfg: cfg, log: log}
	if err := d.build(); err != nil {
		d.closeResources()
		return nil, err
	}
	return d, nil
}

// build makes every component; New closes what it opened if it fails.
func (d *Daemon) build() error {
	if d.cfg.MQTTURL == "" {
		explicit := d.cfg.EmbeddedMQTTAddr != DefaultConfig().EmbeddedMQTTAddr
		var err error
		if d.broker, err = startBroker(d.cfg.EmbeddedMQTTAddr, explicit, d.log); err != nil {
			return err
		}
	}
	sinks, err := d.buildTransitionSinks()
	if err != nil {
		return err
	}
	if err := d.buildEngine(sinks); err != nil {
		return err
	}
	if err := d.buildIngest(); err != nil {
		return err
	}
	return d.buildAPI()
}

// buildTransitionSinks connects the stores and makes what receives every
// transition: metrics, history, events, the cluster's device index.
func (d *Daemon) buildTransitionSinks() (fanout, error) {
	cfg, log := d.cfg, d.log
	sinks := fanout{newTransitionCounter(d.metricsSet())}
	if cfg.DatabaseURL != "" {
		pool, err := pgxpool.New(context.Background(), cfg.DatabaseURL)
		if err != nil {
			return nil, fmt.Errorf("DATABASE_URL: %w", err)
		}
		d.pool = pool
		if cfg.HistoryTable != "" {
			hc := writeback.DefaultHistoryConfig()
			hc.Table, hc.Logger = cfg.HistoryTable, log.With("component", "history")
			if d.history, err = writeback.NewHistory(pool, hc); err != nil {
				return nil, err
			}
			sinks = append(sinks, d.history)
		}
	}
	if cfg.redisEnabled() {
		var err error
		if d.redis, err = cfg.redisClient(); err != nil {
			return nil, err
		}
	}
	hub, err := events.New(cfg.eventsConfig(d.BrokerURL()), events.Deps{
		Redis:     d.redis,
		FleetSize: func() int { return d.eng.Counts().Total }, // called once running
		Logger:    log.With("component", "events"),
	})
	if err != nil {
		return nil, err
	}
	d.events = hub
	sinks = append(sinks, hub)
	if d.redis != nil { // restart recovery and cluster rebuilds read it
		parts := cluster.DefaultPartitions
		d.index = writeback.NewRedisIndex(d.redis, cfg.RedisPrefix,
			func(id string) int { return cluster.PartitionOf(id, parts) }, 0, log.With("component", "index"), nil)
		sinks = append(sinks, d.index)
	}
	return sinks, nil
}

// deliverAfterDrain is the Redis sink's source when there is a device
// index. After taking dirty devices it has the engine deliver the
// transitions queued so far: a device is marked dirty and its online
// transition queued at the same moment, so by then the index (a transition
// sink, called synchronously) has every drained device that came online,
// and the Redis sink writes the index before the keys. Without it, a device
// drained within one engine tick of coming online could reach Redis before
// its index entry and, after a kill -9, be missed by a restart that
// hydrates from the index. (Not covered: a device whose transition the
// engine is coalescing because the sinks fell a whole queue behind.)
type deliverAfterDrain struct {
	writeback.Source
	eng *engine.Engine
}

func (s deliverAfterDrain) Drain(dst []engine.DeviceState, max int) []engine.DeviceState {
	dst = s.Source.Drain(dst, max)
	s.eng.Deliver()
	return dst
}

// buildEngine makes the engine and its write-behind sinks.
func (d *Daemon) buildEngine(sinks fanout) error {
	cfg, log := d.cfg, d.log
	ec := engine.DefaultConfig()
	ec.DefaultTimeout, ec.Tick = cfg.Timeout, cfg.Tick
	ec.Sink, ec.Logger = sinks, log.With("component", "engine")
	eng, err := engine.New(ec)
	if err != nil {
		return err
	}
	d.eng = eng
	d.registerEngineMetrics()
	if d.redis != nil {
		tr, err := eng.NewTracker()
		if err != nil {
			return err
		}
		rc := cfg.redisConfig(log.With("component", "redis"))
		rc.Index = d.index // entries before keys: the index stays complete
		var src writeback.Source = tr
		if d.index != nil {
			src = deliverAfterDrain{tr, eng}
		}
		if d.redisSink, err = writeback.NewRedis(d.redis, src, rc); err != nil {
			return err
		}
	}
	if d.pool != nil {
		tr, err := eng.NewTracker()
		if err != nil {
			return err
		}
		if d.pgSink, err = writeback.NewPostgres(d.pool, tr, cfg.postgresConfig(log.With("component", "postgres"))); err != nil {
			return err
		}
	}
	return nil
}

// buildIngest makes ingest, behind the cluster's router when clustered.
func (d *Daemon) buildIngest() error {
	var handler ingest.Handler = d.eng
	if d.cfg.clustered() {
		cc, err := d.cfg.clusterConfig(d.log.With("component", "cluster"))
		if err != nil {
			return err
		}
		cc.OnChange = d.onClusterChange
		if d.redisSink != nil {
			// Messages of partitions gained from a crashed node wait for
			// their rebuild from Redis (rebuild calls RebuildDone).
			cc.RebuildHold = rebuildHold
		}
		if d.node, err = cluster.New(cc, d.eng); err != nil {
			return err
		}
		handler = d.node.Router() // forwards what other nodes own
	}
	ic := d.cfg.ingestConfig(d.log.With("component", "ingest"))
	ic.BrokerURL = d.BrokerURL()
	var err error
	d.ing, err = ingest.New(ic, handler)
	return err
}

// buildAPI makes the HTTP API with every route and binds its port.
func (d *Daemon) buildAPI() error {
	cfg, log := d.cfg, d.log
	ac := api.DefaultConfig()
	ac.Addr, ac.Token, ac.Logger = cfg.HTTPAddr, cfg.APIToken, log.With("component", "api")
	ac.Ready = d.ready
	ac.MetricSets = d.metricSets()
	var err error
	if d.api, err = api.New(ac, d.eng); err != nil {
		return err
	}
	rc := report.DefaultConfig()
	pool := d.pool
	if cfg.HistoryTable != "" {
		rc.Table = cfg.HistoryTable
	} else {
		pool = nil // no history: history and uptime answer 503
	}
	rc.Logger = log.With("component", "report")
	rep, err := report.New(pool, d.eng, rc)
	if err != nil {
		return err
	}
	rep.Mount(d.api)
	d.api.Handle("GET /v1/events", d.events.SSEHandler())
	d.api.Handle("GET /v1/cluster", http.HandlerFunc(d.serveCluster))
	dashboard.Mount(d.api)
	d.httpLn, err = d.api.Listen()
	return err
}

// metricSets lists the sets of every component for /metrics.
func (d *Daemon) metricSets() []*metrics.Set {
	sets := []*metrics.Set{d.engineMetrics, d.ing.Metrics(), d.events.Metrics()}
	if d.redisSink != nil {
		sets = append(sets, d.redisSink.Metrics())
	}
	if d.pgSink != nil {
		sets = append(sets, d.pgSink.Metrics())
	}
	if d.history != nil {
		sets = append(sets, d.history.Metrics())
	}
	if d.node != nil {
		sets = append(sets, d.node.Metrics())
	}
	if d.index != nil {
		sets = append(sets, d.index.Metrics())
	}
	return sets
}

// ready is /readyz: hydrated from Redis and subscribed to the broker.
func (d *Daemon) ready() error {
	if !d.hydrated.Load() {
		if p := d.hydrateErr.Load(); p != nil {
			return fmt.Errorf("rebuilding state from Redis: %w", *p)
		}
		return errors.New("rebuilding state from Redis")
	}
	if !d.ing.Ready() {
		return errors.New("not subscribed to the MQTT broker yet")
	}
	return nil
}

// HTTPAddr is the address the API listens on.
func (d *Daemon) HTTPAddr() string { return d.httpLn.Addr().String() }

// BrokerURL is the MQTT broker presenced reads from.
func (d *Daemon) BrokerURL() string {
	if d.broker != nil {
		return d.broker.url()
	}
	return d.cfg.MQTTURL
}

// Engine is the daemon's engine (tests and the cluster layer use it).
func (d *Daemon) Engine() *engine.Engine { return d.eng }

// Run serves until ctx ends, then shuts down: ingest stops and hands over
// what it queued, the engine delivers its last transitions, write-behind
// flushes within Config.ShutdownTimeout, the API closes. It returns nil
// after a clean shutdown, or what failed.
func (d *Daemon) Run(ctx context.Context) error {
	defer d.closeResources()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	goRun := func(name string, ctx context.Context, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil && !errors.Is(err, context.Canceled) {
				errs <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	// Each stage has its own context so that shutdown can go in order.
	engCtx, stopEngine := context.WithCancel(context.WithoutCancel(ctx))
	sinkCtx, stopSinks := context.WithCancel(context.WithoutCancel(ctx))
	apiCtx, stopAPI := context.WithCancel(context.WithoutCancel(ctx))
	defer stopEngine()
	defer stopSinks()
	defer stopAPI()

	var apiWG sync.WaitGroup
	apiWG.Add(1)
	go func() {
		defer apiWG.Done()
		if err := d.api.Serve(apiCtx, d.httpLn); err != nil {
			errs <- err
		}
	}()

	if d.node != nil {
		if err := d.node.Start(); err != nil {
			errs <- fmt.Errorf("cluster: %w", err)
		} else {
			d.settle(ctx) // hydrate only what this node owns
		}
	}
	d.hydrate(ctx)
	engineDone := make(chan struct{})
	go func() {
		defer close(engineDone)
		d.eng.Run(engCtx) // returns nil when engCtx ends
	}()
	if d.redisSink != nil {
		goRun("redis", sinkCtx, d.redisSink.Run)
	}
	if d.pgSink != nil {
		goRun("postgres", sinkCtx, d.pgSink.Run)
	}
	if d.history != nil {
		goRun("history", sinkCtx, d.history.Run)
	}
	goRun("events", sinkCtx, d.events.Run)
	if d.index != nil {
		goRun("index", sinkCtx, d.index.Run)
	}
	if err := d.ing.Start(); err != nil {
		errs <- fmt.Errorf("ingest: %w", err)
	}
	demoCtx, stopDemo := context.WithCancel(ctx)
	var demoWG sync.WaitGroup
	if d.cfg.Demo > 0 {
		dm := &demo{n: d.cfg.Demo, telemetry: demoTopic(d.cfg.TelemetryTopics), status: demoTopic(d.cfg.StatusTopics),
			timeout: d.cfg.Timeout, log: d.log.With("component", "demo"), rng: rand.New(rand.NewPCG(rand.Uint64(), 1))}
		demoWG.Add(1)
		go func() {
			defer demoWG.Done()
			if err := dm.run(demoCtx, d.BrokerURL()); err != nil {
				d.log.Error("demo stopped", "err", err)
			}
		}()
	}

	var failure error
	select {
	case <-ctx.Done():
		d.log.Info("shutting down")
	case failure = <-errs:
		d.log.Error("shutting down after a failure", "err", failure)
	}
	stopDemo()
	demoWG.Wait()
	if err := d.ing.Close(); err != nil { // hands over everything it queued
		d.log.Warn("ingest close", "err", err)
	}
	if d.node != nil { // leave, hand every device to its next owner
		if err := d.node.Close(); err != nil {
			d.log.Warn("cluster close", "err", err)
		}
	}
	stopEngine() // Run makes a last Advance and Deliver
	<-engineDone
	closeCtx, cancel := context.WithTimeout(context.Background(), d.cfg.ShutdownTimeout)
	defer cancel()
	d.closeSinks(closeCtx, stopSinks)
	stopAPI()
	apiWG.Wait()
	wg.Wait()
	close(errs)
	for err := range errs {
		if failure == nil {
			failure = err
		}
	}
	d.log.Info("stopped")
	return failure
}

// closeSinks flushes every sink, then stops their loops.
func (d *Daemon) closeSinks(ctx context.Context, stop context.CancelFunc) {
	var wg sync.WaitGroup
	closeOne := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil {
				d.log.Error("flush at shutdown incomplete", "sink", name, "err", err)
			}
		}()
	}
	if d.redisSink != nil {
		closeOne("redis", d.redisSink.Close)
	}
	if d.pgSink != nil {
		closeOne("postgres", d.pgSink.Close)
	}
	if d.history != nil {
		closeOne("history", d.history.Close)
	}
	closeOne("events", d.events.Close)
	if d.index != nil {
		closeOne("index", d.index.Close)
	}
	wg.Wait()
	stop()
}

func (d *Daemon) closeResources() {
	if d.broker != nil {
		d.broker.close()
	}
	if d.redis != nil {
		d.redis.Close()
	}
	if d.pool != nil {
		d.pool.Close()
	}
	if d.httpLn != nil {
		d.httpLn.Close()
	}
}
