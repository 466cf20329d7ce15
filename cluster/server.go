package cluster

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/presence-dev/presence/engine"
)

// helloTimeout bounds the wait for a new connection's hello frame.
const helloTimeout = 10 * time.Second

// server accepts the data connections of the peers: forwarded batches are
// routed again by this node's table (dispatch: applied locally if owned,
// re-forwarded once otherwise), handoff records go to HandoffLocal.Adopt.
// One goroutine accepts, one per connection reads.
type server struct {
	r     *Router
	ln    net.Listener
	log   *slog.Logger
	clock func() time.Time

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

func newServer(r *Router, ln net.Listener, log *slog.Logger, clock func() time.Time) *server {
	return &server{r: r, ln: ln, log: log, clock: clock, conns: make(map[net.Conn]struct{})}
}

func (s *server) start() {
	s.wg.Go(s.accept)
}

func (s *server) accept() {
	var delay time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return
			}
			// Temporary (e.g. too many open files): back off like net/http.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("cluster: accept failed", slog.Any("err", err))
			time.Sleep(delay)
			continue
		}
		delay = 0
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			_ = c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Go(func() {
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				_ = c.Close()
			}()
			if err := s.serve(c); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				if ok, sup := s.r.limit.Allow("serve"); ok {
					s.log.Warn("cluster: data connection closed", slog.String("remote", c.RemoteAddr().String()),
						slog.Any("err", err), slog.Int("suppressed", sup))
				}
			}
		})
	}
}

// serve reads one connection until it ends.
func (s *server) serve(c net.Conn) error {
	br := bufio.NewReaderSize(c, 64<<10)
	maxSize := s.r.cfg.MaxFrameSize
	_ = c.SetReadDeadline(time.Now().Add(helloTimeout))
	typ, body, buf, err := readFrame(br, nil, maxSize)
	if err != nil {
		return err
	}
	if typ != frameHello {
		s.r.m.badFrames.Inc()
		return fmt.Errorf("%w: first frame type %d, want hello", ErrBadFrame, typ)
	}
	from, err := decodeHello(body)
	if err != nil {
		s.r.m.badFrames.Inc()
		return err
	}
	_ = c.SetReadDeadline(time.Time{})
	var (
		msgs     []msg
		recs     []engine.DeviceState
		received int   // handoff records on this connection
		adoptErr error // first Adopt error
	)
	for {
		typ, body, buf, err = readFrame(br, buf, maxSize)
		if err != nil {
			if errors.Is(err, ErrBadFrame) || errors.Is(err, ErrFrameTooLarge) {
				s.r.m.badFrames.Inc()
			}
			return err
		}
		switch typ {
		case frameBatch:
			msgs, err = decodeBatch(body, msgs[:0])
			if err != nil {
				s.r.m.badFrames.Inc()
				return fmt.Errorf("from %s: %w", from, err)
			}
			s.r.m.recvBatches.Inc()
			s.r.m.recvMessages.Add(len(msgs))
			s.r.m.recvBytes.Add(len(body) + frameHeaderLen)
			// Never wait for room while re-forwarding: this goroutine is
			// the peer's only reader, and TCP backpressure to it is enough.
			s.r.dispatch(msgs, time.Time{}, from)
			clear(msgs)
		case frameState:
			recs, err = decodeState(body, recs[:0])
			if err != nil {
				s.r.m.badFrames.Inc()
				return fmt.Errorf("from %s: %w", from, err)
			}
			received += len(recs)
			s.r.m.handoffRecv.Add(len(recs))
			if err := s.adopt(recs); err != nil && adoptErr == nil {
				adoptErr = err
			}
			clear(recs)
		case frameEnd:
			n, err := decodeCount(body)
			if err != nil {
				s.r.m.badFrames.Inc()
				return err
			}
			errText := ""
			switch {
			case adoptErr != nil:
				errText = adoptErr.Error()
			case n != received:
				errText = fmt.Sprintf("received %d records, sender says %d", received, n)
			}
			if errText != "" {
				s.r.m.handoffErrors.Inc()
				s.log.Warn("cluster: handoff incomplete", slog.String("from", from), slog.String("err", errText))
			} else {
				s.log.Info("cluster: handoff received", slog.String("from", from), slog.Int("devices", received))
			}
			_ = c.SetWriteDeadline(time.Now().Add(s.r.cfg.WriteTimeout))
			if _, err := c.Write(appendAck(nil, received, errText)); err != nil {
				return err
			}
			received, adoptErr = 0, nil
		default:
			s.r.m.badFrames.Inc()
			return fmt.Errorf("%w: unexpected frame type %d from %s", ErrBadFrame, typ, from)
		}
	}
}

// adopt hands records to the local engine. Records of partitions this node
// does not own (the table moved again meanwhile) are adopted all the same:
// a later handoff moves them on (PROTOCOL.md, "Ordering").
func (s *server) adopt(recs []engine.DeviceState) error {
	hl, ok := s.r.local.(HandoffLocal)
	if !ok {
		return errors.New("this node's engine does not support handoff")
	}
	return hl.Adopt(recs, s.clock())
}

// close stops accepting, closes every connection and waits for the
// goroutines.
func (s *server) close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	_ = s.ln.Close()
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}
