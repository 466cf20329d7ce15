package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	goredis "github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/internal/lifecycle"
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

// MasterWatch rewrites everything when the Redis masters change (Masters):
// a failover to a replica, or a master's restart, may have lost writes
// that were acknowledged, which nothing else would write again until the
// devices change. It checks every Interval; the first answer is its
// baseline, and a check that fails (a master is down) changes nothing.
// Its lifecycle is lifecycle's: Start, Close.
type MasterWatch struct {
	client   goredis.UniversalClient
	interval time.Duration
	rewrite  func() int
	log      *slog.Logger
	set      *metrics.Set
	changes  *metrics.Counter

	run  lifecycle.Runner
	last string
}

// MasterWatchInterval is how often a MasterWatch asks by default: a lost
// write is rewritten within about this long after the failover.
const MasterWatchInterval = time.Second

// NewMasterWatch watches client's masters every interval and calls
// rewrite (the Redis sink's Tracker.MarkAll: it returns how many devices
// it listed) when they change; the change is counted in set as
// presence_redis_masters_changed_total (Metrics).
func NewMasterWatch(client goredis.UniversalClient, interval time.Duration, rewrite func() int, log *slog.Logger) *MasterWatch {
	if log == nil {
		log = slog.Default()
	}
	set := metrics.NewSet()
	return &MasterWatch{client: client, interval: interval, rewrite: rewrite, log: log, set: set,
		changes: set.NewCounter("presence_redis_masters_changed_total")}
}

// Metrics is the set of the watch's counter.
func (w *MasterWatch) Metrics() *metrics.Set { return w.set }

// Start begins the checks.
func (w *MasterWatch) Start(ctx context.Context) error {
	return w.run.Start(ctx, func(ctx context.Context) {
		lifecycle.Every(ctx, w.interval, func() { w.check(ctx) })
	})
}

// Close stops them.
func (w *MasterWatch) Close(ctx context.Context) error { return w.run.Close(ctx, nil) }

// check asks for the masters once and rewrites everything when they
// changed since the last answer.
func (w *MasterWatch) check(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, w.interval+time.Second)
	defer cancel()
	now, err := Masters(ctx, w.client)
	if err != nil || now == "" {
		return // a master is down: the failover is not over
	}
	prev := w.last
	w.last = now
	if prev == "" || prev == now {
		return
	}
	w.changes.Inc()
	n := w.rewrite()
	w.log.Warn("redis: the masters changed (a failover, or a restart): writing every device's keys again, since the last writes may be lost",
		"devices", n)
}
