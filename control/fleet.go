package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/presence-dev/presence/api"
	"github.com/presence-dev/presence/cluster"
	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/events"
	"github.com/presence-dev/presence/internal/ratelog"
	"github.com/presence-dev/presence/report"
)

// The queries a cluster node answers for the others (cluster.Node.
// HandleQuery), JSON both ways.
const (
	queryCounts  = "counts"  // no body; NodeReport
	queryLongest = "longest" // report.ListQuery; report.List
	streamEvents = "events"  // a GET /v1/events query string (the feed sends none: everything); encoded SSE events
)

// feedBuffer is how many events the stream another node takes of this
// node's events may fall behind by before it is dropped (reopened within
// remoteRetry, the gap lost): one per node, so generous.
const feedBuffer = 1 << 16

// remoteRetry is how soon a lost event stream from another node is
// opened again, and how often a stream checks for new members.
const remoteRetry = time.Second

// Fleet answers the API for the whole cluster (api.Cluster, and the
// report's Cluster): it asks the other nodes through the node's
// authenticated query connections.
type Fleet struct {
	node *cluster.Node
	eng  *engine.Engine
	log  *slog.Logger
	feed remoteFeed               // the other nodes' events, for every cluster-wide SSE stream
	lim  *ratelog.Limiter[string] // a lost peer stream, logged per peer at most every 5 s
}

// NewFleet builds the cluster-wide read side of node, whose engine is eng.
// Register it before the node starts.
func NewFleet(node *cluster.Node, eng *engine.Engine, log *slog.Logger) *Fleet {
	return &Fleet{node: node, eng: eng, log: log, lim: ratelog.New[string](5*time.Second, time.Now)}
}

// Register installs the handlers of the other nodes' queries and streams,
// and feeds hub's SSE streams with the other nodes' events; before the
// node starts.
func (f *Fleet) Register(rep *report.Report, hub *events.Hub) {
	f.node.HandleStream(streamEvents, func(ctx context.Context, body []byte, send func([]byte) error) error {
		q, err := url.ParseQuery(string(body))
		if err != nil {
			return fmt.Errorf("events: %w", err)
		}
		// One stream per node, shared there by all its cluster-wide
		// streams: a burst (a mass expiry) must not drop it.
		sub, err := hub.SubscribeBuffered(q, feedBuffer)
		if err != nil {
			return err
		}
		defer sub.Close()
		var buf []byte
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-sub.Done:
				return errors.New("events: the stream fell behind, or the hub closed")
			case msg := <-sub.C:
				// What else is waiting goes in the same frame, up to 64 KiB:
				// a burst (a mass expiry) must not fill the subscription.
				buf = append(buf[:0], msg...)
			more:
				for len(buf) < 64<<10 {
					select {
					case m := <-sub.C:
						buf = append(buf, m...)
					default:
						break more
					}
				}
				if err := send(buf); err != nil {
					return err
				}
			}
		}
	})
	hub.SetRemote(f.remoteEvents)
	f.node.HandleQuery(queryCounts, func(context.Context, []byte) ([]byte, error) {
		return json.Marshal(LocalReport(f.node.Name(), f.eng))
	})
	f.node.HandleQuery(queryLongest, func(ctx context.Context, body []byte) ([]byte, error) {
		var q report.ListQuery
		if err := json.Unmarshal(body, &q); err != nil {
			return nil, fmt.Errorf("longest: %w", err)
		}
		l, err := rep.Longest(ctx, q)
		if err != nil {
			return nil, err
		}
		return json.Marshal(l)
	})
}

// Devices implements api.Cluster.
func (f *Fleet) Devices(ctx context.Context, ids []string, dst []engine.DeviceState) ([]engine.DeviceState, []int, []string) {
	start := len(dst)
	out, missing := f.node.Lookup(ctx, ids, dst)
	if len(missing) == 0 {
		return out, nil, nil
	}
	var unavailable []int
	t := f.node.Table()
	for i, st := range out[start:] {
		if st.Status == engine.StatusUnknown && t != nil && slices.Contains(missing, t.OwnerOf(ids[i])) {
			unavailable = append(unavailable, i)
		}
	}
	return out, unavailable, missing
}

// NodeReport is a node's answer to queryCounts.
type NodeReport struct {
	api.NodeCounts
	Version string `json:"version"`
	// Messages and Transitions are the engine's counters since it started
	// (touches; online and offline transitions), for rates.
	Messages    uint64 `json:"messages"`
	Transitions uint64 `json:"transitions"`
}

// LocalReport is this node's NodeReport.
func LocalReport(name string, eng *engine.Engine) NodeReport {
	c, st := eng.Counts(), eng.Stats()
	return NodeReport{
		NodeCounts:  api.NodeCounts{Node: name, Total: c.Total, Online: c.Online, Offline: c.Offline},
		Version:     Version(),
		Messages:    st.Touches,
		Transitions: st.OnlineTransitions + st.OfflineTransitions,
	}
}

// Reports asks every node for its NodeReport.
func (f *Fleet) Reports(ctx context.Context) ([]NodeReport, []string) {
	var nodes []NodeReport
	var missing []string
	for _, a := range f.node.Ask(ctx, queryCounts, nil) {
		var r NodeReport
		if a.Err != nil || json.Unmarshal(a.Body, &r) != nil {
			missing = append(missing, a.Node)
			continue
		}
		nodes = append(nodes, r)
	}
	return nodes, missing
}

// Counts implements api.Cluster.
func (f *Fleet) Counts(ctx context.Context) ([]api.NodeCounts, []string) {
	reports, missing := f.Reports(ctx)
	nodes := make([]api.NodeCounts, len(reports))
	for i, r := range reports {
		nodes[i] = r.NodeCounts
	}
	return nodes, missing
}

// Version is this build's: the module version and the VCS revision.
func Version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v, rev, dirty := bi.Main.Version, "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev != "" {
		v += "+" + rev
		if dirty {
			v += "-dirty"
		}
	}
	return v
}

// Lists is the report's Cluster: every node's Longest of q.
func (f *Fleet) Lists(ctx context.Context, q report.ListQuery) ([]report.List, []string) {
	body, err := json.Marshal(q)
	if err != nil {
		return nil, []string{f.node.Name()}
	}
	var lists []report.List
	var missing []string
	for _, a := range f.node.Ask(ctx, queryLongest, body) {
		var l report.List
		if a.Err != nil || json.Unmarshal(a.Body, &l) != nil {
			missing = append(missing, a.Node)
			continue
		}
		lists = append(lists, l)
	}
	return lists, missing
}

// remoteFeed carries every other member's events to this node's
// cluster-wide SSE streams: one node-to-node stream per member, unfiltered,
// shared by all the streams (opened with the first, closed with the last),
// each event handed to the streams whose filter asks for it. So a node's
// connections to a peer do not grow with its SSE clients: a wall of
// dashboards leaves every peer able to hand off and answer queries.
type remoteFeed struct {
	mu     sync.Mutex
	subs   map[*remoteSub]struct{}
	gen    int                // the running feed's; a feed of an older one delivers nothing
	cancel context.CancelFunc // the running feed's; nil when none runs
}

// remoteSub is one SSE stream fed by the remoteFeed.
type remoteSub struct {
	f       events.StreamFilter
	deliver func([]byte) bool
	gone    bool // deliver said the stream is gone
}

// remoteEvents feeds one SSE stream with every other member's events
// until ctx is done (events.RemoteEvents), through the shared feed.
func (f *Fleet) remoteEvents(ctx context.Context, q url.Values, deliver func([]byte) bool) {
	// The hub has checked the query, and bounded its ids.
	sf, err := events.NewStreamFilter(q, math.MaxInt)
	if err != nil {
		f.log.Warn("events: a cluster-wide stream's filter", "err", err)
		return
	}
	sub := &remoteSub{f: sf, deliver: deliver}
	f.feed.mu.Lock()
	if f.feed.subs == nil {
		f.feed.subs = make(map[*remoteSub]struct{})
	}
	f.feed.subs[sub] = struct{}{}
	if f.feed.cancel == nil {
		var fctx context.Context
		fctx, f.feed.cancel = context.WithCancel(context.Background())
		f.feed.gen++
		go f.runFeed(fctx, f.feed.gen)
	}
	f.feed.mu.Unlock()
	<-ctx.Done()
	f.feed.mu.Lock()
	delete(f.feed.subs, sub)
	if len(f.feed.subs) == 0 && f.feed.cancel != nil {
		f.feed.cancel()
		f.feed.cancel = nil
	}
	f.feed.mu.Unlock()
}

// dispatch hands e to every stream of the feed of generation gen that asks
// for it. deliver never blocks (a stream behind is disconnected).
func (f *Fleet) dispatch(gen int, e *events.Encoded) {
	f.feed.mu.Lock()
	defer f.feed.mu.Unlock()
	if gen != f.feed.gen {
		return
	}
	for sub := range f.feed.subs {
		if !sub.gone && sub.f.Match(e) && !sub.deliver(e.Msg) {
			sub.gone = true
		}
	}
}

// runFeed streams every other member's events, one node-to-node stream per
// member, opened again after a loss and for members that join meanwhile,
// until ctx is done.
func (f *Fleet) runFeed(ctx context.Context, gen int) {
	var mu sync.Mutex
	running := make(map[string]bool)
	var wg sync.WaitGroup
	defer wg.Wait()
	t := time.NewTicker(remoteRetry)
	defer t.Stop()
	for {
		var members []string
		if t := f.node.Table(); t != nil { // nil before the node starts
			members = t.Members()
		}
		for _, m := range members {
			mu.Lock()
			if m == f.node.Name() || running[m] {
				mu.Unlock()
				continue
			}
			running[m] = true
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					mu.Lock()
					delete(running, m)
					mu.Unlock()
				}()
				err := f.node.Stream(ctx, m, streamEvents, nil, func(msg []byte) error {
					events.SplitEncoded(msg, func(e events.Encoded) { f.dispatch(gen, &e) })
					return nil
				})
				if err != nil && ctx.Err() == nil {
					if ok, n := f.lim.Allow(m); ok {
						f.log.Warn("events: the stream of another node's events was lost; reopened within a second, "+
							"its events meanwhile are not replayed", "node", m, "err", err, "suppressed", n)
					}
				}
			})
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
