package cluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/presence-dev/presence/engine"
)

// Queries: request and answer between nodes, for an API that answers for
// the whole cluster from any node (PROTOCOL.md, "Queries"). They travel on
// a data connection of their own per peer, authenticated like the others,
// so that a query never waits behind telemetry or a handoff:
//
//	query = id:uvarint kindLen:uvarint kind body
//	reply = id:uvarint status:u8 body          (status 0: body is the answer; else body is the error text)
//
// A connection carries any number of queries at once; the server answers
// each as it completes (at most maxQueriesPerConn at a time), so replies
// may come in another order than the queries.

// ErrNoAnswer is wrapped by a query's error when the peer could not be
// asked or did not answer in time.
var ErrNoAnswer = errors.New("cluster: no answer")

// QueryHandler answers one kind of query with the body of the reply. body
// is the caller's; a handler must not keep it. It may run on several
// goroutines at once.
type QueryHandler func(ctx context.Context, body []byte) ([]byte, error)

const (
	maxQueriesPerConn = 16
	maxQueryKind      = 32
	kindDevices       = "devices"
	replyOK           = 0
	replyError        = 1
	replyMore         = 2 // a stream's item; more follow
)

// StreamHandler answers a stream query: it calls send for every item
// until ctx is done (the asking node went away) or it has nothing more,
// and returns. send fails once the connection is gone.
type StreamHandler func(ctx context.Context, body []byte, send func([]byte) error) error

// HandleStream registers the handler of a stream kind (see Node.Stream);
// before Start.
func (n *Node) HandleStream(kind string, h StreamHandler) {
	if len(kind) == 0 || len(kind) > maxQueryKind || kind == kindDevices || n.router.queries[kind] != nil {
		panic("cluster: invalid or reserved stream kind " + kind)
	}
	n.router.streams[kind] = h
}

// HandleQuery registers the handler of kind (1..32 bytes). Call it before
// Start; "devices" is the node's own (Lookup).
func (n *Node) HandleQuery(kind string, h QueryHandler) {
	if len(kind) == 0 || len(kind) > maxQueryKind || kind == kindDevices || n.router.streams[kind] != nil {
		panic("cluster: invalid or reserved query kind " + kind)
	}
	n.router.queries[kind] = h
}

// appendQuery appends a query frame; budget is how long the asker waits
// (0: a stream, no limit), so that the answering node gives up with it.
func appendQuery(buf []byte, id uint64, kind string, budget time.Duration, body []byte) []byte {
	buf, start := beginFrame(buf, frameQuery)
	buf = binary.AppendUvarint(buf, id)
	buf = binary.AppendUvarint(buf, uint64(len(kind)))
	buf = append(buf, kind...)
	buf = binary.AppendUvarint(buf, uint64(max(budget.Milliseconds(), 0)))
	buf = append(buf, body...)
	return endFrame(buf, start)
}

func decodeQuery(b []byte) (id uint64, kind string, budget time.Duration, body []byte, err error) {
	d := decoder{b: b}
	id = d.uvarint()
	n := d.uvarint()
	if n > maxQueryKind {
		return 0, "", 0, nil, fmt.Errorf("%w: query kind of %d bytes", ErrBadFrame, n)
	}
	kind = d.str(n)
	ms := d.uvarint()
	if d.err != nil || kind == "" || ms > 1<<40 {
		return 0, "", 0, nil, fmt.Errorf("%w: query", ErrBadFrame)
	}
	return id, kind, time.Duration(ms) * time.Millisecond, d.b, nil
}

func appendReply(buf []byte, id uint64, status byte, body []byte) []byte {
	buf, start := beginFrame(buf, frameReply)
	buf = binary.AppendUvarint(buf, id)
	buf = append(buf, status)
	buf = append(buf, body...)
	return endFrame(buf, start)
}

func decodeReply(b []byte) (id uint64, status byte, body []byte, err error) {
	d := decoder{b: b}
	id = d.uvarint()
	status = d.byte()
	if d.err != nil {
		return 0, 0, nil, fmt.Errorf("%w: reply", ErrBadFrame)
	}
	return id, status, d.b, nil
}

// serveQuery answers one query frame of a connection: in its own goroutine
// (at most maxQueriesPerConn per connection, sem), its reply written under
// wmu. body is copied: the frame buffer is reused.
func (s *server) serveQuery(ctx context.Context, c net.Conn, wmu *sync.Mutex, sem chan struct{}, wg *sync.WaitGroup,
	frame []byte) error {
	id, kind, budget, body, err := decodeQuery(frame)
	if err != nil {
		return err
	}
	body = bytes.Clone(body)
	qctx, cancel := ctx, context.CancelFunc(func() {})
	if budget > 0 { // the asker's wait: no use answering later
		qctx, cancel = context.WithTimeout(ctx, budget)
	}
	select {
	case sem <- struct{}{}:
	case <-ctx.Done():
		cancel()
		return ctx.Err()
	}
	if h := s.r.streams[kind]; h != nil {
		wg.Go(func() {
			defer cancel()
			defer func() { <-sem }()
			s.r.m.queriesServed.Inc()
			write := func(status byte, b []byte) error {
				wmu.Lock()
				defer wmu.Unlock()
				_ = c.SetWriteDeadline(time.Now().Add(s.r.cfg.WriteTimeout))
				_, err := c.Write(appendReply(nil, id, status, b))
				return err
			}
			err := h(qctx, body, func(b []byte) error { return write(replyMore, b) })
			if err != nil {
				_ = write(replyError, []byte(err.Error()))
			} else {
				_ = write(replyOK, nil)
			}
		})
		return nil
	}
	wg.Go(func() {
		defer cancel()
		defer func() { <-sem }()
		if qctx.Err() != nil {
			return // the asker gave up while this waited for a slot
		}
		s.r.m.queriesServed.Inc()
		status, out := byte(replyOK), []byte(nil)
		ans, err := s.r.answer(qctx, kind, body)
		if err != nil {
			status, out = replyError, []byte(err.Error())
		} else {
			out = ans
		}
		reply := appendReply(nil, id, status, out)
		if len(reply)-4 > s.r.cfg.MaxFrameSize {
			reply = appendReply(nil, id, replyError, []byte("answer larger than MaxFrameSize"))
		}
		wmu.Lock()
		defer wmu.Unlock()
		_ = c.SetWriteDeadline(time.Now().Add(s.r.cfg.WriteTimeout))
		if _, err := c.Write(reply); err != nil {
			_ = c.Close() // the reader then ends the connection
		}
	})
	return nil
}

// answer runs the handler of kind.
func (r *Router) answer(ctx context.Context, kind string, body []byte) ([]byte, error) {
	if kind == kindDevices {
		return r.answerDevices(body)
	}
	h := r.queries[kind]
	if h == nil {
		return nil, fmt.Errorf("unknown query kind %q", kind)
	}
	return h(ctx, body)
}

// answerDevices looks ids up in the local engine: the body is count:uvarint
// then uvarint-prefixed ids, the answer a state body (frame.go).
func (r *Router) answerDevices(body []byte) ([]byte, error) {
	ll := r.local
	d := decoder{b: body}
	n := d.uvarint()
	if d.err != nil || n > uint64(len(body)) {
		return nil, fmt.Errorf("%w: devices query", ErrBadFrame)
	}
	ids := make([]string, 0, n)
	for range n {
		ids = append(ids, d.str(d.uvarint()))
	}
	if d.err != nil || len(d.b) != 0 {
		return nil, fmt.Errorf("%w: devices query", ErrBadFrame)
	}
	states := ll.Devices(ids, make([]engine.DeviceState, 0, len(ids)))
	for i := range states {
		states[i].ID = ids[i] // an unknown id comes back without it
	}
	// About 30 bytes a record with short ids; grown if longer.
	return appendState(make([]byte, 0, frameHeaderLen+16+len(states)*32), states)[frameHeaderLen:], nil
}

// querier keeps one query connection per peer, dialed on first use and
// again after it broke.
type querier struct {
	n       *Node
	mu      sync.Mutex
	conns   map[string]*queryConn
	dialing map[string]chan struct{} // closed when the dial in flight ends
	closed  bool
	wg      sync.WaitGroup
}

type queryConn struct {
	peer string
	conn net.Conn
	wsem chan struct{} // cap 1: the right to write, taken with a deadline
	used atomic.Int64  // unix ns of the last query written

	mu      sync.Mutex
	next    uint64
	pending map[uint64]chan queryResult
	err     error // set when the connection broke; no new queries
}

type queryResult struct {
	body []byte
	err  error
	lost bool // the connection broke before the reply
}

func newQuerier(n *Node) *querier {
	return &querier{n: n, conns: make(map[string]*queryConn), dialing: make(map[string]chan struct{})}
}

// conn returns the live connection to peer, dialing it if needed, one dial
// per peer at a time (the others wait for it: a burst of first queries
// must not open a handshake each, which the peer caps), until ctx is done.
// A connection idle for half the server's IdleTimeout is replaced rather
// than used: the server may be closing it.
func (q *querier) conn(ctx context.Context, peer string, deadline time.Time) (*queryConn, error) {
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return nil, ErrClosed
		}
		if qc := q.conns[peer]; qc != nil {
			if time.Since(time.Unix(0, qc.used.Load())) < q.n.cfg.IdleTimeout/2 {
				q.mu.Unlock()
				return qc, nil
			}
			delete(q.conns, peer)
			_ = qc.conn.Close() // its reader fails what is pending (nothing, idle)
		}
		wait, busy := q.dialing[peer]
		if !busy {
			wait = make(chan struct{})
			q.dialing[peer] = wait
			q.mu.Unlock()
			qc, err := q.dial(peer, deadline)
			q.mu.Lock()
			delete(q.dialing, peer)
			close(wait)
			q.mu.Unlock()
			return qc, err
		}
		q.mu.Unlock()
		select {
		case <-wait: // look again: connected, or dial ourselves
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %s: waiting for the connection: %v", ErrNoAnswer, peer, ctx.Err())
		}
	}
}

// dial opens and registers the query connection to peer.
func (q *querier) dial(peer string, deadline time.Time) (*queryConn, error) {
	addr := q.n.router.route.Load().addrs[peer]
	if addr == "" {
		return nil, fmt.Errorf("%w: %s: no data address", ErrNoAnswer, peer)
	}
	raw, err := q.n.cfg.dial(addr, deadline)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrNoAnswer, peer, err)
	}
	hs := time.Now().Add(q.n.cfg.HandshakeTimeout)
	if deadline.Before(hs) {
		hs = deadline
	}
	c, err := q.n.router.ch.dial(raw, q.n.cfg.NodeName, peer, hs)
	if err != nil {
		q.n.m.handshakeErr.Inc()
		return nil, fmt.Errorf("%w: %s: %v", ErrNoAnswer, peer, err)
	}
	qc := &queryConn{peer: peer, conn: c, pending: make(map[uint64]chan queryResult), wsem: make(chan struct{}, 1)}
	qc.used.Store(time.Now().UnixNano())
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		_ = c.Close()
		return nil, ErrClosed
	}
	q.conns[peer] = qc
	q.wg.Go(func() { q.read(qc) })
	q.mu.Unlock()
	return qc, nil
}

// read delivers the replies of qc until it breaks, then fails what is
// pending and forgets qc.
func (q *querier) read(qc *queryConn) {
	br := bufio.NewReaderSize(qc.conn, 64<<10)
	var err error
	for {
		var typ byte
		var body []byte
		typ, body, _, err = readFrame(br, nil, q.n.cfg.MaxFrameSize)
		if err != nil {
			break
		}
		if typ != frameReply {
			err = fmt.Errorf("%w: frame type %d on a query connection", ErrBadFrame, typ)
			break
		}
		id, status, ans, derr := decodeReply(body)
		if derr != nil {
			err = derr
			break
		}
		qc.mu.Lock()
		ch := qc.pending[id]
		delete(qc.pending, id)
		qc.mu.Unlock()
		if ch == nil {
			continue // its caller gave up
		}
		if status == replyOK {
			ch <- queryResult{body: ans}
		} else {
			ch <- queryResult{err: fmt.Errorf("%s: %s", qc.peer, ans)}
		}
	}
	_ = qc.conn.Close()
	q.mu.Lock()
	if q.conns[qc.peer] == qc {
		delete(q.conns, qc.peer)
	}
	q.mu.Unlock()
	qc.mu.Lock()
	qc.err = err
	for id, ch := range qc.pending {
		ch <- queryResult{err: fmt.Errorf("%w: %s: connection lost: %v", ErrNoAnswer, qc.peer, err), lost: true}
		delete(qc.pending, id)
	}
	qc.mu.Unlock()
}

// ask sends one query to peer and waits for its reply until ctx is done.
// A query lost with its connection before any reply (the server closed
// it, idle) is sent once more on a new one: queries only read.
func (q *querier) ask(ctx context.Context, peer, kind string, body []byte) ([]byte, error) {
	ans, retry, err := q.ask1(ctx, peer, kind, body)
	if retry && ctx.Err() == nil {
		ans, _, err = q.ask1(ctx, peer, kind, body)
	}
	if err != nil {
		q.n.m.queryErrors.Inc()
	}
	return ans, err
}

// ask1 is one attempt of ask; retry says the connection was lost before
// the reply.
func (q *querier) ask1(ctx context.Context, peer, kind string, body []byte) (ans []byte, retry bool, err error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(q.n.cfg.QueryTimeout)
	}
	qc, err := q.conn(ctx, peer, deadline)
	if err != nil {
		return nil, false, err
	}
	ch := make(chan queryResult, 1)
	qc.mu.Lock()
	if qc.err != nil {
		qc.mu.Unlock()
		return nil, true, fmt.Errorf("%w: %s: %v", ErrNoAnswer, peer, qc.err)
	}
	qc.next++
	id := qc.next
	qc.pending[id] = ch
	qc.mu.Unlock()
	forget := func() {
		qc.mu.Lock()
		delete(qc.pending, id)
		qc.mu.Unlock()
	}
	frame := appendQuery(nil, id, kind, time.Until(deadline), body)
	select { // the right to write, within the budget
	case qc.wsem <- struct{}{}:
	case <-ctx.Done():
		forget()
		return nil, false, fmt.Errorf("%w: %s: waiting to write: %v", ErrNoAnswer, peer, ctx.Err())
	}
	wd := time.Now().Add(q.n.cfg.WriteTimeout)
	if deadline.Before(wd) {
		wd = deadline
	}
	_ = qc.conn.SetWriteDeadline(wd)
	_, err = qc.conn.Write(frame)
	<-qc.wsem
	if err != nil {
		forget()
		_ = qc.conn.Close() // read fails the others and forgets qc
		return nil, false, fmt.Errorf("%w: %s: %v", ErrNoAnswer, peer, err)
	}
	qc.used.Store(time.Now().UnixNano())
	q.n.m.queriesSent.Inc()
	select {
	case r := <-ch:
		return r.body, r.lost, r.err
	case <-ctx.Done():
		forget()
		return nil, false, fmt.Errorf("%w: %s within the budget: %v", ErrNoAnswer, peer, ctx.Err())
	}
}

func (q *querier) close() {
	q.mu.Lock()
	q.closed = true
	for _, qc := range q.conns {
		_ = qc.conn.Close()
	}
	q.mu.Unlock()
	q.wg.Wait()
}

// Stream runs a stream query of kind on peer, on a connection of its own,
// and calls fn with every item (fn must not keep the slice) until ctx is done, fn returns an error, or
// the peer ends the stream (nil) or fails (its error). A connected stream
// keeps its connection alive while idle.
func (n *Node) Stream(ctx context.Context, peer, kind string, body []byte, fn func([]byte) error) error {
	addr := n.router.route.Load().addrs[peer]
	if addr == "" {
		return fmt.Errorf("%w: %s: no data address", ErrNoAnswer, peer)
	}
	deadline := time.Now().Add(n.cfg.DialTimeout)
	raw, err := n.cfg.dial(addr, deadline)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrNoAnswer, peer, err)
	}
	c, err := n.router.ch.dial(raw, n.cfg.NodeName, peer, time.Now().Add(n.cfg.HandshakeTimeout))
	if err != nil {
		n.m.handshakeErr.Inc()
		return fmt.Errorf("%w: %s: %v", ErrNoAnswer, peer, err)
	}
	defer c.Close()
	var wmu sync.Mutex
	write := func(frame []byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		_ = c.SetWriteDeadline(time.Now().Add(n.cfg.WriteTimeout))
		_, err := c.Write(frame)
		return err
	}
	if err := write(appendQuery(nil, 1, kind, 0, body)); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrNoAnswer, peer, err)
	}
	n.m.queriesSent.Inc()
	stop := make(chan struct{})
	defer close(stop)
	go func() { // keepalives for the server's IdleTimeout; close on ctx
		t := time.NewTicker(n.cfg.IdleTimeout / 4)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-ctx.Done():
				_ = c.Close()
				return
			case <-n.stop:
				_ = c.Close()
				return
			case <-t.C:
				_ = write(appendBatch(nil, nil))
			}
		}
	}()
	br := bufio.NewReaderSize(c, 64<<10)
	var buf []byte
	for {
		var typ byte
		var frame []byte
		typ, frame, buf, err = readFrame(br, buf, n.cfg.MaxFrameSize)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("%w: %s: stream: %v", ErrNoAnswer, peer, err)
		}
		if typ != frameReply {
			return fmt.Errorf("%w: frame type %d on a stream", ErrBadFrame, typ)
		}
		_, status, item, err := decodeReply(frame)
		if err != nil {
			return err
		}
		switch status {
		case replyMore:
			if err := fn(item); err != nil {
				return err
			}
		case replyOK:
			return nil
		default:
			return fmt.Errorf("%s: %s", peer, item)
		}
	}
}

// Answer is one member's reply to Node.Ask.
type Answer struct {
	Node string
	Body []byte
	Err  error // wraps ErrNoAnswer when the member could not be asked in time
}

// Ask sends a query of kind to every member of the current table, this
// node included (its handler is called directly), in parallel, and returns
// their answers in the table's order. A member that does not answer before
// ctx is done has an Err.
func (n *Node) Ask(ctx context.Context, kind string, body []byte) []Answer {
	members := n.askable()
	out := make([]Answer, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		out[i].Node = m
		wg.Go(func() {
			if m == n.cfg.NodeName {
				out[i].Body, out[i].Err = n.router.answer(ctx, kind, body)
				return
			}
			out[i].Body, out[i].Err = n.q.ask(ctx, m, kind, body)
		})
	}
	wg.Wait()
	return out
}

// askable is the members of the current table (this node alone before
// Start).
func (n *Node) askable() []string {
	if t := n.router.Table(); t != nil {
		return t.Members()
	}
	return []string{n.cfg.NodeName}
}

// Lookup returns the state of each id, in order, asking each id's owner
// (one query per owner, in parallel, until ctx is done). An id whose owner
// does not know it is asked of the other members as well: during a
// handoff or a rebuild a device may still be where it was; the newest
// answer wins, so a device is answered once and not reported unknown while
// a member knows it. missing lists the members that did not answer in
// time: their ids come back StatusUnknown. The states are appended to dst.
// ids must be valid engine ids.
func (n *Node) Lookup(ctx context.Context, ids []string, dst []engine.DeviceState) (states []engine.DeviceState, missing []string) {
	start := len(dst)
	dst = slices.Grow(dst, len(ids))[:start+len(ids)]
	states = dst[start:]
	for i, id := range ids {
		states[i] = engine.DeviceState{ID: id}
	}
	rt := n.router.route.Load()
	if rt.alone {
		return n.lookupLocal(ids, dst[:start]), nil
	}
	byOwner := make(map[string][]int) // member -> indexes into ids
	for i, id := range ids {
		owner := n.cfg.NodeName
		if p := rt.peerOf(id); p != nil {
			owner = p.name
		}
		byOwner[owner] = append(byOwner[owner], i)
	}
	var failed map[string]bool
	if len(byOwner) == 1 && byOwner[n.cfg.NodeName] != nil {
		// Every id is this node's: no goroutine.
		n.lookupLocal(ids, states[:0])
		failed = map[string]bool{}
	} else {
		// The owners get three quarters of the budget, so that a member
		// that does not answer leaves time to ask the others for strays.
		rctx, cancel := ctx, context.CancelFunc(func() {})
		if d, ok := ctx.Deadline(); ok {
			rctx, cancel = context.WithDeadline(ctx, time.Now().Add(time.Until(d)*3/4))
		}
		failed = n.lookupRound(rctx, ids, states, byOwner)
		cancel()
	}
	// Second round: the unknown ids, asked of every member that did not
	// own them.
	var unknown []int
	for i := range states {
		if states[i].Status == engine.StatusUnknown {
			unknown = append(unknown, i)
		}
	}
	if len(unknown) > 0 && len(n.askable()) > 1 && ctx.Err() == nil {
		others := make(map[string][]int)
		for _, m := range n.askable() {
			if failed[m] {
				continue
			}
			for _, i := range unknown {
				if owner, _ := ownerOf(rt, n.cfg.NodeName, ids[i]); owner != m {
					others[m] = append(others[m], i)
				}
			}
		}
		// A member that does not answer here is not missing from the
		// answer: it does not own these ids, their owners answered.
		n.lookupRound(ctx, ids, states, others)
	}
	for m := range failed {
		missing = append(missing, m)
	}
	slices.Sort(missing)
	return dst, missing
}

// lookupLocal appends the local engine's answers for ids to dst.
func (n *Node) lookupLocal(ids []string, dst []engine.DeviceState) []engine.DeviceState {
	start := len(dst)
	dst = n.local.Devices(ids, dst)
	for i := range dst[start:] {
		dst[start+i].ID = ids[i] // an unknown one comes back without it
	}
	return dst
}

func ownerOf(rt *routing, self, id string) (string, bool) {
	if p := rt.peerOf(id); p != nil {
		return p.name, false
	}
	return self, true
}

// lookupRound asks each member of byOwner for its ids, in parallel, and
// merges the answers into states: a known state replaces an unknown one,
// and a newer last_seen an older one. It returns the members that failed.
func (n *Node) lookupRound(ctx context.Context, ids []string, states []engine.DeviceState,
	byOwner map[string][]int) map[string]bool {
	type result struct {
		member string
		idx    []int
		got    []engine.DeviceState
		err    error
	}
	results := make(chan result, len(byOwner))
	for m, idx := range byOwner {
		go func() {
			sub := make([]string, len(idx))
			for j, i := range idx {
				sub[j] = ids[i]
			}
			r := result{member: m, idx: idx}
			if m == n.cfg.NodeName {
				r.got = n.local.Devices(sub, make([]engine.DeviceState, 0, len(sub)))
			} else {
				body := binary.AppendUvarint(nil, uint64(len(sub)))
				for _, id := range sub {
					body = binary.AppendUvarint(body, uint64(len(id)))
					body = append(body, id...)
				}
				var ans []byte
				if ans, r.err = n.q.ask(ctx, m, kindDevices, body); r.err == nil {
					r.got, r.err = decodeState(ans, make([]engine.DeviceState, 0, len(sub)), len(sub))
					if r.err == nil && len(r.got) != len(sub) {
						r.err = fmt.Errorf("%s answered %d of %d devices", m, len(r.got), len(sub))
					}
				}
			}
			results <- r
		}()
	}
	failed := make(map[string]bool)
	for range byOwner {
		r := <-results
		if r.err != nil {
			failed[r.member] = true
			if ok, sup := n.limit.Allow("lookup:" + r.member); ok {
				n.log.Warn("cluster: lookup without a member's answer", slog.String("member", r.member),
					slog.Any("err", r.err), slog.Int("suppressed", sup))
			}
			continue
		}
		for j, i := range r.idx {
			g := r.got[j]
			if g.Status == engine.StatusUnknown {
				continue
			}
			g.ID = ids[i]
			if cur := &states[i]; cur.Status == engine.StatusUnknown || g.LastSeen.After(cur.LastSeen) {
				*cur = g
			}
		}
	}
	return failed
}
