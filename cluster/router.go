package cluster

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/ratelog"
)

// Local is what the cluster needs of this node's engine (an
// *engine.Engine: checked at compile time in node.go): it applies the
// messages and controls of the devices this node owns, answers lookups of
// them, and hands them off and takes them over.
type Local interface {
	TouchBatch(batch []engine.Touch) (rejected int)
	MarkOffline(id string, at time.Time) error
	SetStatus(id string, s engine.Status, at time.Time, cause engine.Cause) error
	// The API's device controls: a device's own timeout (set and
	// cleared) and decommission.
	SetTimeout(id string, d time.Duration) error
	ClearTimeout(id string) error
	Decommission(id string, at time.Time) error
	// Devices appends the state of each id to dst, in order (an unknown
	// one without its id).
	Devices(ids []string, dst []engine.DeviceState) []engine.DeviceState
	// Range calls fn with every device's state until fn returns false,
	// without holding locks while fn runs (engine.Engine.Range).
	Range(fn func(engine.DeviceState) bool)
	// Adopt takes over devices handed off by their previous owner, as of
	// now. It must merge with what this node already knows (touches that
	// were forwarded here before the records arrived): last_seen never
	// moves back and a known device keeps its live status, unless the
	// record is online with a newer last-seen (engine.Engine.Adopt). An
	// online record whose deadline passed goes offline at once with cause
	// engine.CauseHandoff; the others are armed for the time they have
	// left.
	Adopt(recs []engine.DeviceState, now time.Time) error
	// Remove forgets devices handed off to another node: no more timer, no
	// transition, no write-behind for them here. It returns how many it
	// knew.
	Remove(ids ...string) int
}

// Router routes ingest's messages to the owner of each device: the local
// engine for the partitions this node owns, a peer's queue for the others
// (or nowhere, with Config.ReadsAll: the owner reads them itself). It
// implements ingest.Handler. It is built and owned by a Node.
//
// Backpressure: TouchBatch and MarkOffline never block on the network.
// Messages for a peer go to its bounded queue (Config.QueueSize); when the
// queue is full the caller waits up to Config.EnqueueWait in all for room
// (only while the peer is connected: a dead or unreachable peer never makes
// ingest wait), then drops the rest, counted as reason queue_full. A
// message is forwarded at most once end to end (see PROTOCOL.md): a
// connection that fails loses what was being written to it (send_error).
//
// Touch ids are kept (not copied) until sent: they are Go strings, which
// ingest's Touch.ID substrings of MQTT topics are.
type Router struct {
	cfg *Config
	ch  *channel // opens and accepts data connections (plain until New sets the keys)
	// queries are the handlers of Node.HandleQuery, set before Start
	queries map[string]QueryHandler
	streams map[string]StreamHandler
	self    string
	local   Local
	log     *slog.Logger
	m       *clusterMetrics
	limit   *ratelog.Limiter[string]

	route atomic.Pointer[routing]
	hold  hold // partitions waiting for their rebuild
	// pending are the controls received for devices not here yet (a
	// handoff's record still on its way)
	pending pendingControls

	mu     sync.Mutex // guards peers and closed, serializes setTable
	peers  map[string]*peer
	closed bool
	wg     sync.WaitGroup // peer sender goroutines

	scratch sync.Pool // *scratch
}

// routing is an immutable snapshot: the table and, per partition, the peer
// that owns it (nil: this node, or no table yet).
type routing struct {
	table  *Table
	owners []*peer
	alone  bool              // every partition is ours (or no table yet)
	addrs  map[string]string // member -> data address
}

func (rt *routing) peerOf(id string) *peer {
	if rt.table == nil {
		return nil
	}
	return rt.owners[rt.table.PartitionOf(id)]
}

func newRouter(cfg *Config, local Local, log *slog.Logger, m *clusterMetrics) *Router {
	r := &Router{
		cfg:   cfg,
		self:  cfg.NodeName,
		local: local,
		log:   log,
		m:     m,
		limit: ratelog.New[string](cfg.LogInterval, nil),
		peers: make(map[string]*peer),
		ch:    &channel{},

		queries: make(map[string]QueryHandler),
		streams: make(map[string]StreamHandler),
	}
	r.route.Store(&routing{alone: true})
	r.hold.size = cfg.RebuildHoldSize
	r.hold.held = make([]atomic.Bool, cfg.Partitions)
	r.scratch.New = func() any { return new(scratch) }
	m.set.NewGauge("presence_cluster_queue_depth", func() float64 { return float64(r.queueDepth()) })
	m.set.NewGauge("presence_cluster_held_messages", func() float64 { return float64(r.heldMessages()) })
	return r
}

// Table returns the table the router routes by (nil before the first).
func (r *Router) Table() *Table { return r.route.Load().table }

// Owns reports whether this node owns device id now (true before the first
// table: a node alone owns everything).
func (r *Router) Owns(id string) bool { return r.route.Load().peerOf(id) == nil }

// setTable switches routing to t; addrs maps each member to its data
// address. Peers that left the table are stopped and their queued messages
// routed again by the new table (without waiting for room), from their own
// goroutine: setTable never waits for the network.
func (r *Router) setTable(t *Table, addrs map[string]string) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	rt := &routing{table: t, owners: make([]*peer, t.Partitions()), alone: true, addrs: addrs}
	var orphans []*peer
	for name, p := range r.peers {
		if !t.Has(name) || addrs[name] != p.addr {
			orphans = append(orphans, p)
			delete(r.peers, name)
		}
	}
	for p := range t.Partitions() {
		name := t.Owner(p)
		if name == "" || name == r.self {
			continue
		}
		pr := r.peers[name]
		if pr == nil {
			pr = newPeer(r, name, addrs[name])
			r.peers[name] = pr
			r.wg.Add(1)
			go pr.run()
		}
		rt.owners[p] = pr
		rt.alone = false
	}
	r.route.Store(rt)
	r.mu.Unlock()

	for _, p := range orphans {
		p.stop(true) // its goroutine routes the queue again, by the new table
	}
}

// TouchBatch routes a batch: touches of owned devices go to the local
// engine at once, the others to their owners' queues. It returns how many
// were rejected: by the local engine, or invalid (id or timeout) before
// forwarding. Safe for concurrent use.
func (r *Router) TouchBatch(batch []engine.Touch) (rejected int) {
	return r.touchBatch(batch, r.cfg.ReadsAll)
}

// SubmitBatch is TouchBatch for touches only this node received (HTTP
// touches): with Config.ReadsAll too, those of other owners are forwarded,
// not left to them.
func (r *Router) SubmitBatch(batch []engine.Touch) (rejected int) {
	return r.touchBatch(batch, false)
}

// touchBatch is TouchBatch; readsAll skips what other nodes own.
func (r *Router) touchBatch(batch []engine.Touch, readsAll bool) (rejected int) {
	rt := r.route.Load()
	holding := r.hold.active.Load()
	if rt.alone && !holding {
		r.m.localMsgs.Add(len(batch))
		return r.local.TouchBatch(batch)
	}
	sc := r.scratch.Get().(*scratch)
	local := sc.touches[:0]
	for i := range batch {
		t := &batch[i]
		pr := rt.peerOf(t.ID)
		if pr == nil {
			if holding && forwardable(t.ID, t.Timeout) && r.holdBack(touchMsg(t), false) {
				continue
			}
			local = append(local, *t)
			continue
		}
		if readsAll {
			r.m.skipped.Inc() // its owner reads it too
			continue
		}
		if !forwardable(t.ID, t.Timeout) {
			rejected++
			continue
		}
		sc.add(pr, touchMsg(t))
	}
	if rejected > 0 {
		r.m.rejected.Add(rejected) // invalid before forwarding
	}
	var n int
	sc.touches, n = r.applyLocal(local)
	rejected += n
	r.flush(sc, time.Now().Add(r.cfg.EnqueueWait))
	r.scratch.Put(sc)
	return rejected
}

// MarkOffline applies or forwards a status "offline" message. A forwarded
// one returns nil: the owner's verdict (e.g. engine.ErrNotFound) is counted
// there, not reported here.
func (r *Router) MarkOffline(id string, at time.Time) error {
	pr := r.route.Load().peerOf(id)
	if pr == nil {
		if r.hold.active.Load() && forwardable(id, 0) && r.holdBack(offlineMsg(id, at), false) {
			return nil
		}
		r.m.localMsgs.Inc()
		return r.local.MarkOffline(id, at)
	}
	if r.cfg.ReadsAll {
		r.m.skipped.Inc()
		return nil
	}
	if !forwardable(id, 0) {
		r.m.rejected.Inc()
		return engine.ErrInvalidID
	}
	one := [1]msg{offlineMsg(id, at)}
	pr.enqueue(one[:], time.Now().Add(r.cfg.EnqueueWait))
	return nil
}

// SetStatus applies or forwards an explicit status given through the API;
// cause must be engine.CauseAPI, the only one that travels. Like
// MarkOffline, a forwarded one returns nil: the owner's verdict is counted
// there.
func (r *Router) SetStatus(id string, s engine.Status, at time.Time, cause engine.Cause) error {
	switch {
	case cause != engine.CauseAPI:
		return fmt.Errorf("cluster: SetStatus with cause %v: only %v is forwarded", cause, engine.CauseAPI)
	case s != engine.StatusOnline && s != engine.StatusOffline:
		return engine.ErrInvalidStatus
	}
	pr := r.route.Load().peerOf(id)
	if pr == nil {
		if r.hold.active.Load() && forwardable(id, 0) && r.holdBack(statusMsg(id, s, at), false) {
			return nil
		}
		r.m.localMsgs.Inc()
		return r.local.SetStatus(id, s, at, cause)
	}
	if !forwardable(id, 0) {
		r.m.rejected.Inc()
		return engine.ErrInvalidID
	}
	one := [1]msg{statusMsg(id, s, at)}
	pr.enqueue(one[:], time.Now().Add(r.cfg.EnqueueWait))
	return nil
}

// SetTimeout gives device id its own timeout d, on its owner:
// engine.SetTimeout here, or forwarded (nil: the owner's verdict, such as
// engine.ErrNotFound, is counted there).
func (r *Router) SetTimeout(id string, d time.Duration) error {
	if d == 0 || !forwardable(id, d) {
		return engine.ErrInvalidTimeout
	}
	return r.control(overrideMsg(id, d))
}

// ClearTimeout drops device id's own timeout on its owner, like SetTimeout.
func (r *Router) ClearTimeout(id string) error { return r.control(overrideMsg(id, 0)) }

// Decommission forgets device id on its owner, like SetTimeout.
func (r *Router) Decommission(id string, at time.Time) error { return r.control(removeMsg(id, at)) }

// control applies or forwards a device control. Like SetStatus it is
// forwarded even on a ReadsAll node.
func (r *Router) control(m msg) error {
	if !forwardable(m.id, 0) {
		r.m.rejected.Inc()
		return engine.ErrInvalidID
	}
	pr := r.route.Load().peerOf(m.id)
	if pr == nil {
		if r.hold.active.Load() && r.holdBack(m, false) {
			return nil
		}
		r.m.localMsgs.Inc()
		return r.applyControl(&m)
	}
	one := [1]msg{m}
	pr.enqueue(one[:], time.Now().Add(r.cfg.EnqueueWait))
	return nil
}

// applyControl applies a device control to the local engine.
func (r *Router) applyControl(m *msg) error {
	switch {
	case m.flags&msgRemove != 0:
		return r.local.Decommission(m.id, m.time())
	case m.timeout == 0:
		return r.local.ClearTimeout(m.id)
	}
	return r.local.SetTimeout(m.id, m.timeout)
}

// dispatch routes messages that are already in wire form: received from
// peer from, or left in a stopped peer's queue (from ""). Messages for this
// node are applied locally; the others are queued for their owner, waiting
// for room until deadline (zero: not at all). Two rules keep a message from
// circling while tables disagree: it never goes back to the node it came
// from (that node just said it is not the owner, and this one is where the
// message already is: it is applied here), and a message marked msgHop
// (re-forwarded once already) that is not ours is dropped (not_owner).
func (r *Router) dispatch(msgs []msg, deadline time.Time, from string) {
	r.route1(msgs, deadline, from, true)
}

// route1 is dispatch; with checkHold false (releasing held messages) it
// applies messages of held partitions too.
func (r *Router) route1(msgs []msg, deadline time.Time, from string, checkHold bool) {
	rt := r.route.Load()
	holding := checkHold && r.hold.active.Load()
	sc := r.scratch.Get().(*scratch)
	local := sc.touches[:0]
	for i := range msgs {
		m := &msgs[i]
		pr := rt.peerOf(m.id)
		if pr != nil && from != "" && pr.name == from {
			pr = nil // never back to the sender
			r.m.bounced.Inc()
		}
		switch {
		case pr != nil && m.flags&msgHop != 0:
			r.m.dropped[dropNotOwner].Inc()
		case pr != nil:
			mm := *m
			mm.flags |= msgHop
			if from != "" {
				// The id is a substring of the whole received frame (up
				// to MaxFrameSize): a queued copy would pin all of it.
				mm.id = strings.Clone(mm.id)
			}
			sc.add(pr, mm)
			r.m.reforwarded.Inc()
		case holding && r.holdBack(*m, from != ""):
		case m.flags&msgControl != 0:
			local, _ = r.applyLocal(local) // the touches before it first: order per device
			r.m.localMsgs.Inc()
			if from != "" {
				r.applyReceived(m) // may wait for the device's handoff record
			} else if err := r.applyControl(m); err != nil {
				r.m.dropped[dropLocalError].Inc()
			}
		case m.flags&msgAPI != 0:
			local, _ = r.applyLocal(local) // the touches before it first: order per device
			r.m.localMsgs.Inc()
			if err := r.local.SetStatus(m.id, m.status(), m.time(), engine.CauseAPI); err != nil {
				r.m.dropped[dropLocalError].Inc()
			}
		case m.flags&msgOffline != 0:
			local, _ = r.applyLocal(local) // the touches before it first: order per device
			r.m.localMsgs.Inc()
			if err := r.local.MarkOffline(m.id, m.time()); err != nil {
				r.m.dropped[dropLocalError].Inc()
			}
		default:
			local = append(local, engine.Touch{ID: m.id, At: m.time(), Timeout: m.timeout})
		}
	}
	sc.touches, _ = r.applyLocal(local)
	r.flush(sc, deadline)
	r.scratch.Put(sc)
}

// applyLocal hands touches to the local engine (counting them, and those
// it rejected) and returns the emptied slice, its id references dropped,
// and how many were rejected.
func (r *Router) applyLocal(local []engine.Touch) ([]engine.Touch, int) {
	if len(local) == 0 {
		return local, 0
	}
	r.m.localMsgs.Add(len(local))
	n := r.local.TouchBatch(local)
	if n > 0 {
		r.m.rejected.Add(n)
	}
	clear(local)
	return local[:0], n
}

// flush hands the grouped messages of sc to their peers and resets sc.
func (r *Router) flush(sc *scratch, deadline time.Time) {
	for i := range sc.groups {
		g := &sc.groups[i]
		g.p.enqueue(g.msgs, deadline)
		clear(g.msgs)
		g.msgs = g.msgs[:0]
		g.p = nil
	}
	sc.groups = sc.groups[:0]
}

func (r *Router) queueDepth() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, p := range r.peers {
		n += p.depth()
	}
	return n
}

// close stops every peer, letting each write what it has queued within
// WriteTimeout, and waits for their goroutines. Messages routed afterwards
// are dropped (closed) or, for owned devices, still applied locally.
func (r *Router) close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	peers := make([]*peer, 0, len(r.peers))
	for _, p := range r.peers {
		peers = append(peers, p)
	}
	r.mu.Unlock()
	for _, p := range peers {
		p.stop(false)
	}
	r.wg.Wait()
}

// forwardable reports whether a message may be put on the wire: a valid
// engine id and a timeout the engine could accept. Invalid ones are
// rejected here, as the engine would reject them.
func forwardable(id string, timeout time.Duration) bool {
	if !engine.ValidID(id) {
		return false
	}
	return timeout == 0 || (timeout >= engine.MinTimeout && timeout <= engine.MaxTimeout)
}

// scratch holds one call's buffers: touches for the local engine and the
// messages grouped per peer (a handful of peers: a linear search is
// cheaper than a map).
type scratch struct {
	touches []engine.Touch
	groups  []group
}

type group struct {
	p    *peer
	msgs []msg
}

func (sc *scratch) add(p *peer, m msg) {
	for i := range sc.groups {
		if sc.groups[i].p == p {
			sc.groups[i].msgs = append(sc.groups[i].msgs, m)
			return
		}
	}
	if len(sc.groups) < cap(sc.groups) {
		sc.groups = sc.groups[:len(sc.groups)+1]
		g := &sc.groups[len(sc.groups)-1]
		g.p, g.msgs = p, append(g.msgs[:0], m)
		return
	}
	sc.groups = append(sc.groups, group{p: p, msgs: []msg{m}})
}
