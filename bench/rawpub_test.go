package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/presence-dev/presence/internal/app/loadgen"
)

// rawDialer dials load generator connections that write MQTT 3.1.1 QoS 0
// PUBLISH packets into a buffer flushed every millisecond. The benchmarks
// that use it run the publishers on the daemon's two cores, where paho,
// which writes every packet with a syscall of its own, cost the daemon a
// fifth of the CPU (BENCHMARKS.md, spread expiry); real devices publish
// from elsewhere. QoS 0 only: a publish is done once it is buffered, and a
// write error fails every later one.
func rawDialer() loadgen.Dialer {
	return func(ctx context.Context, cfg loadgen.Config, conn int) (loadgen.Publisher, error) {
		if cfg.QoS != 0 {
			return nil, errors.New("rawDialer: QoS 0 only")
		}
		u, err := url.Parse(cfg.Broker)
		if err != nil {
			return nil, err
		}
		d := net.Dialer{Timeout: cfg.ConnectTimeout}
		c, err := d.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			return nil, err
		}
		// CONNECT: protocol "MQTT" level 4, clean session, no keep-alive.
		id := fmt.Sprintf("%s-%d-%d", cfg.ClientID, os.Getpid(), conn)
		body := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 0}, byte(len(id)>>8), byte(len(id)))
		body = append(body, id...)
		pkt := appendRemaining([]byte{0x10}, len(body))
		if _, err := c.Write(append(pkt, body...)); err != nil {
			c.Close()
			return nil, err
		}
		var ack [4]byte
		c.SetReadDeadline(time.Now().Add(cfg.ConnectTimeout))
		if _, err := io.ReadFull(c, ack[:]); err != nil || ack[0] != 0x20 || ack[3] != 0 {
			c.Close()
			return nil, fmt.Errorf("rawDialer: CONNACK %x: %v", ack, err)
		}
		p := &rawPublisher{c: c, w: bufio.NewWriterSize(c, 256<<10), stop: make(chan struct{}), done: make(chan struct{})}
		go p.flushLoop()
		return p, nil
	}
}

// appendRemaining appends MQTT's variable-length remaining length n.
func appendRemaining(dst []byte, n int) []byte {
	for {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		dst = append(dst, b)
		if n == 0 {
			return dst
		}
	}
}

type rawPublisher struct {
	c    net.Conn
	mu   sync.Mutex
	w    *bufio.Writer
	hdr  []byte
	err  atomic.Pointer[error]
	stop chan struct{}
	done chan struct{}
}

// rawDone is the Pending of every publish: done once buffered.
type rawDone struct{ err error }

var closedCh = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (rawDone) Done() <-chan struct{} { return closedCh }
func (d rawDone) Error() error        { return d.err }

func (p *rawPublisher) Publish(topic string, _ byte, payload []byte) loadgen.Pending {
	if e := p.err.Load(); e != nil {
		return rawDone{*e}
	}
	p.mu.Lock()
	p.hdr = appendRemaining(append(p.hdr[:0], 0x30), 2+len(topic)+len(payload))
	p.hdr = append(p.hdr, byte(len(topic)>>8), byte(len(topic)))
	p.w.Write(p.hdr)
	p.w.WriteString(topic)
	_, err := p.w.Write(payload)
	p.mu.Unlock()
	if err != nil {
		p.fail(err)
		return rawDone{err}
	}
	return rawDone{}
}

func (p *rawPublisher) fail(err error) { p.err.CompareAndSwap(nil, &err) }

func (p *rawPublisher) flushLoop() {
	defer close(p.done)
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		p.mu.Lock()
		err := p.w.Flush()
		p.mu.Unlock()
		if err != nil {
			p.fail(err)
			return
		}
	}
}

func (p *rawPublisher) Connected() bool { return p.err.Load() == nil }

// Close flushes what is buffered, says DISCONNECT and closes.
func (p *rawPublisher) Close() {
	close(p.stop)
	<-p.done
	p.mu.Lock()
	p.w.Write([]byte{0xe0, 0})
	p.w.Flush()
	p.mu.Unlock()
	p.c.Close()
}
