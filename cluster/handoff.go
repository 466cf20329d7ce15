package cluster

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/presence-dev/presence/engine"
)

// handoff streams the devices this node holds but does not own to their
// owners, and forgets them once the owner acknowledged. A pass runs after
// every table change (in its own goroutine, run), once more a few seconds
// after a pass that moved devices (settleDelay), and synchronously in a
// graceful Close. Because a pass looks at every local
// device rather than at the partitions that just moved, it also sweeps up
// strays: records adopted for a partition that moved again meanwhile, or
// left behind by a failed pass, which is retried after MaxBackoff.
type handoff struct {
	n    *Node
	wake chan struct{} // cap 1
	busy chan struct{} // cap 1: held during a pass (a lock Close can share)
}

func newHandoff(n *Node) *handoff {
	return &handoff{n: n, wake: make(chan struct{}, 1), busy: make(chan struct{}, 1)}
}

func (h *handoff) trigger() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

func (h *handoff) run() {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-h.n.stop:
			return
		case <-h.wake:
		case <-retry.C:
		}
		moved, err := h.pass(time.Now().Add(h.n.cfg.HandoffTimeout))
		switch {
		case err != nil:
			h.n.m.handoffErrors.Inc()
			h.n.log.Warn("cluster: handoff failed, will retry", slog.Any("err", err),
				slog.Duration("retry_in", h.n.cfg.MaxBackoff))
			retry.Reset(h.n.cfg.MaxBackoff)
		case moved > 0:
			// One more pass once the other nodes surely have the new table:
			// it sweeps devices that messages routed by a stale table
			// re-created here after this pass.
			retry.Reset(settleDelay(&h.n.cfg))
		}
	}
}

// settleDelay is how long after a pass that moved devices the sweep pass
// runs: a few debounce periods plus gossip time.
func settleDelay(cfg *Config) time.Duration { return 4*cfg.Debounce + time.Second }

// pass hands off every local device owned elsewhere, each transfer bounded
// by deadline. It returns how many devices it handed off, and the joined
// errors of the failed transfers; their devices stay here (and keep being
// timed) until a later pass succeeds.
func (h *handoff) pass(deadline time.Time) (moved int, err error) {
	hl := h.n.local
	h.busy <- struct{}{}
	defer func() { <-h.busy }()
	rt := h.n.router.route.Load()
	if rt.table == nil || len(rt.table.members) == 0 {
		return 0, nil
	}
	self := h.n.cfg.NodeName
	transfers := make(map[string]*transfer)
	var errs []error
	hl.Range(func(st engine.DeviceState) bool {
		owner := rt.table.OwnerOf(st.ID)
		if owner == self {
			return true
		}
		tr := transfers[owner]
		if tr == nil {
			tr = &transfer{h: h, to: owner, addr: rt.addrs[owner], deadline: deadline}
			transfers[owner] = tr
		}
		tr.add(st)
		return time.Now().Before(deadline)
	})
	var total int
	for _, tr := range transfers {
		if err := tr.finish(); err != nil {
			errs = append(errs, fmt.Errorf("to %s: %w", tr.to, err))
			continue
		}
		// Forget what the owner acknowledged, unless the partition came
		// back to us meanwhile (then both hold it until the next pass).
		cur := h.n.router.Table()
		ids := tr.ids[:0]
		for _, id := range tr.ids {
			if cur.OwnerOf(id) != self {
				ids = append(ids, id)
			}
		}
		hl.Remove(ids...)
		h.n.m.handoffRemoved.Add(len(ids))
		total += len(ids)
		h.n.log.Info("cluster: handed off", slog.String("to", tr.to), slog.Int("devices", len(ids)))
	}
	if total > 0 {
		h.n.log.Info("cluster: handoff pass done", slog.Int("devices", total), slog.Int("peers", len(transfers)))
	}
	return total, errors.Join(errs...)
}

// transfer is one handoff stream to one owner, on its own connection:
// hello, state frames of HandoffChunk records, end, then the owner's ack.
// The connection is dialed at the first full chunk.
type transfer struct {
	h        *handoff
	to, addr string
	deadline time.Time

	conn  net.Conn
	bw    *bufio.Writer
	chunk []engine.DeviceState
	buf   []byte
	ids   []string // every record sent
	err   error    // first failure; later records are skipped
}

func (tr *transfer) add(st engine.DeviceState) {
	if tr.err != nil {
		return
	}
	tr.chunk = append(tr.chunk, st)
	if len(tr.chunk) >= tr.h.n.cfg.HandoffChunk {
		tr.flushChunk()
	}
}

func (tr *transfer) flushChunk() {
	if tr.err != nil || len(tr.chunk) == 0 {
		return
	}
	if tr.conn == nil {
		if tr.addr == "" {
			tr.err = errors.New("no data address")
			return
		}
		raw, err := tr.h.n.cfg.dial(tr.addr, tr.deadline)
		if err != nil {
			tr.err = err
			return
		}
		n := tr.h.n
		hs := time.Now().Add(n.cfg.HandshakeTimeout)
		if !tr.deadline.IsZero() && tr.deadline.Before(hs) {
			hs = tr.deadline
		}
		c, err := n.router.ch.dial(raw, n.cfg.NodeName, tr.to, hs)
		if err != nil {
			n.m.handshakeErr.Inc()
			tr.err = err
			return
		}
		_ = c.SetDeadline(tr.deadline)
		tr.conn, tr.bw = c, bufio.NewWriterSize(c, 64<<10)
	}
	// Each frame goes out whole: the owner allows 2*WriteTimeout for a
	// frame's body once its header is in, and this transfer may wait for
	// others' acks (or Range) before its next chunk.
	tr.buf = appendState(tr.buf[:0], tr.chunk)
	if _, tr.err = tr.bw.Write(tr.buf); tr.err != nil {
		return
	}
	if tr.err = tr.bw.Flush(); tr.err != nil {
		return
	}
	for i := range tr.chunk {
		tr.ids = append(tr.ids, tr.chunk[i].ID)
	}
	tr.h.n.m.handoffSent.Add(len(tr.chunk))
	clear(tr.chunk)
	tr.chunk = tr.chunk[:0]
}

// finish sends the last chunk and the end frame and waits for the ack.
func (tr *transfer) finish() error {
	tr.flushChunk()
	defer func() {
		if tr.conn != nil {
			_ = tr.conn.Close()
		}
	}()
	if tr.err != nil {
		return tr.err
	}
	if _, err := tr.bw.Write(appendEnd(nil, len(tr.ids))); err != nil {
		return err
	}
	if err := tr.bw.Flush(); err != nil {
		return err
	}
	typ, body, _, err := readFrame(tr.conn, nil, 64<<10)
	if err != nil {
		return fmt.Errorf("waiting for ack: %w", err)
	}
	if typ != frameAck {
		return fmt.Errorf("%w: frame type %d, want ack", ErrBadFrame, typ)
	}
	n, errText, err := decodeAck(body)
	if err != nil {
		return err
	}
	if errText != "" {
		return fmt.Errorf("owner refused: %s", errText)
	}
	if n != len(tr.ids) {
		return fmt.Errorf("owner acknowledged %d of %d records", n, len(tr.ids))
	}
	return nil
}
