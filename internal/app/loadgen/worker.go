package loadgen

import (
	"context"
	"strconv"
	"sync/atomic"
	"time"
)

var (
	payloadOnline  = []byte("online")
	payloadOffline = []byte("offline")
)

// worker paces and publishes the slots of one connection.
type worker struct {
	r        *Runner
	pub      Publisher
	cur      *Cursor
	stats    *connStats
	pend     chan<- pending
	start    time.Time
	reserved *atomic.Uint64 // telemetry messages claimed by all workers, for Count
	stop     context.CancelFunc
	buf      []byte // topic scratch
}

// run publishes what is due every tick until the run is over for this
// connection or ctx is cancelled.
func (w *worker) run(ctx context.Context) {
	t := time.NewTicker(w.r.cfg.Tick)
	defer t.Stop()
	for {
		if w.publishDue(ctx, time.Since(w.start)) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// publishDue publishes every slot due at or before now (time since start),
// the bucket refill of this tick. It reports whether the worker is done:
// duration or count reached, or ctx cancelled.
func (w *worker) publishDue(ctx context.Context, now time.Duration) bool {
	cfg, s := &w.r.cfg, &w.r.sched
	if at := s.At(w.cur.Slot()); at <= now {
		w.stats.lagNs.Store(int64(now - at))
	} else {
		w.stats.lagNs.Store(0)
	}
	wallMs := time.Now().UnixMilli()
	for n := 1; ; n++ {
		k := w.cur.Slot()
		if at := s.At(k); at > now || (cfg.Duration > 0 && at >= cfg.Duration) {
			break
		}
		if n%1024 == 0 && w.over(ctx) {
			return true
		}
		w.cur.Next()
		d := s.Device(k)
		switch s.Kind(k) {
		case KindSilent:
			continue
		case KindGoOffline:
			if cfg.Announce {
				if !w.publish(ctx, w.topic(w.r.statusPre, w.r.statusPost, d), payloadOffline, true) {
					return true
				}
			}
			continue
		case KindReturn:
			if cfg.Announce {
				if !w.publish(ctx, w.topic(w.r.statusPre, w.r.statusPost, d), payloadOnline, true) {
					return true
				}
			}
		}
		if cfg.Count == 0 {
			if !w.publishTelemetry(ctx, k, d, wallMs) {
				return true
			}
			continue
		}
		claimed := w.reserved.Add(1)
		if claimed > cfg.Count {
			w.stop()
			return true
		}
		if !w.publishTelemetry(ctx, k, d, wallMs) || claimed == cfg.Count {
			w.stop()
			return true
		}
	}
	return cfg.Duration > 0 && now >= cfg.Duration
}

// over reports, while catching up a backlog, whether the run should end
// anyway: ctx cancelled, or the wall clock a tick past Duration. Slots due
// before Duration are published if the generator keeps up; if it does not, it
// still stops on time and the summary's rate shows the shortfall.
func (w *worker) over(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	d := w.r.cfg.Duration
	return d > 0 && time.Since(w.start) >= d+w.r.cfg.Tick
}

func (w *worker) publishTelemetry(ctx context.Context, k, d uint64, wallMs int64) bool {
	cfg := &w.r.cfg
	payload := make([]byte, 0, max(64, cfg.PayloadSize+1))
	payload = appendPayload(payload, w.r.sched.Seq(k), wallMs, d, cfg.PayloadSize)
	return w.publish(ctx, w.topic(w.r.topicPre, w.r.topicPost, d), payload, false)
}

// publish hands one message to the client and its completion to the acker.
// A full in-flight window blocks here: that is the back-pressure that keeps a
// slow broker from growing queues without bound (the lag shows it). It
// reports false when the run ended while it waited.
func (w *worker) publish(ctx context.Context, topic string, payload []byte, status bool) bool {
	if !w.pub.Connected() {
		w.stats.errors.Add(1)
		w.r.errs.Log("not connected, message dropped")
		return true
	}
	w.stats.published.Add(1)
	it := pending{p: w.pub.Publish(topic, w.r.cfg.QoS, payload), status: status}
	select {
	case w.pend <- it:
		return true
	default:
	}
	// Window full. Not abandoned on cancel: the acker drains it within the
	// shutdown deadline, so every publish is counted once.
	w.pend <- it
	return ctx.Err() == nil
}

// topic renders a template split around {id} for device d.
func (w *worker) topic(pre, post string, d uint64) string {
	b := append(w.buf[:0], pre...)
	b = append(b, w.r.cfg.IDPrefix...)
	b = strconv.AppendUint(b, w.r.cfg.IDStart+d, 10)
	b = append(b, post...)
	w.buf = b
	return string(b)
}

// appendPayload appends the JSON telemetry of one message:
// {"seq":7,"ts":1734171045123,"temp":21.3}, padded with a "pad" field to at
// least size bytes. seq is the device's message number (gaps show loss), ts
// the send time in Unix milliseconds, temp a deterministic fake reading.
func appendPayload(b []byte, seq uint64, tsMs int64, d uint64, size int) []byte {
	start := len(b)
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, tsMs, 10)
	v := (d*7 + seq*3) % 200 // 15.0 .. 34.9
	b = append(b, `,"temp":`...)
	b = strconv.AppendUint(b, 15+v/10, 10)
	b = append(b, '.', byte('0'+v%10))
	if size > len(b)-start+1 {
		const overhead = len(`,"pad":""}`)
		pad := max(0, size-(len(b)-start)-overhead)
		b = append(b, `,"pad":"`...)
		for range pad {
			b = append(b, 'x')
		}
		b = append(b, '"')
	}
	return append(b, '}')
}
