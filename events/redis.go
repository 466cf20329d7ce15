package events

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/internal/ratelog"
)

// pubsubSender PUBLISHes each event's JSON to one channel, a batch per
// pipeline (one round trip). Like the stream's, a batch costs a few
// allocations, not a few per event: the messages are substrings of one
// string, passed by pointer to typed commands.
type pubsubSender struct {
	client  redis.UniversalClient
	channel string
	verb    any // "publish", or "spublish" (PubSubConfig.Sharded)
	enc     encoder
	buf     []byte
	ends    []int
	msgs    []string
	args    []any
}

func (*pubsubSender) accepts(Type) bool { return true }

func (p *pubsubSender) send(ctx context.Context, batch []rec) error {
	p.buf, p.ends = p.buf[:0], p.ends[:0]
	for i := range batch {
		p.buf = p.enc.appendJSON(p.buf, &batch[i])
		p.ends = append(p.ends, len(p.buf))
	}
	all := string(p.buf)
	p.msgs = slices.Grow(p.msgs[:0], len(batch))
	start := 0
	for _, end := range p.ends {
		p.msgs = append(p.msgs, all[start:end])
		start = end
	}
	if need := 3 * len(batch); cap(p.args) < need {
		p.args = make([]any, 0, need)
	}
	args := p.args[:0]
	var channel any = p.channel
	pipe := p.client.Pipeline()
	for i := range p.msgs {
		args = append(args, p.verb, channel, &p.msgs[i])
		cmd := redis.NewIntCmd(ctx, args[3*i:3*i+3:3*i+3]...)
		// Routed by the channel's slot: go-redis sends a PUBLISH, which
		// has no key, to the masters of a Cluster in turn, and the nodes'
		// parts of a pipeline at once, so a device's events would reach
		// the subscribers out of order. One node, in order, as on one
		// server (SPUBLISH is routed so already).
		cmd.SetFirstKeyPos(1)
		_ = pipe.Process(ctx, cmd)
	}
	_, err := pipe.Exec(ctx)
	clear(args)
	clear(p.msgs)
	p.args = args[:0]
	if err != nil {
		return fmt.Errorf("publish %d events to %s: %w", len(batch), p.channel, err)
	}
	return nil
}

// streamSender XADDs each event to one stream, a batch per pipeline, and
// trims the stream at the end of the pipeline: the entries older than
// retention (XTRIM MINID ~), then to about maxLen entries (XTRIM MAXLEN ~).
// Trimming in the batch's pipeline costs no round trip, and allows both
// bounds (an XADD takes only one). Entry fields are the event's JSON
// fields, each value a string.
//
// A batch is encoded with a few allocations, not a few per event: every
// value of the batch is appended to one buffer, made one string, whose
// substrings are the values, and the commands' arguments are slices of one
// argument array kept from batch to batch (the pipeline holds them only
// until Exec returns).
//
// A batch fails (and is sent again) only when an XADD failed; a failed
// trim is counted (presence_events_stream_trim_errors_total) and logged at
// a limited rate, never retried with the batch: its entries are in the
// stream already, and a trim that cannot succeed (XTRIM MINID needs Redis
// 6.2) must not append them again and again.
type streamSender struct {
	client    redis.UniversalClient
	keys      []any         // the streams' names (StreamConfig.ShardKeys), boxed once
	names     []string      // the same, for errors and trims
	retention time.Duration // 0: no trimming by age
	maxLen    int64         // 0: no cap
	now       func() time.Time
	fs        []field
	nfs       []int // fields of each event of the batch
	buf       []byte
	vals      []string // the batch's values, substrings of one string
	args      []any
	fields    map[string]any // field names, boxed once
	order     []int          // where each event's fields start in fs
	idx       []int          // the batch's events, grouped by shard
	counts    []int          // events per shard
	starts    []int          // scratch of byShard

	log       *slog.Logger
	lim       *ratelog.Limiter[logLine]
	trimFails *metrics.Counter
}

func newStreamSender(client redis.UniversalClient, cfg StreamConfig, now func() time.Time, log *slog.Logger, set *metrics.Set) *streamSender {
	names := cfg.ShardKeys()
	keys := make([]any, len(names))
	for i, n := range names {
		keys[i] = n
	}
	return &streamSender{client: client, keys: keys, names: names, retention: cfg.Retention, maxLen: cfg.MaxLen, now: now,
		fields: map[string]any{}, log: log, lim: newLogLimiter(), trimFails: set.NewCounter("presence_events_stream_trim_errors_total")}
}

func (*streamSender) accepts(Type) bool { return true }

// boxed is field name k as a command argument, allocated once.
func (s *streamSender) boxed(k string) any {
	v, ok := s.fields[k]
	if !ok {
		v = k
		s.fields[k] = v
	}
	return v
}

func (s *streamSender) send(ctx context.Context, batch []rec) error {
	s.fs, s.nfs, s.buf = s.fs[:0], s.nfs[:0], s.buf[:0]
	for i := range batch {
		n := len(s.fs)
		s.fs, s.buf = batch[i].fields(s.fs, s.buf)
		s.nfs = append(s.nfs, len(s.fs)-n)
	}
	// The values were appended to buf in order, so their offsets follow
	// from their lengths (buf may have moved since the first ones). They
	// are passed by pointer (boxing a pointer allocates nothing) to typed
	// commands (whose replies are read without boxing).
	vals := string(s.buf)
	s.vals = slices.Grow(s.vals[:0], len(s.fs))
	off := 0
	for _, fl := range s.fs {
		s.vals = append(s.vals, vals[off:off+len(fl.val)])
		off += len(fl.val)
	}
	if need := 3*len(batch) + 2*len(s.fs); cap(s.args) < need {
		s.args = make([]any, 0, need)
	}
	args := s.args[:0]
	pipe := s.client.Pipeline()
	first := s.firstFields()
	for _, i := range s.byShard(batch) {
		start := len(args)
		args = append(args, "xadd", s.keys[s.shard(&batch[i])], "*")
		for j := first[i]; j < first[i]+s.nfs[i]; j++ {
			args = append(args, s.boxed(s.fs[j].key), &s.vals[j])
		}
		_ = pipe.Process(ctx, redis.NewStringCmd(ctx, args[start:len(args):len(args)]...))
	}
	clear(s.fs) // the values' bytes are in vals now
	for k, name := range s.names {
		if len(s.names) > 1 && s.counts[k] == 0 {
			continue
		}
		if s.retention > 0 {
			pipe.XTrimMinIDApprox(ctx, name, minID(s.now().Add(-s.retention)), 0)
		}
		if s.maxLen > 0 {
			pipe.XTrimMaxLenApprox(ctx, name, s.maxLen, 0)
		}
	}
	cmds, err := pipe.Exec(ctx)
	clear(args) // keep no event's values alive until the next batch
	clear(s.vals)
	s.args = args[:0]
	if err == nil {
		return nil
	}
	if len(cmds) < len(batch) {
		return fmt.Errorf("xadd %d events to %s: %w", len(batch), strings.Join(s.names, ", "), err)
	}
	for _, c := range cmds[:len(batch)] {
		if err := c.Err(); err != nil {
			return fmt.Errorf("xadd %d events to %v: %w", len(batch), c.Args()[1], err)
		}
	}
	for _, c := range cmds[len(batch):] {
		if err := c.Err(); err != nil {
			s.trimFails.Inc()
			if ok, sup := s.lim.Allow(lineTrimFailed); ok {
				s.log.Warn("events: trimming the stream failed; its entries are kept (XTRIM MINID needs Redis 6.2: on older Redis set -events-stream-retention=0)",
					logKeyDest, "stream", "key", c.Args()[1], "error", err, "suppressed", sup)
			}
		}
	}
	return nil
}

// shard is the index in keys of the stream of e.
func (s *streamSender) shard(e *rec) int {
	if len(s.keys) == 1 {
		return 0
	}
	return shardOf(e.id, len(s.keys))
}

// firstFields returns where each event's fields start in fs (in order).
func (s *streamSender) firstFields() []int {
	first := s.order[:0]
	f := 0
	for _, n := range s.nfs {
		first = append(first, f)
		f += n
	}
	s.order = first
	return first
}

// byShard returns the indices of the batch's events grouped by shard,
// each shard's in order (one stream: in order), and counts them per shard
// in counts. The order matters only within a stream.
func (s *streamSender) byShard(batch []rec) []int {
	n := len(s.keys)
	s.counts = slices.Grow(s.counts[:0], n)[:n]
	clear(s.counts)
	idx := slices.Grow(s.idx[:0], len(batch))[:len(batch)]
	s.idx = idx
	if n == 1 {
		for i := range idx {
			idx[i] = i
		}
		s.counts[0] = len(batch)
		return idx
	}
	for i := range batch {
		s.counts[s.shard(&batch[i])]++
	}
	starts := slices.Grow(s.starts[:0], n)[:n]
	s.starts = starts
	starts[0] = 0
	for k := 1; k < n; k++ {
		starts[k] = starts[k-1] + s.counts[k-1]
	}
	for i := range batch {
		k := s.shard(&batch[i])
		idx[starts[k]] = i
		starts[k]++
	}
	return idx
}

// minID is the smallest stream entry id at or after t: entry ids are
// "<Unix milliseconds>-<sequence>".
func minID(t time.Time) string {
	return strconv.FormatInt(max(t.UnixMilli(), 0), 10) + "-0"
}
