package cluster

import (
	"bufio"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// peer is the forwarding side of one remote member: a bounded queue filled
// by the router and one goroutine (run) that owns the TCP connection, dials
// with backoff and writes the queue out in batch frames.
type peer struct {
	r    *Router
	name string
	addr string

	mu      sync.Mutex
	queue   []msg         // pending, at most cfg.QueueSize
	space   chan struct{} // closed (and replaced) when run takes the queue
	stopped bool
	reroute bool // set by stop before done is closed

	wake      chan struct{} // cap 1: the queue is no longer empty
	done      chan struct{} // closed by stop
	connected atomic.Bool
}

func newPeer(r *Router, name, addr string) *peer {
	return &peer{
		r:     r,
		name:  name,
		addr:  addr,
		space: make(chan struct{}),
		wake:  make(chan struct{}, 1),
		done:  make(chan struct{}),
	}
}

// enqueue appends msgs to the queue. When it is full, it waits for room
// until deadline, but only while the peer is connected (a zero deadline
// never waits); what still does not fit is dropped and counted.
func (p *peer) enqueue(msgs []msg, deadline time.Time) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	limit := p.r.cfg.QueueSize
	for len(msgs) > 0 {
		p.mu.Lock()
		if p.stopped {
			p.mu.Unlock()
			p.r.m.dropped[dropClosed].Add(len(msgs))
			return
		}
		n := min(limit-len(p.queue), len(msgs))
		wasEmpty := len(p.queue) == 0
		p.queue = append(p.queue, msgs[:n]...)
		msgs = msgs[n:]
		space := p.space
		p.mu.Unlock()
		if n > 0 && wasEmpty {
			select {
			case p.wake <- struct{}{}:
			default:
			}
		}
		if len(msgs) == 0 {
			return
		}
		wait := time.Until(deadline)
		if !p.connected.Load() || deadline.IsZero() || wait <= 0 {
			p.drop(len(msgs))
			return
		}
		if timer == nil {
			timer = time.NewTimer(wait)
		}
		select {
		case <-space:
		case <-timer.C:
			p.drop(len(msgs))
			return
		}
	}
}

func (p *peer) drop(n int) {
	p.r.m.dropped[dropQueueFull].Add(n)
	if ok, sup := p.r.limit.Allow("queue_full"); ok {
		p.r.log.Warn("cluster: peer queue full, messages dropped",
			slog.String("peer", p.name), slog.Int("dropped", n), slog.Int("suppressed", sup))
	}
}

func (p *peer) depth() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.queue)
}

// take swaps the queue out (spare becomes the new, empty queue) and wakes
// the producers waiting for room.
func (p *peer) take(spare []msg) []msg {
	p.mu.Lock()
	q := p.queue
	p.queue = spare[:0]
	if len(q) > 0 {
		close(p.space)
		p.space = make(chan struct{})
	}
	p.mu.Unlock()
	return q
}

// stop makes run return, after finish; later enqueues drop (closed).
// reroute says the peer left the table: its queue is routed again.
func (p *peer) stop(reroute bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.stopped {
		p.stopped, p.reroute = true, reroute
		close(p.done)
		close(p.space) // release waiting producers
		p.space = make(chan struct{})
	}
}

// run owns the connection. Queue contents survive a failed dial (the
// producers drop on overflow meanwhile, without waiting); a batch that was
// being written when the connection failed is lost (send_error).
func (p *peer) run() {
	defer p.r.wg.Done()
	var (
		conn    net.Conn
		bw      *bufio.Writer
		buf     []byte
		spare   []msg
		backoff = p.r.cfg.MinBackoff
		log     = p.r.log.With(slog.String("peer", p.name), slog.String("addr", p.addr))
	)
	defer func() {
		if conn != nil {
			_ = conn.Close()
		}
		p.connected.Store(false)
	}()
	// An idle connection gets an empty batch now and then, before the
	// server's IdleTimeout closes it.
	keepalive := time.NewTicker(p.r.cfg.IdleTimeout / 4)
	defer keepalive.Stop()
	var wrote bool // since the last tick
	for {
		select {
		case <-p.wake:
		case <-keepalive.C:
			if conn != nil && !wrote {
				if err := p.keepalive(conn, bw); err != nil {
					p.r.m.connLost.Inc()
					_ = conn.Close()
					conn, bw = nil, nil
					p.connected.Store(false)
				}
			}
			wrote = false
			continue
		case <-p.done:
			p.finish(conn, bw, buf)
			return
		}
		if conn == nil {
			var err error
			conn, err = p.dial()
			if err != nil {
				conn = nil
				p.r.m.dialErrors.Inc()
				if ok, sup := p.r.limit.Allow("dial:" + p.name); ok {
					log.Warn("cluster: cannot connect to peer", slog.Any("err", err), slog.Int("suppressed", sup))
				}
				if !p.sleep(backoff) {
					p.finish(nil, nil, buf)
					return
				}
				backoff = min(2*backoff, p.r.cfg.MaxBackoff)
				p.poke()
				continue
			}
			backoff = p.r.cfg.MinBackoff
			bw = bufio.NewWriterSize(conn, 64<<10)
			p.r.m.connects.Inc()
			p.connected.Store(true)
			log.Debug("cluster: connected to peer")
		}
		for {
			q := p.take(spare)
			if len(q) == 0 {
				spare = q
				break
			}
			var err error
			buf, err = p.write(conn, bw, buf, q)
			wrote = true
			clear(q) // release the ids
			spare = q[:0]
			if err != nil {
				p.r.m.connLost.Inc()
				if ok, sup := p.r.limit.Allow("write:" + p.name); ok {
					log.Warn("cluster: lost connection to peer", slog.Any("err", err), slog.Int("suppressed", sup))
				}
				_ = conn.Close()
				conn, bw = nil, nil
				p.connected.Store(false)
				p.poke() // reconnect for what is still queued
				break
			}
		}
	}
}

// finish runs once stop was called. A peer stopped by Router.close writes
// what is queued if it is connected (one attempt, WriteTimeout), a peer
// that left the table hands its queue back to the router to be routed by
// the new table; the rest is dropped (closed).
func (p *peer) finish(conn net.Conn, bw *bufio.Writer, buf []byte) {
	if conn != nil && !p.reroute {
		if q := p.take(nil); len(q) > 0 {
			_, _ = p.write(conn, bw, buf, q)
		}
	}
	left := p.take(nil)
	if len(left) == 0 {
		return
	}
	if p.reroute {
		p.r.dispatch(left, time.Time{}, "")
		return
	}
	p.r.m.dropped[dropClosed].Add(len(left))
}

// write encodes q into batch frames of at most MaxBatch messages and writes
// them; on error every message of q not yet flushed counts as dropped.
func (p *peer) write(conn net.Conn, bw *bufio.Writer, buf []byte, q []msg) ([]byte, error) {
	cfg := p.r.cfg
	_ = conn.SetWriteDeadline(time.Now().Add(cfg.WriteTimeout))
	var bytes, batches int
	for i := 0; i < len(q); i += cfg.MaxBatch {
		chunk := q[i:min(i+cfg.MaxBatch, len(q))]
		buf = appendBatch(buf[:0], chunk)
		if _, err := bw.Write(buf); err != nil {
			p.r.m.dropped[dropSendError].Add(len(q))
			return buf, err
		}
		bytes += len(buf)
		batches++
	}
	if err := bw.Flush(); err != nil {
		p.r.m.dropped[dropSendError].Add(len(q))
		return buf, err
	}
	p.r.m.fwdMessages.Add(len(q))
	p.r.m.fwdBytes.Add(bytes)
	p.r.m.fwdBatches.Add(batches)
	return buf, nil
}

// keepalive writes an empty batch.
func (p *peer) keepalive(conn net.Conn, bw *bufio.Writer) error {
	_ = conn.SetWriteDeadline(time.Now().Add(p.r.cfg.WriteTimeout))
	if _, err := bw.Write(appendBatch(nil, nil)); err != nil {
		return err
	}
	return bw.Flush()
}

func (p *peer) dial() (net.Conn, error) {
	if p.addr == "" {
		return nil, errors.New("no data address advertised")
	}
	conn, err := p.r.cfg.dial(p.addr, time.Time{})
	if err != nil {
		return nil, err
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	c, err := p.r.ch.dial(conn, p.r.self, p.name, time.Now().Add(p.r.cfg.HandshakeTimeout))
	if err != nil {
		p.r.m.handshakeErr.Inc()
		return nil, err
	}
	return c, nil
}

// sleep waits d or until stop; false means stopped.
func (p *peer) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-p.done:
		return false
	}
}

func (p *peer) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}
