package redis

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
	// TTL of both keys, whole seconds, at least 1 s. Default 24 h as in
	// the seed. Both keys of a device expire TTL after its last message
	// (expireAt), so a device that does not talk for a TTL disappears from
	// Redis; longer keeps more memory for dead devices. Every node of a
	// cluster must use the same: a guarded write compares expiry times.
	TTL time.Duration
	// Guarded makes every write conditional, for a cluster where a stale
	// owner (paused, or cut off from its peers) may still flush: a key is
	// written only if it holds no newer information than the write, so
	// last-seen never goes backwards, and at one last-seen time "online"
	// never replaces "offline". Every key of a device with a last-seen time
	// expires at LastSeen + TTL (guarded or not), and that expiry is the
	// fence: each key is written by a Lua script (fencedSet) that compares
	// its own expiry time (PEXPIRETIME, Redis 7) with the write's, so a
	// guarded write needs no second key and works on Redis Cluster, where
	// a device's two keys are in different slots. Costs a script call per
	// device on one server, per key on a Cluster, instead of SETs
	// (BENCHMARKS.md, guarded writes).
	Guarded bool
	// TimeoutsKeyOf, when set, names the hash holding device id's own
	// timeout (recovery.Index.TimeoutsKeyOf: one hash per cluster
	// partition, {KeyPrefix}timeouts:{partition}, so that Redis Cluster
	// spreads them over its slots). Nil: the one hash TimeoutsKey.
	TimeoutsKeyOf func(id string) string
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
	// unchanged: keys a guarded write left as they were (fencedSet): a
	// stale owner fenced off, or the state they hold written again.
	unchanged *metrics.Counter
	cluster   bool // a Redis Cluster client: index entries in a pipeline of their own
	// relative: the server refused SET ... PXAT (Redis before 6.2), so
	// unguarded keys expire by PX, relative to now.
	relative atomic.Bool
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
	r := &Sink{client: client, cfg: cfg, ttl: cfg.TTL, ttlArg: strconv.FormatInt(int64(cfg.TTL/time.Second), 10)}
	if r.cfg.TimeoutsKeyOf == nil {
		key := cfg.TimeoutsKey()
		r.cfg.TimeoutsKeyOf = func(string) string { return key }
	}
	r.Flusher = writeback.NewFlusher("redis", "keys", src, cfg.Flush, r.writeBatch)
	r.indexed = r.Metrics().NewCounter("presence_index_ids_written_total")
	r.unchanged = r.Metrics().NewCounter("presence_redis_guarded_unchanged_keys_total")
	_, r.cluster = client.(*goredis.ClusterClient)
	return r, nil
}

// StatusKey returns the status key of a device.
func (r *Sink) StatusKey(id string) string { return r.cfg.KeyPrefix + statusNS + id }

// LastSeenKey returns the last-seen key of a device.
func (r *Sink) LastSeenKey(id string) string { return r.cfg.KeyPrefix + lastSeenNS + id }

// TimeoutsKeyOf is the hash holding device id's own timeout
// (engine.SetTimeout, PUT /v1/devices/{id}/timeout): field the device id,
// value the timeout in seconds (Config.TimeoutsKeyOf).
func (r *Sink) TimeoutsKeyOf(id string) string { return r.cfg.TimeoutsKeyOf(id) }

// TimeoutsKey is the one hash of the overrides when Config.TimeoutsKeyOf
// is not set, {KeyPrefix}timeouts; partitioned hashes are named after it
// ({KeyPrefix}timeouts:{partition}). Outside the device namespaces, so no
// device key can be it.
func (c Config) TimeoutsKey() string { return c.KeyPrefix + timeoutsKey }

// The device key namespaces, after KeyPrefix, and the overrides' hash.
const (
	statusNS    = "status:"
	lastSeenNS  = "lastseen:"
	timeoutsKey = "timeouts"
)

// SetTimeoutOverride stores device id's own timeout d in its hash, or
// deletes it when d is 0, at once rather than write-behind: the API
// acknowledges an override only once it is stored, and restart recovery
// (ReadStates) and a cluster rebuild read it back.
func (r *Sink) SetTimeoutOverride(ctx context.Context, id string, d time.Duration) error {
	var err error
	if d == 0 {
		err = r.client.HDel(ctx, r.TimeoutsKeyOf(id), id).Err()
	} else {
		err = r.client.HSet(ctx, r.TimeoutsKeyOf(id), id, timeoutValue(d)).Err()
	}
	if err != nil {
		return fmt.Errorf("redis: timeout override of %s: %w", wire.Quote(id, 64), err)
	}
	return nil
}

// timeoutValue is an own timeout as stored: seconds.
func timeoutValue(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) }

// queueRemoval adds to pipe what deletes a decommissioned device: its two
// keys (one DEL each: they may be in different Cluster slots), its own
// timeout and its index entry. It returns the commands queued.
func (r *Sink) queueRemoval(ctx context.Context, pipe goredis.Pipeliner, id string) int {
	pipe.Del(ctx, r.StatusKey(id))
	pipe.Del(ctx, r.LastSeenKey(id))
	pipe.HDel(ctx, r.TimeoutsKeyOf(id), id)
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

// fencedSet is a guarded write (Config.Guarded) of one key, or of a
// device's two keys on one Redis server: it sets each KEYS[i] to
// ARGV[2i+2], expiring at ARGV[1] (Unix ms, the write's fence: LastSeen +
// TTL), unless the key expires later (it holds a newer device state), or
// expires at the same millisecond and holds what wins at one last-seen
// time: for a status key (ARGV[2i+1] "s") "offline", since a device comes
// back online only with a newer message, so a stale owner cannot undo a
// timeout or a Last Will; for a last-seen key ("l") a time not older. Each
// key is compared with itself alone, so on Redis Cluster, where a device's
// keys are in different slots, each is written by a call of its own.
//
// An expiry beyond ARGV[2] (Unix ms: now + TTL and a minute for the
// clocks, by the writer's clock, which the fences are by too) is no fence:
// the key was written under a longer TTL (-redis-ttl was lowered) or by
// someone else, and is overwritten, lest it block every write for up to
// the old TTL. PEXPIRETIME is -2 for a missing key and -1
// for a key without expiry: both are written. It returns how many keys it
// wrote.
var fencedSet = goredis.NewScript(`
local fence = tonumber(ARGV[1])
local horizon = tonumber(ARGV[2])
local wrote = 0
for i = 1, #KEYS do
  local kind, val = ARGV[2*i+1], ARGV[2*i+2]
  local t = redis.call('PEXPIRETIME', KEYS[i])
  if t > horizon then t = -1 end
  local skip = t > fence
  if t == fence then
    local old = redis.call('GET', KEYS[i])
    if kind == 's' then
      skip = old == 'offline' or old == val
    else
      skip = old ~= false and old >= val
    end
  end
  if not skip then
    redis.call('SET', KEYS[i], val, 'PXAT', ARGV[1])
    wrote = wrote + 1
  end
end
return wrote`)

// fenceSlack is how far the clocks of presenced and Redis may disagree
// before a fence looks written under a longer TTL (fencedSet).
const fenceSlack = time.Minute

// The fencedSet arguments that do not change, boxed once.
var (
	argEvalSha  any = "evalsha"
	argFenceSHA any = fencedSet.Hash()
	argOneKey   any = "1"
	argTwoKeys  any = "2"
	argKindS    any = "s"
	argKindL    any = "l"
)

// writeBatch writes one batch in one pipeline. A device takes one command
// when only its status changed (engine.DeviceState.StatusOnly: a timeout,
// a Last Will): its status key, expiring with its last-seen key; two when
// its last-seen time changed too, and a third, its index entry, when it is
// new to the engine: before its keys, in the pipeline on one Redis, in a
// pipeline of its own first on a Cluster (whose client sends each node's
// part of a pipeline at the same time). The keys of a device expire at
// LastSeen + TTL (expireAt); with Config.Guarded each is written by
// fencedSet, which compares that time with the stored key's.
//
// It allocates per batch rather than per device where go-redis lets it:
// the key names and values are appended to one buffer made one string,
// whose substrings are the arguments, and the arguments of every command
// are slices of one array (a pooled scratch: Concurrency workers call it
// at once).
func (r *Sink) writeBatch(ctx context.Context, states []engine.DeviceState) (writeback.WriteResult, error) {
	res, indexed, err := r.writePipelined(ctx, states)
	if err != nil && r.cfg.Guarded && goredis.HasErrorPrefix(err, "NOSCRIPT") { // first use, or Redis restarted
		// On a Cluster the client loads it on every master.
		if err = fencedSet.Load(ctx, r.client).Err(); err == nil {
			res, indexed, err = r.writePipelined(ctx, states)
		}
	}
	if err != nil && !r.cfg.Guarded && !r.relative.Load() && strings.Contains(err.Error(), "syntax error") {
		// Redis before 6.2 knows no SET ... PXAT: expire by PX from now on.
		r.relative.Store(true)
		res, indexed, err = r.writePipelined(ctx, states)
	}
	if err != nil {
		return writeback.WriteResult{}, err
	}
	r.indexed.Add(indexed)
	return res, nil
}

func (r *Sink) writePipelined(ctx context.Context, states []engine.DeviceState) (writeback.WriteResult, int, error) {
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
			at := r.expireAt(s, now)
			if at > 0 {
				op |= opFenced
				if !r.cfg.Guarded && r.relative.Load() {
					// A Redis before 6.2 (no PXAT): relative, the same
					// time by this clock, later by the time to Redis.
					at -= now.UnixMilli()
				}
				sc.buf = strconv.AppendInt(sc.buf, at, 10)
				sc.ends = append(sc.ends, len(sc.buf))
			}
			if !s.LastSeen.IsZero() && !(s.StatusOnly && at > 0) {
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
	// set queues a write of key: fenced by at (Unix ms) with Guarded, else
	// a SET expiring at at (PXAT; in at ms, PX, on Redis before 6.2), or
	// in TTL when at is nil.
	fencedKeys := 0 // keys written by fencedSet
	// No fence lies beyond now + TTL (fencedSet), by this clock.
	var horizon any
	if r.cfg.Guarded {
		horizon = strconv.FormatInt(now.Add(r.ttl+fenceSlack).UnixMilli(), 10)
	}
	set := func(key *string, val any, at *string, kind any) {
		start := len(args)
		switch {
		case at != nil && r.cfg.Guarded:
			args = append(args, argEvalSha, argFenceSHA, argOneKey, key, at, horizon, kind, val)
			_ = pipe.Process(ctx, goredis.NewIntCmd(ctx, args[start:len(args):len(args)]...))
			fencedKeys++
			return
		case at != nil && r.relative.Load():
			args = append(args, "set", key, val, "px", at)
		case at != nil:
			args = append(args, "set", key, val, "pxat", at)
		default:
			args = append(args, "set", key, val, "ex", r.ttlArg)
		}
		_ = pipe.Process(ctx, goredis.NewStatusCmd(ctx, args[start:len(args):len(args)]...))
	}
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
			if s.TimeoutSource == engine.TimeoutDevice {
				// Its own timeout again, with the index entry: after a
				// failover (Tracker.MarkAll) the override stored just
				// before it may be lost too. The same value: a no-op
				// otherwise. Overrides are few.
				ipipe.HSet(ctx, r.TimeoutsKeyOf(s.ID), s.ID, timeoutValue(s.Timeout))
			}
		}
		if op&opStatus != 0 {
			key := next()
			var at *string
			if op&opFenced != 0 {
				at = next()
			}
			if at != nil && r.cfg.Guarded && !r.cluster && op&opLastSeen != 0 {
				// One server: both keys in one call.
				start := len(args)
				args = append(args, argEvalSha, argFenceSHA, argTwoKeys, key, next(), at, horizon,
					argKindS, statusArg(s.Status), argKindL, next())
				_ = pipe.Process(ctx, goredis.NewIntCmd(ctx, args[start:len(args):len(args)]...))
				fencedKeys += 2
				res.Units += 2
				continue
			}
			set(key, statusArg(s.Status), at, argKindS)
			res.Units++
			if op&opLastSeen != 0 {
				set(next(), next(), at, argKindL)
				res.Units++
			}
		}
	}
	defer func() {
		clear(args) // pin no string of this batch in the pool
		sc.args = args[:0]
		clear(strs)
	}()
	if res.Units == 0 {
		return res, 0, nil
	}
	if ipipe != pipe && indexed > 0 {
		if _, err := ipipe.Exec(ctx); err != nil {
			return writeback.WriteResult{}, 0, fmt.Errorf("redis device index: %w", err)
		}
	}
	cmds, err := pipe.Exec(ctx)
	if err != nil {
		// Exec returns the first failed command's error; the pipeline may
		// be partly applied, which is fine: the batch is rewritten whole
		// (a fenced write of the same state is a no-op).
		return writeback.WriteResult{}, 0, fmt.Errorf("redis pipeline of %d commands: %w", len(cmds), err)
	}
	if fencedKeys > 0 {
		written := 0
		for _, c := range cmds {
			if c, ok := c.(*goredis.IntCmd); ok && c.Name() == "evalsha" {
				written += int(c.Val())
			}
		}
		r.unchanged.Add(fencedKeys - written)
	}
	return res, indexed, nil
}

// What writeBatch does for one device.
const (
	opStatus   = 1 << iota // SET its status key
	opFenced               // expiring at expireAt (fenced with Guarded), not in TTL
	opLastSeen             // SET its last-seen key
	opIndex                // SADD it to its index set, first
	opRemove               // delete it (queueRemoval)
)

// minExpiry: unguarded, keys that would expire sooner than this after
// their write are written to expire in TTL instead (expireAt).
const minExpiry = time.Minute

// expireAt is when the keys of s expire, in Unix milliseconds: at
// LastSeen + TTL, so that a status written alone (s.StatusOnly: a timeout,
// a Last Will) expires with its last-seen key and never outlives its
// last-seen time, and so that the expiry orders a device's writes
// (fencedSet). 0 when the keys expire in TTL: s has no last-seen time, or,
// unguarded, its last-seen key has (nearly) expired (a timeout or a Last
// Will longer than the TTL), and both keys are written again. Guarded, the
// fence is kept even then: a device silent for longer than the TTL has
// left Redis, and a write fenced in the past leaves it out.
func (r *Sink) expireAt(s *engine.DeviceState, now time.Time) int64 {
	if s.LastSeen.IsZero() {
		return 0
	}
	at := s.LastSeen.Add(r.ttl)
	if !r.cfg.Guarded && at.Sub(now) < minExpiry {
		return 0
	}
	return at.UnixMilli()
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
