package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/presence-dev/presence/engine"
)

// server accepts the data connections of the peers: forwarded batches are
// routed again by this node's table (dispatch: applied locally if owned,
// re-forwarded once otherwise), handoff records go to Local.Adopt.
// One goroutine accepts, one per connection reads. What one connection can
// cost is bounded: the handshake within HandshakeTimeout (no frame past
// the hello is parsed from a peer that does not prove the cluster key, see
// secure.go), at most maxHandshakes of them at once and
// maxHandshakesPerSource from one address, MaxConns authenticated
// connections, IdleTimeout between frames, 2*WriteTimeout for a frame's
// body, MaxFrameSize bytes and MaxBatch messages or HandoffChunk records
// per frame. Handshakes have their own caps so that strangers who open
// connections and stay silent cannot take the peers' slots.
type server struct {
	r      *Router
	ln     net.Listener
	log    *slog.Logger
	clock  func() time.Time
	member func(name string, deadline time.Time) bool // whether a hello's sender is a member

	mu          sync.Mutex
	conns       map[net.Conn]struct{}
	handshaking map[string]int // connections in their handshake, by source host
	pending     int            // sum of handshaking
	authed      int            // connections past their handshake
	closed      bool
	wg          sync.WaitGroup
}

// Caps on connections in their handshake (see server).
const (
	maxHandshakes          = 64
	maxHandshakesPerSource = 8
)

func newServer(r *Router, ln net.Listener, log *slog.Logger, clock func() time.Time,
	member func(string, time.Time) bool) *server {
	return &server{r: r, ln: ln, log: log, clock: clock, member: member,
		conns: make(map[net.Conn]struct{}), handshaking: make(map[string]int)}
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
		src, refused, open := s.admit(c)
		if !open {
			_ = c.Close()
			return
		}
		if refused != nil {
			s.refuse(c, refused)
			_ = c.Close()
			continue
		}
		s.wg.Go(func() {
			var authed bool
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				if authed {
					s.authed--
				}
				s.mu.Unlock()
				_ = c.Close()
			}()
			err := s.serve(c, src, &authed)
			var he *handshakeError
			switch {
			case errors.As(err, &he):
				s.refuse(c, he)
			case err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed):
				if ok, sup := s.r.limit.Allow("serve"); ok {
					s.log.Warn("cluster: data connection closed", slog.String("remote", c.RemoteAddr().String()),
						slog.Any("err", err), slog.Int("suppressed", sup))
				}
			}
		})
	}
}

// refuse counts and logs (rate-limited) a connection closed before its
// handshake completed.
func (s *server) refuse(c net.Conn, he *handshakeError) {
	s.r.m.refused[he.reason].Inc()
	if ok, sup := s.r.limit.Allow("refused:" + string(he.reason)); ok {
		s.log.Warn("cluster: data connection refused", slog.String("remote", c.RemoteAddr().String()),
			slog.String("reason", string(he.reason)), slog.Any("err", he.err), slog.Int("suppressed", sup))
	}
}

// admit registers a new connection for its handshake, within the caps,
// and returns its source host; refused says why not, open is false once
// the server is closed.
func (s *server) admit(c net.Conn) (src string, refused *handshakeError, open bool) {
	src = sourceHost(c)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return src, nil, false
	}
	if s.pending >= maxHandshakes || s.handshaking[src] >= maxHandshakesPerSource {
		return src, &handshakeError{reason: rejectLimit, err: fmt.Errorf(
			"%d handshakes in progress, %d from this address (limits %d, %d)",
			s.pending, s.handshaking[src], maxHandshakes, maxHandshakesPerSource)}, true
	}
	s.conns[c] = struct{}{}
	s.pending++
	s.handshaking[src]++
	return src, nil, true
}

// sourceHost is the remote host of c, the key of the per-source cap.
func sourceHost(c net.Conn) string {
	host, _, err := net.SplitHostPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	return host
}

// serve authenticates one connection from src, then reads it until it
// ends; authed is set once it counts in MaxConns.
func (s *server) serve(raw net.Conn, src string, authed *bool) error {
	cfg := s.r.cfg
	reserve := func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.authed >= cfg.MaxConns {
			return false
		}
		s.authed++
		*authed = true
		return true
	}
	c, br, from, err := s.r.ch.accept(raw, s.r.self, maxNodeName, s.member, reserve, time.Now().Add(cfg.HandshakeTimeout))
	s.mu.Lock()
	s.pending--
	if s.handshaking[src]--; s.handshaking[src] == 0 {
		delete(s.handshaking, src)
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	var (
		buf      []byte
		msgs     []msg
		recs     []engine.DeviceState
		received int   // handoff records on this connection
		adoptErr error // first Adopt error

		wmu  sync.Mutex // writes: acks and query replies
		qsem = make(chan struct{}, maxQueriesPerConn)
		qwg  sync.WaitGroup
	)
	qctx, qdone := context.WithCancel(context.Background())
	defer func() {
		qdone() // queries in progress see their connection end
		qwg.Wait()
	}()
	for {
		var typ byte
		var body []byte
		typ, body, buf, err = s.readFrame(c, br, buf)
		if err != nil {
			if errors.Is(err, ErrBadFrame) || errors.Is(err, ErrFrameTooLarge) {
				s.r.m.badFrames.Inc()
			}
			return fmt.Errorf("from %s: %w", from, err)
		}
		switch typ {
		case frameBatch:
			msgs, err = decodeBatch(body, msgs[:0], cfg.MaxBatch)
			if err != nil {
				s.r.m.badFrames.Inc()
				return fmt.Errorf("from %s: %w", from, err)
			}
			if len(msgs) == 0 {
				continue // a keepalive (IdleTimeout)
			}
			s.r.m.recvBatches.Inc()
			s.r.m.recvMessages.Add(len(msgs))
			s.r.m.recvBytes.Add(len(body) + frameHeaderLen)
			// Never wait for room while re-forwarding: this goroutine is
			// the peer's only reader, and TCP backpressure to it is enough.
			s.r.dispatch(msgs, time.Time{}, from)
			clear(msgs)
		case frameState:
			recs, err = decodeState(body, recs[:0], cfg.HandoffChunk)
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
				return fmt.Errorf("from %s: %w", from, err)
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
			wmu.Lock()
			_ = c.SetWriteDeadline(time.Now().Add(cfg.WriteTimeout))
			_, err = c.Write(appendAck(nil, received, errText))
			wmu.Unlock()
			if err != nil {
				return err
			}
			received, adoptErr = 0, nil
		case frameQuery:
			if err := s.serveQuery(qctx, c, &wmu, qsem, &qwg, body); err != nil {
				s.r.m.badFrames.Inc()
				return fmt.Errorf("from %s: %w", from, err)
			}
		default:
			s.r.m.badFrames.Inc()
			return fmt.Errorf("%w: unexpected frame type %d from %s", ErrBadFrame, typ, from)
		}
	}
}

// readFrame reads the next frame: its header within IdleTimeout, then its
// body within 2*WriteTimeout (what the sender allows itself to write it).
func (s *server) readFrame(c net.Conn, br *bufio.Reader, buf []byte) (typ byte, body, newBuf []byte, err error) {
	cfg := s.r.cfg
	_ = c.SetReadDeadline(time.Now().Add(cfg.IdleTimeout))
	if _, err := br.Peek(frameHeaderLen); err != nil {
		if errors.Is(err, io.EOF) && br.Buffered() > 0 {
			err = io.ErrUnexpectedEOF // a header cut short
		}
		return 0, nil, buf, err
	}
	_ = c.SetReadDeadline(time.Now().Add(2 * cfg.WriteTimeout))
	return readFrame(br, buf, cfg.MaxFrameSize)
}

// adopt hands records to the local engine. Records of partitions this node
// does not own (the table moved again meanwhile) are adopted all the same:
// a later handoff moves them on (PROTOCOL.md, "Ordering").
func (s *server) adopt(recs []engine.DeviceState) error {
	err := s.r.local.Adopt(recs, s.clock())
	s.r.adopted(recs) // the controls that came before their device
	return err
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
