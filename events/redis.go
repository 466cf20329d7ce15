package events

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
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
type streamSender struct {
	client    redis.UniversalClient
	key       string
	retention time.Duration // 0: no trimming by age
	maxLen    int64         // 0: no cap
	now       func() time.Time
	fs        []field
	buf       []byte
}

func newStreamSender(client redis.UniversalClient, cfg StreamConfig, now func() time.Time) *streamSender {
	return &streamSender{client: client, key: cfg.Key, retention: cfg.Retention, maxLen: cfg.MaxLen, now: now}
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
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("xadd %d events to %s: %w", len(batch), s.key, err)
	}
	return nil
}

// minID is the smallest stream entry id at or after t: entry ids are
// "<Unix milliseconds>-<sequence>".
func minID(t time.Time) string {
	return strconv.FormatInt(max(t.UnixMilli(), 0), 10) + "-0"
}
