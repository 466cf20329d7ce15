package events

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/internal/ratelog"
)

// pubsubSender PUBLISHes each event's JSON to one channel, a batch per
// pipeline (one round trip).
type pubsubSender struct {
	client  redis.UniversalClient
	channel string
	enc     encoder
	buf     []byte
}

func (*pubsubSender) accepts(Type) bool { return true }

func (p *pubsubSender) send(ctx context.Context, batch []rec) error {
	// One buffer for the whole batch: each message is a sub-slice, and the
	// pipeline only reads them until Exec returns.
	p.buf = p.buf[:0]
	ends := make([]int, len(batch))
	for i := range batch {
		p.buf = p.enc.appendJSON(p.buf, &batch[i])
		ends[i] = len(p.buf)
	}
	pipe := p.client.Pipeline()
	start := 0
	for _, end := range ends {
		pipe.Publish(ctx, p.channel, p.buf[start:end])
		start = end
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("publish %d events to %s: %w", len(batch), p.channel, err)
	}
	return nil
}

// streamSender XADDs each event to one stream, a batch per pipeline, and
// trims the stream at the end of the pipeline: the entries older than
// retention (XTRIM MINID ~), then to about maxLen entries (XTRIM MAXLEN ~).
// Trimming once per batch instead of on every XADD costs one command per
// batch, and allows both bounds (an XADD takes only one). Entry fields are
// the event's JSON fields, each value a string.
//
// A batch fails (and is sent again) only when an XADD failed; a failed
// trim is counted (presence_events_stream_trim_errors_total) and logged at
// a limited rate, never retried with the batch: its entries are in the
// stream already, and a trim that cannot succeed (XTRIM MINID needs Redis
// 6.2) must not append them again and again.
type streamSender struct {
	client    redis.UniversalClient
	key       string
	retention time.Duration // 0: no trimming by age
	maxLen    int64         // 0: no cap
	now       func() time.Time
	fs        []field
	buf       []byte

	log       *slog.Logger
	lim       *ratelog.Limiter[logLine]
	trimFails *metrics.Counter
}

func newStreamSender(client redis.UniversalClient, cfg StreamConfig, now func() time.Time, log *slog.Logger, set *metrics.Set) *streamSender {
	return &streamSender{client: client, key: cfg.Key, retention: cfg.Retention, maxLen: cfg.MaxLen, now: now,
		log: log, lim: newLogLimiter(), trimFails: set.NewCounter("presence_events_stream_trim_errors_total")}
}

func (*streamSender) accepts(Type) bool { return true }

func (s *streamSender) send(ctx context.Context, batch []rec) error {
	pipe := s.client.Pipeline()
	for i := range batch {
		s.fs, s.buf = batch[i].fields(s.fs[:0], s.buf[:0])
		vals := make([]string, 0, 2*len(s.fs))
		for _, f := range s.fs {
			vals = append(vals, f.key, string(f.val))
		}
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: s.key, Values: vals})
	}
	if s.retention > 0 {
		pipe.XTrimMinIDApprox(ctx, s.key, minID(s.now().Add(-s.retention)), 0)
	}
	if s.maxLen > 0 {
		pipe.XTrimMaxLenApprox(ctx, s.key, s.maxLen, 0)
	}
	cmds, err := pipe.Exec(ctx)
	if err == nil {
		return nil
	}
	if len(cmds) < len(batch) {
		return fmt.Errorf("xadd %d events to %s: %w", len(batch), s.key, err)
	}
	for _, c := range cmds[:len(batch)] {
		if err := c.Err(); err != nil {
			return fmt.Errorf("xadd %d events to %s: %w", len(batch), s.key, err)
		}
	}
	for _, c := range cmds[len(batch):] {
		if err := c.Err(); err != nil {
			s.trimFails.Inc()
			if ok, sup := s.lim.Allow(lineTrimFailed); ok {
				s.log.Warn("events: trimming the stream failed; its entries are kept (XTRIM MINID needs Redis 6.2: on older Redis set -events-stream-retention=0)",
					logKeyDest, "stream", "key", s.key, "error", err, "suppressed", sup)
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
