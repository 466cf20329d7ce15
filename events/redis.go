package events

import (
	"context"
	"fmt"

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

// streamSender XADDs each event to one stream, trimming it approximately,
// a batch per pipeline. Entry fields are the event's JSON fields, each
// value a string.
type streamSender struct {
	client redis.UniversalClient
	key    string
	maxLen int64
	fs     []field
	buf    []byte
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
		pipe.XAdd(ctx, &redis.XAddArgs{
			Stream: s.key,
			MaxLen: s.maxLen, // 0: no MAXLEN
			Approx: s.maxLen > 0,
			Values: vals,
		})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("xadd %d events to %s: %w", len(batch), s.key, err)
	}
	return nil
}
