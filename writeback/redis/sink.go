package writeback

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/wire"
)

// RedisConfig configures the Redis state sink. The key layout is a contract
// with existing consumers (DESIGN.md): {KeyPrefix}status:{id} holds
// "online" or "offline", {KeyPrefix}lastseen:{id} holds the last message time
// in wire.TimeLayout, both with TTL.
type RedisConfig struct {
	// KeyPrefix is put before "status:{id}" and "lastseen:{id}". Default
	// "device:" (the seed's layout); change it only together with every
	// consumer.
	KeyPrefix string
	// TTL of both keys, whole seconds (SET ... EX), at least 1 s. Default
	// 24 h as in the seed. Every write refreshes it, so a device that
	// neither talks nor changes status for a TTL disappears from Redis;
	// longer keeps more memory for dead devices.
	TTL time.Duration
	// Guarded makes every write conditional, for a cluster where a stale
	// owner (paused, or cut off from its peers) may still flush: a device's
	// keys are written only if the stored last-seen time is not newer than
	// the one written, and at the same time "online" never replaces
	// "offline" (a Lua script per device comparing the fixed-width
	// timestamps), so last-seen never goes backwards and the newest
	// information wins. Costs a script call per device instead of two SETs.
	// Needs both keys of a device in one slot: not on Redis Cluster (whose
	// client is refused with this option).
	Guarded bool
	// Index, when set, is written before every batch of keys (its pending
	// ids, in one pipeline), and a batch is not written while the index
	// cannot be: a device's keys never reach Redis before its index entry
	// does, so a complete index stays complete across a kill -9. The
	// index learns of a device from its online transition: the Source must
	// have the engine deliver the transitions of what it drained before
	// Drain returns (the daemon's does), or a device drained within one
	// engine tick of coming online can be written first.
	Index *RedisIndex
	// Flush is the write-behind loop. BatchSize is devices per pipeline (two
	// SETs each). Defaults: Interval 250 ms, FlushAt 20000, BatchSize 1000,
	// Concurrency 2 (measured on 2 cores, where the single-threaded Redis
	// is the bottleneck: larger pipelines or more of them did not help, a
	// Lua script per batch was not faster).
	Flush FlushConfig
}

// DefaultRedisConfig returns the defaults documented on RedisConfig.
func DefaultRedisConfig() RedisConfig {
	return RedisConfig{
		KeyPrefix: "device:",
		TTL:       24 * time.Hour,
		Flush: FlushConfig{
			Interval:     250 * time.Millisecond,
			FlushAt:      20000,
			BatchSize:    1000,
			Concurrency:  2,
			MinBackoff:   100 * time.Millisecond,
			MaxBackoff:   10 * time.Second,
			WriteTimeout: 10 * time.Second,
		},
	}
}

// Validate reports the first invalid field, wrapping ErrInvalidConfig.
func (c RedisConfig) Validate() error {
	if c.TTL < time.Second || c.TTL%time.Second != 0 {
		return fmt.Errorf("%w: redis: TTL must be whole seconds >= 1s, got %v", ErrInvalidConfig, c.TTL)
	}
	if !utf8.ValidString(c.KeyPrefix) {
		return fmt.Errorf("%w: redis: KeyPrefix is not valid UTF-8", ErrInvalidConfig)
	}
	return c.Flush.validate("redis")
}

// Redis keeps Redis in step with the engine: each flush drains the dirty
// devices from the Source and writes their current status and last-seen
// time in pipelines of Flush.BatchSize devices. Against Redis Cluster the
// client splits each pipeline by slot; keys are not hash-tagged because
// consumers read them as they are.
type Redis struct {
	client redis.UniversalClient
	cfg    RedisConfig
	f      *flusher
	ttl    time.Duration
}

// NewRedis builds a Redis sink. It does no I/O; Run starts the flush loop.
// The client is the caller's: Close does not close it.
func NewRedis(client redis.UniversalClient, src Source, cfg RedisConfig) (*Redis, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if client == nil || src == nil {
		return nil, fmt.Errorf("%w: redis: nil client or source", ErrInvalidConfig)
	}
	if _, ok := client.(*redis.ClusterClient); ok && cfg.Guarded {
		return nil, fmt.Errorf("%w: redis: Guarded writes need both keys of a device in one slot, not Redis Cluster", ErrInvalidConfig)
	}
	r := &Redis{client: client, cfg: cfg, ttl: cfg.TTL}
	r.f = newFlusher("redis", "keys", src, cfg.Flush, r)
	return r, nil
}

// Run flushes every Flush.Interval (earlier once Flush.FlushAt devices are
// dirty) until ctx is done or Close is called. It returns nil then, or
// ErrClosed if the sink was already closed. Failed flushes are retried with
// backoff; Run does not return on store errors.
func (r *Redis) Run(ctx context.Context) error { return r.f.run(ctx) }

// Flush writes every device that is dirty now and returns the first error.
// Devices of failed batches are dirty again. Safe to call concurrently with
// Run (flushes are serialized).
func (r *Redis) Flush(ctx context.Context) error { return r.f.flush(ctx) }

// Close stops Run, waits for it, and flushes what is still dirty, retrying
// until ctx is done. It returns an *UnflushedError with the count if
// devices remain unwritten. Idempotent. Pass a ctx with a deadline: with
// the store down and no deadline Close retries forever.
func (r *Redis) Close(ctx context.Context) error { return r.f.close(ctx) }

// Metrics returns the set holding this sink's metrics.
func (r *Redis) Metrics() *metrics.Set { return r.f.m.set }

// StatusKey returns the status key of a device.
func (r *Redis) StatusKey(id string) string { return r.cfg.KeyPrefix + "status:" + id }

// LastSeenKey returns the last-seen key of a device.
func (r *Redis) LastSeenKey(id string) string { return r.cfg.KeyPrefix + "lastseen:" + id }

// guardedSet writes a device's status and last-seen keys unless the stored
// last-seen is newer (the format is fixed-width UTC, so strings compare as
// times), or is the same with status offline while "online" is written: at
// one last-seen time offline is always the later state (a device comes
// back online only with a newer message), so a stale owner cannot undo a
// timeout or a Last Will. KEYS: status, lastseen; ARGV: status, lastseen,
// ttl seconds.
var guardedSet = redis.NewScript(`
local old = redis.call('GET', KEYS[2])
if old then
  if old > ARGV[2] then return 0 end
  if old == ARGV[2] and ARGV[1] == 'online' and redis.call('GET', KEYS[1]) == 'offline' then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 1`)

func (r *Redis) writeBatch(ctx context.Context, states []engine.DeviceState) (writeResult, error) {
	if r.cfg.Index != nil {
		if err := r.cfg.Index.Flush(ctx); err != nil {
			return writeResult{}, err
		}
	}
	if r.cfg.Guarded {
		return r.writeGuarded(ctx, states)
	}
	var res writeResult
	pipe := r.client.Pipeline()
	var buf [32]byte
	for i := range states {
		s := &states[i]
		if s.Status != engine.StatusOnline && s.Status != engine.StatusOffline {
			res.skipped++
			continue
		}
		pipe.Set(ctx, r.StatusKey(s.ID), s.Status.String(), r.ttl)
		res.units++
		if !s.LastSeen.IsZero() {
			pipe.Set(ctx, r.LastSeenKey(s.ID), string(wire.AppendTime(buf[:0], s.LastSeen)), r.ttl)
			res.units++
		}
	}
	if res.units == 0 {
		return res, nil
	}
	cmds, err := pipe.Exec(ctx)
	if err != nil {
		// Exec returns the first failed command's error; the pipeline may
		// be partly applied, which is fine: the batch is rewritten whole.
		return writeResult{}, fmt.Errorf("redis pipeline of %d commands: %w", len(cmds), err)
	}
	return res, nil
}

// writeGuarded is writeBatch with the guardedSet script, one call per
// device in one pipeline. A device without a last-seen time is written
// unguarded (status only).
func (r *Redis) writeGuarded(ctx context.Context, states []engine.DeviceState) (writeResult, error) {
	var res writeResult
	ttl := int64(r.ttl / time.Second)
	run := func() error {
		pipe := r.client.Pipeline()
		for i := range states {
			s := &states[i]
			if s.Status != engine.StatusOnline && s.Status != engine.StatusOffline {
				continue
			}
			if s.LastSeen.IsZero() {
				pipe.Set(ctx, r.StatusKey(s.ID), s.Status.String(), r.ttl)
				continue
			}
			guardedSet.EvalSha(ctx, pipe, []string{r.StatusKey(s.ID), r.LastSeenKey(s.ID)},
				s.Status.String(), wire.FormatTime(s.LastSeen), ttl)
		}
		_, err := pipe.Exec(ctx)
		return err
	}
	err := run()
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") { // first use, or Redis restarted
		if err = guardedSet.Load(ctx, r.client).Err(); err == nil {
			err = run()
		}
	}
	if err != nil {
		return writeResult{}, fmt.Errorf("redis guarded pipeline: %w", err)
	}
	for i := range states {
		switch {
		case states[i].Status != engine.StatusOnline && states[i].Status != engine.StatusOffline:
			res.skipped++
		case states[i].LastSeen.IsZero():
			res.units++
		default:
			res.units += 2
		}
	}
	return res, nil
}

// ReadStates reads the stored state of the given devices (two MGETs). A
// device without a status key has Status StatusUnknown; one without a
// last-seen key a zero LastSeen. Used by tests and tools; the daemon's
// restart recovery can use Scan.
func (r *Redis) ReadStates(ctx context.Context, ids []string) ([]engine.DeviceState, error) {
	out := make([]engine.DeviceState, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	keys := make([]string, 0, 2*len(ids))
	for _, id := range ids {
		keys = append(keys, r.StatusKey(id))
	}
	for _, id := range ids {
		keys = append(keys, r.LastSeenKey(id))
	}
	// One MGET per kind and per chunk keeps each reply small; MGET across
	// slots fails on Cluster, so read key by key there.
	vals := make([]any, len(keys))
	if _, ok := r.client.(*redis.ClusterClient); ok {
		pipe := r.client.Pipeline()
		cmds := make([]*redis.StringCmd, len(keys))
		for i, k := range keys {
			cmds[i] = pipe.Get(ctx, k)
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("redis read: %w", err)
		}
		for i, c := range cmds {
			if v, err := c.Result(); err == nil {
				vals[i] = v
			}
		}
	} else {
		// One round trip: the MGETs of every chunk in one pipeline.
		const chunk = 1000
		pipe := r.client.Pipeline()
		cmds := make([]*redis.SliceCmd, 0, (len(keys)+chunk-1)/chunk)
		for lo := 0; lo < len(keys); lo += chunk {
			cmds = append(cmds, pipe.MGet(ctx, keys[lo:min(lo+chunk, len(keys))]...))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, fmt.Errorf("redis read: %w", err)
		}
		for i, c := range cmds {
			copy(vals[i*chunk:], c.Val())
		}
	}
	for i, id := range ids {
		out[i].ID = id
		if s, ok := vals[i].(string); ok {
			out[i].Status = parseStatus(s)
		}
		if s, ok := vals[len(ids)+i].(string); ok {
			t, err := wire.ParseTime(s)
			if err != nil {
				return nil, fmt.Errorf("redis read %s: %w", keys[len(ids)+i], err)
			}
			out[i].LastSeen = t
		}
	}
	return out, nil
}

// Scan calls fn with the stored state of every device that has a status
// key under KeyPrefix, in no particular order, for restart recovery. It
// walks the keyspace with SCAN (on Cluster: every master). fn's error stops
// the scan and is returned.
func (r *Redis) Scan(ctx context.Context, fn func(engine.DeviceState) error) error {
	statusPrefix := r.cfg.KeyPrefix + "status:"
	match := escapeGlob(statusPrefix) + "*"
	scanOne := func(ctx context.Context, c redis.UniversalClient) error {
		return r.scanNode(ctx, c, match, statusPrefix, fn)
	}
	if cc, ok := r.client.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			return scanOne(ctx, c)
		})
	}
	return scanOne(ctx, r.client)
}

// Restart recovery reads a million devices in seconds by overlapping the
// round trips: one goroutine walks the keyspace, scanReaders read the
// states of the ids it found (one pipelined round trip per batch), and the
// caller's goroutine hands them to fn, in order of arrival.
const (
	scanBatch   = 5000 // ids per SCAN hint and per read
	scanReaders = 2
)

// scanNode is Scan on one node.
func (r *Redis) scanNode(ctx context.Context, c redis.UniversalClient, match, statusPrefix string, fn func(engine.DeviceState) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	batches := make(chan []string, scanReaders)
	results := make(chan []engine.DeviceState, scanReaders)

	go func() {
		defer close(batches)
		it := c.Scan(ctx, 0, match, scanBatch).Iterator()
		ids := make([]string, 0, scanBatch)
		for it.Next(ctx) {
			ids = append(ids, strings.TrimPrefix(it.Val(), statusPrefix))
			if len(ids) == scanBatch {
				select {
				case batches <- ids:
				case <-ctx.Done():
					return
				}
				ids = make([]string, 0, scanBatch)
			}
		}
		if err := it.Err(); err != nil {
			cancel(fmt.Errorf("redis scan: %w", err))
			return
		}
		if len(ids) > 0 {
			select {
			case batches <- ids:
			case <-ctx.Done():
			}
		}
	}()
	var wg sync.WaitGroup
	for range scanReaders {
		wg.Go(func() {
			for ids := range batches {
				states, err := r.ReadStates(ctx, ids)
				if err != nil {
					cancel(err)
					return
				}
				select {
				case results <- states:
				case <-ctx.Done():
					return
				}
			}
		})
	}
	go func() {
		wg.Wait()
		close(results)
	}()
	for states := range results {
		for _, s := range states {
			if s.Status == engine.StatusUnknown {
				continue // expired between SCAN and MGET
			}
			if err := fn(s); err != nil {
				cancel(err)
				for range results { // let the readers finish
				}
				return err
			}
		}
	}
	return context.Cause(ctx)
}

func escapeGlob(s string) string {
	var b strings.Builder
	for _, c := range s {
		switch c {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func parseStatus(s string) engine.Status {
	switch s {
	case "online":
		return engine.StatusOnline
	case "offline":
		return engine.StatusOffline
	}
	return engine.StatusUnknown
}

// RedisOptionsFromEnv builds client options from the environment, as the
// seed did: REDIS_URL wins when set (redis://[user:password@]host:port/db,
// rediss:// for TLS, parsed by redis.ParseURL); otherwise REDIS_HOST
// (default localhost), REDIS_PORT (6379), REDIS_DB (0), REDIS_USERNAME,
// REDIS_PASSWORD, and REDIS_TLS ("1"/"true") build it. getenv is usually
// os.Getenv.
func RedisOptionsFromEnv(getenv func(string) string) (*redis.Options, error) {
	if u := strings.TrimSpace(getenv("REDIS_URL")); u != "" {
		opts, err := redis.ParseURL(u)
		if err != nil {
			return nil, fmt.Errorf("writeback: REDIS_URL: %w", err)
		}
		return opts, nil
	}
	host := strings.TrimSpace(getenv("REDIS_HOST"))
	if host == "" {
		host = "localhost"
	}
	port := strings.TrimSpace(getenv("REDIS_PORT"))
	if port == "" {
		port = "6379"
	}
	if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
		return nil, fmt.Errorf("writeback: REDIS_PORT %q is not a port number", port)
	}
	db := 0
	if s := strings.TrimSpace(getenv("REDIS_DB")); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("writeback: REDIS_DB %q is not a database number", s)
		}
		db = n
	}
	opts := &redis.Options{
		Addr:     net.JoinHostPort(host, port),
		DB:       db,
		Username: getenv("REDIS_USERNAME"),
		Password: getenv("REDIS_PASSWORD"),
	}
	if tlsOn, err := parseBoolEnv(getenv("REDIS_TLS")); err != nil {
		return nil, fmt.Errorf("writeback: REDIS_TLS: %w", err)
	} else if tlsOn {
		// Same as what ParseURL does for rediss://.
		u, err := redis.ParseURL("rediss://" + opts.Addr)
		if err != nil {
			return nil, fmt.Errorf("writeback: REDIS_TLS: %w", err)
		}
		opts.TLSConfig = u.TLSConfig
	}
	return opts, nil
}

func parseBoolEnv(s string) (bool, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return false, nil
	}
	switch strings.ToLower(s) {
	case "yes", "on":
		return true, nil
	case "no", "off":
		return false, nil
	}
	return strconv.ParseBool(s)
}
