package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/hashicorp/memberlist"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/ratelog"
)

// ErrClosed is returned by Start after Close, or a second Start.
var ErrClosed = errors.New("cluster: node closed or already started")

// Change describes a new table. Moved partitions changed owner; Joined,
// Left (gracefully: it gossiped its leaving flag first, see Close) and
// Failed (declared dead, or gone without the flag) name the members whose
// events led to it since the previous table.
type Change struct {
	Self     string
	Old, New *Table // Old is nil for the first table
	Moved    []int
	Joined   []string
	Left     []string
	Failed   []string

	hold uint64 // the hold of Rebuild's partitions (Config.RebuildHold), 0 if none
}

// Gained returns the partitions Self owns in New and did not own in Old.
func (c Change) Gained() []int {
	var ps []int
	for _, p := range c.Moved {
		if c.New.Owner(p) == c.Self {
			ps = append(ps, p)
		}
	}
	return ps
}

// Lost returns the partitions Self owned in Old and does not own in New:
// handoff streams their devices to the new owners.
func (c Change) Lost() []int {
	if c.Old == nil {
		return nil
	}
	var ps []int
	for _, p := range c.Moved {
		if c.Old.Owner(p) == c.Self {
			ps = append(ps, p)
		}
	}
	return ps
}

// Rebuild returns the partitions Self gained from a member that is gone:
// one that failed (crashed, or unreachable long enough to be declared
// dead), whose devices nobody hands off, and one that left gracefully,
// whose handoff may not have got through (its Close gives up after
// HandoffTimeout). Their devices are rebuilt from the shared store (Redis)
// and re-armed; those whose deadline passed go offline with cause handoff.
// A device both rebuilt and handed off is merged (engine.Adopt keeps the
// newest). Partitions gained from a member still in New (a join) arrive by
// handoff only.
func (c Change) Rebuild() []int {
	if c.Old == nil {
		return nil // the first table: start-up recovery covers it
	}
	var ps []int
	for _, p := range c.Gained() {
		old := c.Old.Owner(p)
		if slices.Contains(c.Failed, old) || !c.New.Has(old) {
			ps = append(ps, p)
		}
	}
	return ps
}

// Node is this process's membership in the cluster: it gossips with
// memberlist, keeps the partition table, routes ingest's messages through
// its Router, serves the data address for peers, and hands devices off when
// ownership moves. New builds it, Start joins, Close leaves and waits for
// every goroutine it started.
type Node struct {
	cfg    Config
	log    *slog.Logger
	m      *clusterMetrics
	local  Local
	router *Router
	view   memberView // the live members and the events, kept by the event callbacks
	limit  *ratelog.Limiter[string]

	changed chan struct{} // cap 1: a membership event happened
	// stop ends the loops. The node keeps its own state machine (life,
	// started, closed) rather than a lifecycle.Runner: a graceful Close
	// must gossip its leave and hand every device off while those loops
	// still run, and only then stop them.
	stop chan struct{}
	wg   sync.WaitGroup

	life    sync.Mutex // Start and Close
	started bool
	closed  bool

	rebuildMu sync.Mutex // one rebuild (and OnChange call) at a time

	holdMu     sync.Mutex
	holdTimers []holdTimer // RebuildHold expiries, stopped by Close

	// Set by Start.
	ml       *memberlist.Memberlist
	del      *delegate
	srv      *server
	ho       *handoff
	q        *querier
	dataAddr string // the data listener's address
	gossip   string // this node's gossip address, as the others see it

	// joined: this node may serve: its table has had another usable
	// member, or no seed could be reached (or none but itself answered:
	// the first node of a cluster, or the last one left). joinErr is why
	// not: a seed that was reached but did not let it in.
	joined  atomic.Bool
	joinMu  sync.Mutex
	joinErr error
}

// New validates cfg and builds a Node over local (the engine). Nothing runs
// until Start; until then the Router applies everything locally.
func New(cfg Config, local Local) (*Node, error) {
	err := cfg.Validate()
	if err != nil {
		return nil, err
	}
	if local == nil {
		return nil, errors.New("cluster: nil Local")
	}
	cfg.Join = slices.Clone(cfg.Join)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewSet()
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	n := &Node{
		cfg:     cfg,
		log:     cfg.Logger.With(slog.String("node", cfg.NodeName)),
		local:   local,
		changed: make(chan struct{}, 1),
		stop:    make(chan struct{}),
		limit:   ratelog.New[string](cfg.LogInterval, nil),
	}
	n.m = newClusterMetrics(cfg.Metrics)
	n.router = newRouter(&n.cfg, local, n.log, n.m)
	if n.router.ch, err = newChannel(cfg.keys()); err != nil {
		return nil, err
	}
	n.ho = newHandoff(n)
	n.q = newQuerier(n)
	cfg.Metrics.NewGauge("presence_cluster_members", func() float64 {
		if t := n.router.Table(); t != nil {
			return float64(len(t.members))
		}
		return 1
	})
	cfg.Metrics.NewGauge("presence_cluster_partitions_owned", func() float64 {
		if t := n.router.Table(); t != nil {
			return float64(len(t.Owned(n.cfg.NodeName)))
		}
		return float64(n.cfg.Partitions)
	})
	return n, nil
}

// Router returns the router: the ingest.Handler to give ingest.New.
func (n *Node) Router() *Router { return n.router }

// Metrics returns the node's metric set.
func (n *Node) Metrics() *metrics.Set { return n.cfg.Metrics }

// Name returns this node's name.
func (n *Node) Name() string { return n.cfg.NodeName }

// DataAddr returns the address the data listener is bound to ("" before
// Start).
func (n *Node) DataAddr() string { return n.dataAddr }

// Table returns the current table (nil before Start).
func (n *Node) Table() *Table { return n.router.Table() }

// Owns reports whether this node owns device id now.
func (n *Node) Owns(id string) bool { return n.router.Owns(id) }

// Holding reports whether this node holds the messages of device id's
// partition for a rebuild (Router.Holding).
func (n *Node) Holding(id string) bool { return n.router.Holding(id) }

// Owned returns the partitions this node owns now (all of them before
// Start).
func (n *Node) Owned() []int {
	if t := n.router.Table(); t != nil {
		return t.Owned(n.cfg.NodeName)
	}
	all := make([]int, n.cfg.Partitions)
	for i := range all {
		all[i] = i
	}
	return all
}

// Settle waits, after Start, until the membership has been stable for a
// second (at most 5 s, or until ctx is done), so that what this node then
// reads as its own (restart recovery) is what it keeps, and restart
// transitions are not reported by several nodes at once.
func (n *Node) Settle(ctx context.Context) {
	const quiet, most, poll = time.Second, 5 * time.Second, 100 * time.Millisecond
	deadline := time.Now().Add(most)
	last, stableSince := len(n.Members()), time.Now()
	t := time.NewTicker(poll)
	defer t.Stop()
	for time.Now().Before(deadline) && time.Since(stableSince) < quiet {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if m := len(n.Members()); m != last {
			last, stableSince = m, time.Now()
		}
	}
}

// Start listens on the data address, starts gossip on the bind address,
// installs a first table (this node alone, or with whoever answered), joins
// the seeds (a seed that does not answer is logged, not fatal: the rejoin
// loop retries) and starts the background goroutines. ctx is unused: the
// join is bounded by memberlist's own timeouts.
func (n *Node) Start(context.Context) error {
	n.life.Lock()
	defer n.life.Unlock()
	if n.started || n.closed {
		return ErrClosed
	}
	dataAddr, err := n.dataListenAddr()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", dataAddr)
	if err != nil {
		return fmt.Errorf("cluster: data listener: %w", err)
	}
	n.dataAddr = ln.Addr().String()
	host, port, _ := splitHostPort(n.dataAddr)
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "" // peers use our gossip address
	}
	d := newDelegate(n, host, port, n.cfg.Partitions)
	mc, err := memberlistConfig(&n.cfg, d, n.log)
	if err != nil {
		_ = ln.Close()
		return err
	}
	ml, err := memberlist.Create(mc)
	if err != nil {
		_ = ln.Close()
		return fmt.Errorf("cluster: memberlist: %w", err)
	}
	n.ml, n.del = ml, d
	// Read once: memberlist rewrites the local node in place on an
	// UpdateNode (Close does one), without a lock a reader could take.
	n.gossip = ml.LocalNode().Address()
	n.srv = newServer(n.router, ln, n.log, n.cfg.Clock, n.isMember)
	n.srv.start()
	n.started = true
	n.rebuild() // this node alone: routing is ready from here on
	if len(n.cfg.Join) > 0 {
		n.join()
		n.rebuild() // no debounce for the first view of the cluster
	}
	n.wg.Go(n.loop)
	n.wg.Go(n.ho.run)
	if len(n.cfg.Join) > 0 && n.cfg.RejoinInterval > 0 {
		n.wg.Go(n.rejoin)
	}
	n.log.Info("cluster: started", slog.String("gossip", n.gossip),
		slog.String("data", n.dataAddr), slog.Int("members", ml.NumMembers()),
		slog.Bool("authenticated", n.router.ch.secure()))
	if exp := n.cfg.Exposed(); n.cfg.SecretKey == nil && len(exp) > 0 {
		n.warnInsecure(exp)
		n.wg.Go(func() { n.insecureReminder(exp) })
	}
	return nil
}

// insecureInterval is how often an insecure node repeats its warning.
const insecureInterval = time.Hour

// insecureReminder repeats warnInsecure every insecureInterval.
func (n *Node) insecureReminder(exposed []string) {
	n.every(insecureInterval, func() { n.warnInsecure(exposed) })
}

// every calls fn every d until the node stops.
func (n *Node) every(d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
			fn()
		}
	}
}

func (n *Node) warnInsecure(exposed []string) {
	n.log.Warn("cluster: running WITHOUT a cluster key on non-loopback addresses (PRESENCE_CLUSTER_INSECURE): "+
		"anyone who can reach them can join, forward telemetry and hand devices over; set PRESENCE_CLUSTER_KEY",
		slog.Any("addresses", exposed))
}

// isMember reports whether name is a live member, for the data server's
// handshake. A node that just joined may connect before gossip told us of
// it: it is waited for, up to half the handshake timeout and never past
// the handshake's deadline.
func (n *Node) isMember(name string, handshake time.Time) bool {
	const poll = 50 * time.Millisecond
	deadline := time.Now().Add(n.cfg.HandshakeTimeout / 2)
	if handshake.Before(deadline) {
		deadline = handshake
	}
	for !n.view.has(name) {
		if name == n.cfg.NodeName || time.Now().After(deadline) {
			return false
		}
		select {
		case <-n.stop:
			return false
		case <-time.After(poll):
		}
	}
	return name != n.cfg.NodeName
}

// dataListenAddr is Config.DataAddr or the gossip bind host with port+1.
func (n *Node) dataListenAddr() (string, error) {
	if n.cfg.DataAddr != "" {
		return n.cfg.DataAddr, nil
	}
	host, port, err := splitHostPort(n.cfg.BindAddr)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(host, strconv.Itoa(port+1)), nil
}

// Close leaves the cluster gracefully: it gossips its leaving flag, so
// that the others report it in Change.Left rather than Failed, and
// broadcasts the leave (each bounded by LeaveTimeout), switches to a table
// without this node (every message is forwarded from then on), hands every
// device off to its new owner (bounded by HandoffTimeout), then stops
// gossip, writes what the peer queues hold (WriteTimeout) and closes the
// data listener. Close ingest before the Node, so that nothing new arrives
// meanwhile. The handoff ends at ctx's deadline if that comes first.
// Idempotent.
func (n *Node) Close(ctx context.Context) error { return n.close(ctx, true) }

// halt stops abruptly, as a crash would look to the other nodes: no leave
// message, no handoff. For tests.
func (n *Node) halt() error { return n.close(context.Background(), false) }

func (n *Node) close(ctx context.Context, graceful bool) error {
	n.life.Lock()
	defer n.life.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	if !n.started {
		n.router.close()
		return nil
	}
	var errs []error
	if graceful {
		n.stopHolds() // into the engine, so that the handoff takes them along
		// First gossip the leaving flag, so that the others record a
		// graceful leave (and wait for the handoff), not a crash (and
		// rebuild from Redis). Should it not get through in time, they
		// take it for a crash: slower, not wrong.
		n.del.setLeaving()
		if err := n.ml.UpdateNode(n.cfg.LeaveTimeout); err != nil {
			n.log.Warn("cluster: leaving flag not gossiped in time; the others may take the leave for a crash",
				slog.Any("err", err))
		}
		n.pushLeaving()
		if err := n.ml.Leave(n.cfg.LeaveTimeout); err != nil {
			errs = append(errs, fmt.Errorf("cluster: leave: %w", err))
		}
		n.rebuild()
		deadline := time.Now().Add(n.cfg.HandoffTimeout)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		if _, err := n.ho.pass(deadline); err != nil {
			errs = append(errs, fmt.Errorf("cluster: handoff on leave: %w", err))
		}
	}
	close(n.stop)
	n.wg.Wait()
	n.stopHolds()
	if err := n.ml.Shutdown(); err != nil {
		errs = append(errs, fmt.Errorf("cluster: memberlist shutdown: %w", err))
	}
	n.q.close()
	n.router.close()
	n.srv.close()
	n.log.Info("cluster: closed", slog.Bool("graceful", graceful))
	return errors.Join(errs...)
}

// pushLeaving makes sure the members have the leaving flag before the
// leave: UpdateNode's broadcast goes over UDP, and a loaded host may drop
// the datagrams (seen in CI: a member that never got the flag took the
// leave for a crash). A push/pull with every member (memberlist's Join, a
// TCP exchange of the whole state, this node's new metadata included)
// delivers it, within LeaveTimeout in all.
func (n *Node) pushLeaving() {
	var addrs []string
	for _, m := range n.view.list() {
		if m.Name != n.cfg.NodeName {
			addrs = append(addrs, net.JoinHostPort(m.Addr.String(), strconv.Itoa(int(m.Port))))
		}
	}
	if len(addrs) == 0 {
		return
	}
	// One Join per member, all at once: memberlist's Join dials its
	// addresses one after the other, so a suspect member would hold up
	// the others for a whole TCP timeout.
	errs := make(chan error, len(addrs))
	for _, a := range addrs {
		go func() {
			_, err := n.ml.Join([]string{a})
			errs <- err
		}()
	}
	deadline := time.After(n.cfg.LeaveTimeout)
	for range addrs {
		select {
		case err := <-errs:
			if err != nil {
				n.log.Warn("cluster: leaving flag not pushed to a member; it may take the leave for a crash", slog.Any("err", err))
			}
		case <-deadline:
			n.log.Warn("cluster: pushing the leaving flag timed out; some members may take the leave for a crash")
			return
		}
	}
}

// signal wakes the table loop: a membership event happened.
func (n *Node) signal() {
	select {
	case n.changed <- struct{}{}:
	default:
	}
}

// loop rebuilds the table once membership has been quiet for Debounce (at
// most 4*Debounce after the first event of a burst).
func (n *Node) loop() {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var first time.Time // first event of the pending burst; zero when none
	for {
		select {
		case <-n.stop:
			return
		case <-n.changed:
			now := time.Now() // with the timer below: real time (see Config.Clock)
			if first.IsZero() {
				first = now
			}
			wait := min(n.cfg.Debounce, first.Add(4*n.cfg.Debounce).Sub(now))
			timer.Reset(max(wait, 0))
		case <-timer.C:
			first = time.Time{}
			n.rebuild()
		}
	}
}

// rebuild computes the table from memberlist's current members and, if it
// differs, installs it, reports the Change and triggers a handoff pass.
func (n *Node) rebuild() {
	n.rebuildMu.Lock()
	defer n.rebuildMu.Unlock()
	members, joined, left, failed := n.view.take()
	names, addrs := n.usableMembers(members)
	t := NewTable(n.cfg.Partitions, names)
	old := n.router.Table()
	if old.Equal(t) {
		return
	}
	c := Change{Self: n.cfg.NodeName, Old: old, New: t, Moved: Moved(old, t),
		Joined: joined, Left: left, Failed: failed}
	if n.cfg.RebuildHold > 0 {
		n.router.releaseLost(t)
		c.hold = n.holdForRebuild(c.Rebuild())
	}
	n.router.setTable(t, addrs)
	if len(t.members) > 1 {
		n.joined.Store(true)
	}
	n.m.tableChanges.Inc()
	n.m.moved.Add(len(c.Moved))
	n.log.Info("cluster: new partition table", slog.Any("members", t.members),
		slog.Int("moved", len(c.Moved)), slog.Int("owned", len(t.Owned(n.cfg.NodeName))),
		slog.Any("left", left), slog.Any("failed", failed))
	if n.cfg.OnChange != nil {
		n.cfg.OnChange(c)
	}
	if old != nil {
		n.ho.trigger()
	}
}

// holdForRebuild holds the messages of parts, gained from a crashed
// member, until RebuildDone or RebuildHold from now, and returns the hold's
// generation.
func (n *Node) holdForRebuild(parts []int) uint64 {
	if len(parts) == 0 {
		return 0
	}
	// Real time, not Config.Clock: the hold's deadline is checked when a
	// real timer fires.
	now := time.Now()
	deadline := now.Add(n.cfg.RebuildHold)
	gen := n.router.startHold(parts, deadline)
	n.holdMu.Lock()
	defer n.holdMu.Unlock()
	n.holdTimers = slices.DeleteFunc(n.holdTimers, func(h holdTimer) bool { return h.at.Before(now) })
	t := time.AfterFunc(n.cfg.RebuildHold, func() {
		if k := n.router.expireHolds(time.Now()); k > 0 {
			n.log.Warn("cluster: partitions not rebuilt in time, their held messages applied",
				slog.Int("partitions", k), slog.Duration("rebuild_hold", n.cfg.RebuildHold))
		}
	})
	n.holdTimers = append(n.holdTimers, holdTimer{t, deadline})
	return gen
}

type holdTimer struct {
	*time.Timer
	at time.Time // when it fires
}

// stopHolds stops the expiry timers and applies whatever is held.
func (n *Node) stopHolds() {
	n.holdMu.Lock()
	for _, t := range n.holdTimers {
		t.Stop()
	}
	n.holdTimers = nil
	n.holdMu.Unlock()
	n.router.releaseAllHolds()
}

// RebuildDone tells the node that the devices of c.Rebuild(), the
// partitions it gained from a member that is gone, have been rebuilt (or
// that the rebuild gave up): the messages it held for them since c are
// applied now, in the order they arrived. A partition that a later Change
// gave back to this node, to be rebuilt again, stays held for that later
// rebuild. Calling it more than once, or for a Change without a hold, does
// nothing.
func (n *Node) RebuildDone(c Change) {
	if c.hold != 0 {
		n.router.releaseHold(c.hold)
	}
}

// usableMembers returns the names and data addresses of the members that
// may own partitions.
func (n *Node) usableMembers(members []memberlist.Node) (names []string, addrs map[string]string) {
	addrs = make(map[string]string)
	for _, m := range members {
		meta, err := decodeMeta(m.Meta, m.Addr)
		if err == nil {
			err = meta.usable(n.cfg.Partitions)
		}
		if err != nil {
			if ok, sup := n.limit.Allow("meta:" + m.Name); ok {
				n.log.Warn("cluster: member left out of the table", slog.String("member", m.Name),
					slog.Any("err", err), slog.Int("suppressed", sup))
			}
			continue
		}
		names = append(names, m.Name)
		addrs[m.Name] = meta.data
	}
	return names, addrs
}

// Members returns the live members as this node sees them (joined and not
// declared dead or left; memberlist forgets dead ones), sorted by name.
// Nil before Start.
func (n *Node) Members() []Member {
	var ms []Member
	for _, m := range n.view.list() {
		meta, err := decodeMeta(m.Meta, m.Addr)
		var heard time.Time
		var rtt time.Duration
		if m.Name != n.cfg.NodeName {
			heard, rtt = n.view.lastHeardOf(m.Name)
		}
		ms = append(ms, Member{
			LastHeard:  heard,
			RTT:        rtt,
			Name:       m.Name,
			Gossip:     m.Address(),
			Data:       meta.data,
			State:      "alive", // see Member.State
			Protocol:   meta.proto,
			Partitions: meta.partitions,
			Usable:     err == nil && meta.usable(n.cfg.Partitions) == nil,
		})
	}
	slices.SortFunc(ms, func(a, b Member) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return ms
}

// join contacts the seeds (except this node's own address).
func (n *Node) join() {
	self := n.gossip
	seeds := make([]string, 0, len(n.cfg.Join))
	for _, s := range n.cfg.Join {
		if s != self && s != n.cfg.BindAddr {
			seeds = append(seeds, s)
		}
	}
	if len(seeds) == 0 {
		n.joined.Store(true) // no seed but this node: a cluster of its own on purpose
		return
	}
	_, err := n.ml.Join(seeds)
	n.joinMu.Lock()
	switch {
	case n.joined.Load():
	case err == nil && n.ml.NumMembers() <= 1, err != nil && unreachable(err):
		// Nobody else there: the first node of a cluster, the last one
		// left, or seeds naming this node under another name. It serves
		// alone, as a single node would; the others join it.
		n.joined.Store(true)
	case err == nil:
		n.joinErr = errors.New("the members that answered are not usable: another partition count or protocol version")
	default:
		n.joinErr = err
	}
	n.joinMu.Unlock()
	if err != nil {
		n.m.rejoinErrors.Inc()
		if ok, sup := n.limit.Allow("join"); ok {
			n.log.Warn("cluster: no seed answered", slog.Any("seeds", seeds), slog.Any("err", err),
				slog.Int("suppressed", sup))
		}
	}
}

// Joined reports why this node may not serve yet, nil once it may: it
// was given seeds other than itself, one of them was reached, and none has
// let it in (no other usable member has ever been in its table): a wrong
// PRESENCE_CLUSTER_KEY, a data protocol version or partition count the
// others do not have. Until then it would time, alone, the devices the
// others time too. A node that reaches no seed at all (the first of a
// cluster, the last one left) serves alone, as before, and the others
// join it; without seeds it is nil from Start.
func (n *Node) Joined() error {
	if n.joined.Load() || len(n.cfg.Join) == 0 {
		return nil
	}
	n.joinMu.Lock()
	err := n.joinErr
	n.joinMu.Unlock()
	why := "not joined yet"
	if err != nil {
		why = err.Error()
	}
	return fmt.Errorf("cluster: not joined: seeds %v: %s (a PRESENCE_CLUSTER_KEY that differs from the others', a protocol version they do not speak, or the network); members: %d",
		n.cfg.Join, why, len(n.Members()))
}

// unreachable reports whether a failed join reached no seed at all (every
// seed refused the connection, timed out or did not resolve): memberlist
// words its errors, it does not wrap them.
func unreachable(err error) bool {
	seeds := 0
	for line := range strings.SplitSeq(err.Error(), "\n") {
		switch {
		case strings.Contains(line, "failed to resolve"):
			seeds++
		case strings.Contains(line, "failed to join"):
			seeds++
			if !strings.Contains(line, "connection refused") && !strings.Contains(line, "i/o timeout") &&
				!strings.Contains(line, "no route to host") && !strings.Contains(line, "network is unreachable") {
				return false // reached, and refused us
			}
		}
	}
	return seeds > 0
}

// WaitJoined waits until Joined is nil or ctx is done, logging why every
// 10 s meanwhile.
func (n *Node) WaitJoined(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	last := time.Now()
	for {
		err := n.Joined()
		if err == nil {
			return
		}
		if time.Since(last) >= 10*time.Second {
			last = time.Now()
			n.log.Warn("cluster: waiting to join before recovery and ingest start: not ready", slog.Any("err", err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// rejoin joins the seeds every RejoinInterval, so that the two sides of a
// healed network partition merge.
func (n *Node) rejoin() { n.every(n.cfg.RejoinInterval, n.join) }

// Compile-time check: a *engine.Engine is what the cluster needs.
var _ Local = (*engine.Engine)(nil)
