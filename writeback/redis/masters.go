package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	goredis "github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/internal/lifecycle"
	"github.com/presence-dev/presence/internal/ratelog"
	"github.com/presence-dev/presence/writeback"
)

// Masters identifies the Redis servers that hold the data now: the run id
// of each master (INFO server), sorted and joined; on Redis Cluster every
// master's, on Sentinels the primary's. It changes when a master restarts
// (it may have come back without its data) and when a replica takes over
// (Redis replicates asynchronously: the writes the old master acknowledged
// last may not have reached it).
func Masters(ctx context.Context, client goredis.UniversalClient) (string, error) {
	runID := func(ctx context.Context, c goredis.Cmdable) (string, error) {
		info, err := c.Info(ctx, "server").Result()
		if err != nil {
			return "", err
		}
		for line := range strings.SplitSeq(info, "\n") {
			if v, ok := strings.CutPrefix(line, "run_id:"); ok {
				return strings.TrimSpace(v), nil
			}
		}
		return "", errors.New("INFO server has no run_id")
	}
	cc, ok := client.(*goredis.ClusterClient)
	if !ok {
		return runID(ctx, client)
	}
	var mu sync.Mutex
	var ids []string
	err := cc.ForEachMaster(ctx, func(ctx context.Context, c *goredis.Client) error {
		id, err := runID(ctx, c)
		if err != nil {
			return fmt.Errorf("%s: %w", c.Options().Addr, err)
		}
		mu.Lock()
		ids = append(ids, id)
		mu.Unlock()
		return nil
	})
	if err != nil {
		return "", err
	}
	slices.Sort(ids)
	return strings.Join(ids, ","), nil
}

// MasterWatchConfig configures a MasterWatch.
type MasterWatchConfig struct {
	// Interval between two checks. Default 1 s: a write lost in a
	// failover is written again within about that of the promotion.
	Interval time.Duration
	// NeedVersion, when set, is the oldest Redis version the writes need
	// ("7.0" for the guarded writes' PEXPIRETIME): an older server is
	// logged as an error once.
	NeedVersion string
	// Logger: nil means slog.Default().
	Logger *slog.Logger
}

// DefaultMasterWatchConfig returns the defaults documented on
// MasterWatchConfig.
func DefaultMasterWatchConfig() MasterWatchConfig {
	return MasterWatchConfig{Interval: time.Second}
}

// MasterWatch rewrites everything when the Redis masters change (Masters):
// a failover to a replica, or a master's restart, may have lost writes
// that were acknowledged, which nothing else would write again until the
// devices change. It checks every Interval; the first answer is its
// baseline, and a check that fails (a master is down) changes nothing: it
// is counted (presence_redis_masters_errors_total) and logged at most
// every 5 s. Its lifecycle is lifecycle's: Start, Close.
type MasterWatch struct {
	client  goredis.UniversalClient
	cfg     MasterWatchConfig
	rewrite func() int
	log     *slog.Logger
	lim     *ratelog.Limiter[struct{}]
	set     *metrics.Set
	changes *metrics.Counter
	errs    *metrics.Counter

	run lifecycle.Runner

	mu      sync.Mutex
	last    string // the masters of the last answer
	checked bool   // the server version was read
}

// NewMasterWatch watches client's masters and calls rewrite (the Redis
// sink's Tracker.MarkAll: it returns how many devices it listed) when they
// change. It does no I/O.
func NewMasterWatch(client goredis.UniversalClient, cfg MasterWatchConfig, rewrite func() int) (*MasterWatch, error) {
	if cfg.Interval <= 0 {
		return nil, fmt.Errorf("%w: redis: master watch Interval must be positive, got %v", writeback.ErrInvalidConfig, cfg.Interval)
	}
	if client == nil || rewrite == nil {
		return nil, fmt.Errorf("%w: redis: master watch without a client or a rewrite", writeback.ErrInvalidConfig)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	set := metrics.NewSet()
	return &MasterWatch{client: client, cfg: cfg, rewrite: rewrite, log: log, set: set,
		lim:     ratelog.New[struct{}](5*time.Second, time.Now),
		changes: set.NewCounter("presence_redis_masters_changed_total"),
		errs:    set.NewCounter("presence_redis_masters_errors_total")}, nil
}

// Metrics is the set of the watch's counters.
func (w *MasterWatch) Metrics() *metrics.Set { return w.set }

// Start begins the checks.
func (w *MasterWatch) Start(ctx context.Context) error {
	return w.run.Start(ctx, func(ctx context.Context) {
		lifecycle.Every(ctx, w.cfg.Interval, func() { w.check(ctx) })
	})
}

// Close stops them.
func (w *MasterWatch) Close(ctx context.Context) error { return w.run.Close(ctx, nil) }

// Known returns the masters of the last answer ("" before the first).
func (w *MasterWatch) Known() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

// check asks for the masters once and rewrites everything when they
// changed since the last answer.
func (w *MasterWatch) check(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.Interval+time.Second)
	defer cancel()
	now, err := Masters(ctx, w.client)
	if err != nil {
		w.errs.Inc()
		if ok, n := w.lim.Allow(struct{}{}); ok {
			w.log.Warn("redis: cannot ask the masters who they are (INFO server); a failover is noticed once they answer",
				"error", err, "suppressed", n)
		}
		return
	}
	if w.cfg.NeedVersion != "" && !w.checked {
		if v, err := serverVersion(ctx, w.client); err == nil {
			w.checked = true
			if versionLess(v, w.cfg.NeedVersion) {
				w.log.Error("redis: the server is older than the writes need: every guarded write fails (PEXPIRETIME); upgrade Redis",
					"version", v, "need", w.cfg.NeedVersion)
			}
		}
	}
	w.mu.Lock()
	prev := w.last
	w.last = now
	w.mu.Unlock()
	if prev == "" || prev == now {
		return
	}
	w.changes.Inc()
	n := w.rewrite()
	w.log.Warn("redis: the masters changed (a failover, or a restart): writing every device's keys again, since the last writes may be lost",
		"devices", n)
}

// serverVersion is redis_version of INFO server (of some master on a
// Cluster).
func serverVersion(ctx context.Context, c goredis.UniversalClient) (string, error) {
	info, err := c.Info(ctx, "server").Result()
	if err != nil {
		return "", err
	}
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(line, "redis_version:"); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", errors.New("INFO server has no redis_version")
}

// versionLess compares dotted versions numerically ("6.2.14" < "7.0").
func versionLess(a, b string) bool {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := range max(len(as), len(bs)) {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			return x < y
		}
	}
	return false
}
