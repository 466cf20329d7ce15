package redis

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/VictoriaMetrics/metrics"
	goredis "github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/wire"
	"github.com/presence-dev/presence/writeback"
)

// Config configures the Redis state sink. The key layout is a contract
// with existing consumers (docs/STORAGE.md): {KeyPrefix}status:{id} holds
// "online" or "offline", {KeyPrefix}lastseen:{id} holds the last message
// time in wire.TimeLayout, both with TTL.
type Config struct {
	// KeyPrefix is put before "status:{id}" and "lastseen:{id}". Default
	// "device:" (the seed's layout); change it only together with every
	// consumer.
	KeyPrefix string
	// TTL of both keys, whole seconds (SET ... EX), at least 1 s. Default
	// 24 h as in the seed. Every write of a key refreshes it, and a status
	// written alone expires with its last-seen key (statusOnlyTTL), so a
	// device that does not talk for a TTL disappears from Redis; longer
	// keeps more memory for dead devices.
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
	// IndexKeyOf, when set, names the device index's set holding id
	// (recovery.Index.KeyOf). A device new to the engine
	// (engine.DeviceState.New) is added to it before its keys are written
	// (first in their pipeline; on Redis Cluster, whose client sends a
	// pipeline's parts to the nodes at once, in a pipeline before theirs),
	// so that a restart that reads the index finds every device whose keys
	// are in Redis, without the key writer waiting for anything else; a
	// decommissioned device's removal takes it out.
	IndexKeyOf func(id string) string
	// Flush is the write-behind loop. BatchSize is devices per pipeline (one
	// to three commands each: see writeBatch). Defaults: Interval 250 ms,
	// FlushAt 20000, BatchSize 1000, Concurrency 4. Redis is
	// single-threaded and serves its connections in turn, so the keys'
	// share of it, beside the event Stream's and Pub/Sub's connection
	// each, grows with their connections: with 4 a 1M mass expiry's keys
	// took 0.9x a plain 4-connection writer's time in the same run, with 2
	// 1.35x (BENCHMARKS.md, mass expiry).
	Flush writeback.FlushConfig
}

// DefaultConfig returns the defaults documented on Config.
func DefaultConfig() Config {
	return Config{
		KeyPrefix: "device:",
		TTL:       24 * time.Hour,
		Flush: writeback.FlushConfig{
			Interval:     250 * time.Millisecond,
			FlushAt:      20000,
			BatchSize:    1000,
			Concurrency:  4,
			MinBackoff:   100 * time.Millisecond,
			MaxBackoff:   10 * time.Second,
			WriteTimeout: 10 * time.Second,
		},
	}
}

// Validate reports the first invalid field, wrapping
// writeback.ErrInvalidConfig.
func (c Config) Validate() error {
	if c.TTL < time.Second || c.TTL%time.Second != 0 {
		return fmt.Errorf("%w: redis: TTL (-redis-ttl) must be whole seconds >= 1s, got %v", writeback.ErrInvalidConfig, c.TTL)
	}
	if !utf8.ValidString(c.KeyPrefix) {
		return fmt.Errorf("%w: redis: KeyPrefix (-redis-prefix) is not valid UTF-8", writeback.ErrInvalidConfig)
	}
	return c.Flush.Validate("redis")
}

// Sink keeps Redis in step with the engine: each flush drains the dirty
// devices from the Source and writes their current status and last-seen
// time in pipelines of Flush.BatchSize devices. Against Redis Cluster the
// client splits each pipeline by slot; keys are not hash-tagged because
// consumers read them as they are.
//
// Its lifecycle, Flush and Metrics are the embedded writeback.Flusher's.
type Sink struct {
	*writeback.Flusher
	client  goredis.UniversalClient
	cfg     Config
	ttl     time.Duration
	ttlArg  any              // TTL in seconds, a SET ... EX argument
	indexed *metrics.Counter // ids added to the device index
	cluster bool             // a Redis Cluster client: index entries in a pipeline of their own
}

// New builds a Redis sink. It does no I/O; Start starts the flush loop.
// The client is the caller's: Close does not close it.
func New(client goredis.UniversalClient, src writeback.Source, cfg Config) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if client == nil || src == nil {
		return nil, fmt.Errorf("%w: redis: nil client or source", writeback.ErrInvalidConfig)
	}
	if _, ok := client.(*goredis.ClusterClient); ok && cfg.Guarded {
		return nil, fmt.Errorf("%w: redis: Guarded writes need both keys of a device in one slot, not Redis Cluster", writeback.ErrInvalidConfig)
	}
	r := &Sink{client: client, cfg: cfg, ttl: cfg.TTL, ttlArg: strconv.FormatInt(int64(cfg.TTL/time.Second), 10)}
	r.Flusher = writeback.NewFlusher("redis", "keys", src, cfg.Flush, r.writeBatch)
	r.indexed = r.Metrics().NewCounter("presence_index_ids_written_total")
	_, r.cluster = client.(*goredis.ClusterClient)
	return r, nil
}

// StatusKey returns the status key of a device.
func (r *Sink) StatusKey(id string) string { return r.cfg.KeyPrefix + statusNS + id }

// LastSeenKey returns the last-seen key of a device.
func (r *Sink) LastSeenKey(id string) string { return r.cfg.KeyPrefix + lastSeenNS + id }

// TimeoutsKey is the hash of the devices' own timeouts (engine.SetTimeout,
// PUT /v1/devices/{id}/timeout): field the device id, value the timeout in
// seconds. Outside the device namespaces, so no device key can be it.
func (r *Sink) TimeoutsKey() string { return r.cfg.TimeoutsKey() }

// TimeoutsKey is the overrides' hash of a Sink with this Config.
func (c Config) TimeoutsKey() string { return c.KeyPrefix + timeoutsKey }

// The device key namespaces, after KeyPrefix, and the overrides' hash.
const (
	statusNS    = "status:"
	lastSeenNS  = "lastseen:"
	timeoutsKey = "timeouts"
)

// SetTimeoutOverride stores device id's own timeout d in TimeoutsKey, or
// deletes it when d is 0, at once rather than write-behind: the API
// acknowledges an override only once it is stored, and restart recovery
// (ReadStates) and a cluster rebuild read it back.
func (r *Sink) SetTimeoutOverride(ctx context.Context, id string, d time.Duration) error {
	var err error
	if d == 0 {
		err = r.client.HDel(ctx, r.TimeoutsKey(), id).Err()
	} else {
		err = r.client.HSet(ctx, r.TimeoutsKey(), id, strconv.FormatFloat(d.Seconds(), 'f', -1, 64)).Err()
	}
	if err != nil {
		return fmt.Errorf("redis: timeout override of %s: %w", wire.Quote(id, 64), err)
	}
	return nil
}

// queueRemoval adds to pipe what deletes a decommissioned device: its two
// keys (one DEL each: they may be in different Cluster slots), its own
// timeout and its index entry. It returns the commands queued.
func (r *Sink) queueRemoval(ctx context.Context, pipe goredis.Pipeliner, id string) int {
	pipe.Del(ctx, r.StatusKey(id))
	pipe.Del(ctx, r.LastSeenKey(id))
	pipe.HDel(ctx, r.TimeoutsKey(), id)
	if r.cfg.IndexKeyOf != nil {
		pipe.SRem(ctx, r.cfg.IndexKeyOf(id), id)
	}
	return r.removalUnits()
}

// removalUnits is how many commands queueRemoval queues.
func (r *Sink) removalUnits() int {
	if r.cfg.IndexKeyOf == nil {
		return 3
	}
	return 4
}

// DeviceNamespaces returns the prefixes of the device keys: any key that
// starts with one of them is some device's (a device id may be any
// printable string), so no other key may.
func (c Config) DeviceNamespaces() []string {
	return []string{c.KeyPrefix + statusNS, c.KeyPrefix + lastSeenNS}
}

// guardedSet writes a device's status and last-seen keys unless the stored
// last-seen is newer (the format is fixed-width UTC, so strings compare as
// times), or is the same with status offline while "online" is written: at
// one last-seen time offline is always the later state (a device comes
// back online only with a newer message), so a stale owner cannot undo a
// timeout or a Last Will. KEYS: status, lastseen; ARGV: status, lastseen,
// ttl seconds.
var guardedSet = goredis.NewScript(`
local old = redis.call('GET', KEYS[2])
if old then
  if old > ARGV[2] then return 0 end
  if old == ARGV[2] and ARGV[1] == 'online' and redis.call('GET', KEYS[1]) == 'offline' then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 1`)

// writeBatch writes one batch in one pipeline. A device takes one command
// when only its status changed (engine.DeviceState.StatusOnly: a timeout,
// a Last Will): its status key, expiring with its last-seen key
// (statusOnlyTTL); two when its last-seen time changed too, and a third,
// its index entry, when it is new to the engine: before its keys, in the
// pipeline on one Redis, in a pipeline of its own first on a Cluster
// (whose client sends each node's part of a pipeline at the same time).
//
// It allocates per batch rather than per device where go-redis lets it:
// the key names and values are appended to one buffer made one string,
// whose substrings are the arguments, and the arguments of every command
// are slices of one array (a pooled scratch: Concurrency workers call it
// at once).
func (r *Sink) writeBatch(ctx context.Context, states []engine.DeviceState) (writeback.WriteResult, error) {
	if r.cfg.Guarded {
		return r.writeGuarded(ctx, states)
	}
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	sc.reset()
	var res writeback.WriteResult
	now := time.Now()
	ops := sc.ops
	for i := range states {
		s := &states[i]
		op := uint8(0)
		switch {
		case s.Removed:
			op = opRemove
		case s.Status != engine.StatusOnline && s.Status != engine.StatusOffline:
			res.Skipped++
		default:
			op = opStatus
			if s.New && r.cfg.IndexKeyOf != nil {
				op |= opIndex
				sc.add(r.cfg.IndexKeyOf(s.ID))
			}
			sc.add(r.cfg.KeyPrefix, statusNS, s.ID)
			switch left := r.statusOnlyTTL(s, now); {
			case left > 0:
				op |= opStatusPX
				sc.buf = strconv.AppendInt(sc.buf, left.Milliseconds(), 10)
				sc.ends = append(sc.ends, len(sc.buf))
			case !s.LastSeen.IsZero():
				op |= opLastSeen
				sc.add(r.cfg.KeyPrefix, lastSeenNS, s.ID)
				sc.buf = wire.AppendTime(sc.buf, s.LastSeen)
				sc.ends = append(sc.ends, len(sc.buf))
			}
		}
		ops = append(ops, op)
	}
	sc.ops = ops
	// The arguments: the batch's strings as substrings of one, passed by
	// pointer (boxing a pointer allocates nothing), and typed commands
	// (their replies are read without boxing).
	all := string(sc.buf)
	strs := sc.strings(all)
	k := 0
	next := func() *string {
		k++
		return &strs[k-1]
	}
	pipe := r.client.Pipeline()
	ipipe := pipe // the index entries'
	if r.cluster {
		ipipe = r.client.Pipeline()
	}
	args := sc.args
	indexed := 0
	for i, op := range ops {
		s := &states[i]
		if op&opRemove != 0 {
			res.Units += r.queueRemoval(ctx, pipe, s.ID)
			continue
		}
		if op&opIndex != 0 {
			start := len(args)
			args = append(args, "sadd", next(), s.ID)
			_ = ipipe.Process(ctx, goredis.NewIntCmd(ctx, args[start:len(args):len(args)]...))
			indexed++
		}
		if op&opStatus != 0 {
			start := len(args)
			key := next()
			if op&opStatusPX != 0 {
				args = append(args, "set", key, statusArg(s.Status), "px", next())
			} else {
				args = append(args, "set", key, statusArg(s.Status), "ex", r.ttlArg)
			}
			_ = pipe.Process(ctx, goredis.NewStatusCmd(ctx, args[start:len(args):len(args)]...))
			res.Units++
		}
		if op&opLastSeen != 0 {
			start := len(args)
			args = append(args, "set", next(), next(), "ex", r.ttlArg)
			_ = pipe.Process(ctx, goredis.NewStatusCmd(ctx, args[start:len(args):len(args)]...))
			res.Units++
		}
	}
	defer func() {
		clear(args) // pin no string of this batch in the pool
		sc.args = args[:0]
		clear(strs)
	}()
	if res.Units == 0 {
		return res, nil
	}
	if ipipe != pipe && indexed > 0 {
		if _, err := ipipe.Exec(ctx); err != nil {
			return writeback.WriteResult{}, fmt.Errorf("redis device index: %w", err)
		}
	}
	cmds, err := pipe.Exec(ctx)
	if err != nil {
		// Exec returns the first failed command's error; the pipeline may
		// be partly applied, which is fine: the batch is rewritten whole.
		return writeback.WriteResult{}, fmt.Errorf("redis pipeline of %d commands: %w", len(cmds), err)
	}
	r.indexed.Add(indexed)
	return res, nil
}

// What writeBatch does for one device.
const (
	opStatus   = 1 << iota // SET its status key
	opStatusPX             // with the expiry of its last-seen key (statusOnlyTTL), not the TTL
	opLastSeen             // SET its last-seen key
	opIndex                // SADD it to its index set, first
	opRemove               // delete it (queueRemoval)
)

// minStatusOnlyTTL: a status written alone must outlive its write by this
// much, or both keys are written (statusOnlyTTL).
const minStatusOnlyTTL = time.Minute

// statusOnlyTTL is how long the status key of s may live when it is
// written alone (s.StatusOnly: its last-seen key holds s.LastSeen, written
// with it at about that time): until the last-seen key expires, at
// LastSeen + TTL, so that the two keys expire together and a status never
// outlives its last-seen time. 0 when both keys are to be written: the
// state is not status-only, has no last-seen time, or the last-seen key
// has (nearly) expired (a timeout or a Last Will longer than the TTL).
func (r *Sink) statusOnlyTTL(s *engine.DeviceState, now time.Time) time.Duration {
	if !s.StatusOnly || s.LastSeen.IsZero() {
		return 0
	}
	if left := s.LastSeen.Add(r.ttl).Sub(now); left >= minStatusOnlyTTL {
		return left
	}
	return 0
}

// The status values as command arguments, boxed once.
var (
	argOnline  any = engine.StatusOnline.String()
	argOffline any = engine.StatusOffline.String()
)

func statusArg(s engine.Status) any {
	if s == engine.StatusOnline {
		return argOnline
	}
	return argOffline
}

// scratch is writeBatch's reusable memory.
type scratch struct {
	buf  []byte   // the batch's key names and values, back to back
	ends []int    // where each of them ends in buf
	strs []string // the same, as substrings of one string
	ops  []uint8  // op bits of each device
	args []any    // the commands' arguments
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

func (sc *scratch) reset() {
	sc.buf, sc.ends, sc.ops = sc.buf[:0], sc.ends[:0], sc.ops[:0]
	if cap(sc.args) == 0 {
		sc.args = make([]any, 0, 13*1024) // grows to the batch once
	}
}

// strings returns the strings add appended, as substrings of all (buf made
// one string), in a slice that is not reallocated until the next batch.
func (sc *scratch) strings(all string) []string {
	sc.strs = slices.Grow(sc.strs[:0], len(sc.ends))
	prev := 0
	for _, end := range sc.ends {
		sc.strs = append(sc.strs, all[prev:end])
		prev = end
	}
	return sc.strs
}

// add appends the concatenation of parts to buf as one string.
func (sc *scratch) add(parts ...string) {
	for _, p := range parts {
		sc.buf = append(sc.buf, p...)
	}
	sc.ends = append(sc.ends, len(sc.buf))
}

// queueIndex adds to pipe the index entry of a device new to the engine,
// and returns how many it queued (0 or 1).
func (r *Sink) queueIndex(ctx context.Context, pipe goredis.Pipeliner, s *engine.DeviceState) int {
	if !s.New || r.cfg.IndexKeyOf == nil {
		return 0
	}
	pipe.SAdd(ctx, r.cfg.IndexKeyOf(s.ID), s.ID)
	return 1
}

// writeGuarded is writeBatch with the guardedSet script, one call per
// device in one pipeline (after its index entry, as there). A device
// without a last-seen time is written unguarded (status only).
func (r *Sink) writeGuarded(ctx context.Context, states []engine.DeviceState) (writeback.WriteResult, error) {
	var res writeback.WriteResult
	ttl := int64(r.ttl / time.Second)
	indexed := 0
	run := func() error {
		indexed = 0
		pipe := r.client.Pipeline()
		for i := range states {
			s := &states[i]
			if s.Removed {
				r.queueRemoval(ctx, pipe, s.ID)
				continue
			}
			if s.Status != engine.StatusOnline && s.Status != engine.StatusOffline {
				continue
			}
			indexed += r.queueIndex(ctx, pipe, s)
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
	if err != nil && goredis.HasErrorPrefix(err, "NOSCRIPT") { // first use, or Redis restarted
		if err = guardedSet.Load(ctx, r.client).Err(); err == nil {
			err = run()
		}
	}
	if err != nil {
		return writeback.WriteResult{}, fmt.Errorf("redis guarded pipeline: %w", err)
	}
	r.indexed.Add(indexed)
	for i := range states {
		switch {
		case states[i].Removed:
			res.Units += r.removalUnits()
		case states[i].Status != engine.StatusOnline && states[i].Status != engine.StatusOffline:
			res.Skipped++
		case states[i].LastSeen.IsZero():
			res.Units++
		default:
			res.Units += 2
		}
	}
	return res, nil
}
