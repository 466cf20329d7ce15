package events

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
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
		args = append(args, "publish", channel, &p.msgs[i])
		_ = pipe.Process(ctx, redis.NewIntCmd(ctx, args[3*i:3*i+3:3*i+3]...))
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
	key       any           // the stream's name, boxed once
	name      string        // the same, for errors
	retention time.Duration // 0: no trimming by age
	maxLen    int64         // 0: no cap
	now       func() time.Time
	fs        []field
	nfs       []int // fields of each event of the batch
	buf       []byte
	vals      []string // the batch's values, substrings of one string
	args      []any
	keys      map[string]any // field names, boxed once

	log       *slog.Logger
	lim       *ratelog.Limiter[logLine]
	trimFails *metrics.Counter
}

func newStreamSender(client redis.UniversalClient, cfg StreamConfig, now func() time.Time, log *slog.Logger, set *metrics.Set) *streamSender {
	return &streamSender{client: client, key: cfg.Key, name: cfg.Key, retention: cfg.Retention, maxLen: cfg.MaxLen, now: now,
		keys: map[string]any{}, log: log, lim: newLogLimiter(), trimFails: set.NewCounter("presence_events_stream_trim_errors_total")}
}

func (*streamSender) accepts(Type) bool { return true }

// boxed is field name k as a command argument, allocated once.
func (s *streamSender) boxed(k string) any {
	v, ok := s.keys[k]
	if !ok {
		v = k
		s.keys[k] = v
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
	f := 0
	for _, n := range s.nfs {
		start := len(args)
		args = append(args, "xadd", s.key, "*")
		for j := f; j < f+n; j++ {
			args = append(args, s.boxed(s.fs[j].key), &s.vals[j])
		}
		f += n
		_ = pipe.Process(ctx, redis.NewStringCmd(ctx, args[start:len(args):len(args)]...))
	}
	clear(s.fs) // the values' bytes are in vals now
	if s.retention > 0 {
		pipe.XTrimMinIDApprox(ctx, s.name, minID(s.now().Add(-s.retention)), 0)
	}
	if s.maxLen > 0 {
		pipe.XTrimMaxLenApprox(ctx, s.name, s.maxLen, 0)
	}
	cmds, err := pipe.Exec(ctx)
	clear(args) // keep no event's values alive until the next batch
	clear(s.vals)
	s.args = args[:0]
	if err == nil {
		return nil
	}
	if len(cmds) < len(batch) {
		return fmt.Errorf("xadd %d events to %s: %w", len(batch), s.name, err)
	}
	for _, c := range cmds[:len(batch)] {
		if err := c.Err(); err != nil {
			return fmt.Errorf("xadd %d events to %s: %w", len(batch), s.name, err)
		}
	}
	for _, c := range cmds[len(batch):] {
		if err := c.Err(); err != nil {
			s.trimFails.Inc()
			if ok, sup := s.lim.Allow(lineTrimFailed); ok {
				s.log.Warn("events: trimming the stream failed; its entries are kept (XTRIM MINID needs Redis 6.2: on older Redis set -events-stream-retention=0)",
					logKeyDest, "stream", "key", s.name, "error", err, "suppressed", sup)
			}
		}
	}
	return nil
}

// minID is the smallest stream entry id at or after t: entry ids are
// "<Unix milliseconds>-<sequence>".
func minID(t time.Time) string {
	return strconv.FormatInt(max(t.UnixMilli(), 0), 10) + "-0"
}
