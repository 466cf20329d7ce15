package cluster

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/presence-dev/presence/engine"
)

// fakeLocal is an engine stand-in that records what reaches it. It
// implements Local.
type fakeLocal struct {
	mu      sync.Mutex
	touches map[string]int // touches received per id
	offline map[string]int // offline marks received per id
	// apiStatus: the last explicit status (SetStatus) per id.
	apiStatus map[string]string
	// control: the last device control per id: "timeout 1h0m0s",
	// "clear", "removed".
	control map[string]string
	// strictControls: a control for a device not in state is
	// engine.ErrNotFound, as the engine answers.
	strictControls bool
	state          map[string]engine.DeviceState
	adopted        int
	removed        int
	hang           chan struct{} // if set, Devices waits for it to close (a node that does not answer)
}

func newFakeLocal() *fakeLocal {
	return &fakeLocal{
		touches: make(map[string]int),
		offline: make(map[string]int),
		state:   make(map[string]engine.DeviceState),
	}
}

func (f *fakeLocal) TouchBatch(batch []engine.Touch) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	rejected := 0
	for _, t := range batch {
		if !engine.ValidID(t.ID) {
			rejected++
			continue
		}
		f.touches[t.ID]++
		st := f.state[t.ID]
		st.ID, st.Status = t.ID, engine.StatusOnline
		if t.At.After(st.LastSeen) {
			st.LastSeen = t.At
		}
		if t.Timeout != 0 {
			st.Timeout = t.Timeout
		}
		f.state[t.ID] = st
	}
	return rejected
}

// SetStatus records an explicit status as apiStatus[id] ("online" or
// "offline" and the cause) and applies it as a touch or an offline mark.
func (f *fakeLocal) SetStatus(id string, s engine.Status, at time.Time, c engine.Cause) error {
	f.mu.Lock()
	if f.apiStatus == nil {
		f.apiStatus = map[string]string{}
	}
	f.apiStatus[id] = s.String() + " " + c.String()
	f.mu.Unlock()
	if s == engine.StatusOnline {
		f.TouchBatch([]engine.Touch{{ID: id, At: at}})
		return nil
	}
	return f.MarkOffline(id, at)
}

func (f *fakeLocal) setControl(id, what string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.state[id]; f.strictControls && !ok {
		return engine.ErrNotFound
	}
	if f.control == nil {
		f.control = map[string]string{}
	}
	f.control[id] = what
	return nil
}

func (f *fakeLocal) SetTimeout(id string, d time.Duration) error {
	return f.setControl(id, "timeout "+d.String())
}
func (f *fakeLocal) ClearTimeout(id string) error               { return f.setControl(id, "clear") }
func (f *fakeLocal) Decommission(id string, at time.Time) error { return f.setControl(id, "removed") }

func (f *fakeLocal) MarkOffline(id string, at time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.offline[id]++
	st, ok := f.state[id]
	if !ok {
		return engine.ErrNotFound
	}
	st.Status, st.Since = engine.StatusOffline, at
	f.state[id] = st
	return nil
}

func (f *fakeLocal) Range(fn func(engine.DeviceState) bool) {
	f.mu.Lock()
	recs := make([]engine.DeviceState, 0, len(f.state))
	for _, st := range f.state {
		recs = append(recs, st)
	}
	f.mu.Unlock()
	for _, st := range recs {
		if !fn(st) {
			return
		}
	}
}

func (f *fakeLocal) Adopt(recs []engine.DeviceState, now time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range recs {
		f.adopted++
		if cur, ok := f.state[r.ID]; ok {
			if r.LastSeen.After(cur.LastSeen) {
				cur.LastSeen = r.LastSeen
				f.state[r.ID] = cur
			}
			continue
		}
		f.state[r.ID] = r
	}
	return nil
}

func (f *fakeLocal) Remove(ids ...string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, id := range ids {
		if _, ok := f.state[id]; ok {
			f.removed++
			n++
			delete(f.state, id)
		}
	}
	return n
}

func (f *fakeLocal) touchCount(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.touches[id]
}

func (f *fakeLocal) totals() (touches, offline int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.touches {
		touches += n
	}
	for _, n := range f.offline {
		offline += n
	}
	return touches, offline
}

func (f *fakeLocal) ids() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []string
	for id := range f.state {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func (f *fakeLocal) has(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.state[id]
	return ok
}

// nopLocal is the part of a Local that test fakes about messages do not
// need: no controls, nothing to look up, hand off or adopt.
type nopLocal struct{}

func (nopLocal) SetTimeout(string, time.Duration) error { return nil }
func (nopLocal) ClearTimeout(string) error              { return nil }
func (nopLocal) Decommission(string, time.Time) error   { return nil }
func (nopLocal) Devices(ids []string, dst []engine.DeviceState) []engine.DeviceState {
	return append(dst, make([]engine.DeviceState, len(ids))...)
}
func (nopLocal) Range(func(engine.DeviceState) bool)         {}
func (nopLocal) Adopt([]engine.DeviceState, time.Time) error { return nil }
func (nopLocal) Remove(...string) int                        { return 0 }

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("CLUSTER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).
			With(slog.String("test", t.Name()))
	}
	return slog.New(slog.DiscardHandler)
}

// testConfig is a fast configuration on 127.0.0.1 with ephemeral ports.
func testConfig(t testing.TB, name string) Config {
	cfg := DefaultConfig()
	cfg.NodeName = name
	cfg.BindAddr = "127.0.0.1:0"
	cfg.DataAddr = "127.0.0.1:0"
	cfg.GossipProfile = ProfileLocal
	cfg.RejoinInterval = time.Second
	cfg.Debounce = 50 * time.Millisecond
	cfg.LeaveTimeout = 2 * time.Second
	cfg.DialTimeout = 500 * time.Millisecond
	cfg.WriteTimeout = time.Second
	cfg.MinBackoff = 10 * time.Millisecond
	cfg.MaxBackoff = 200 * time.Millisecond
	cfg.HandoffTimeout = 5 * time.Second
	cfg.Logger = testLogger(t)
	return cfg
}

// staticNode is a router and a data server without memberlist: tests set
// its table by hand.
type staticNode struct {
	name  string
	cfg   *Config
	local *fakeLocal
	m     *clusterMetrics
	r     *Router
	srv   *server
	addr  string
}

func newStaticNode(t testing.TB, name string, tweak func(*Config)) *staticNode {
	cfg := testConfig(t, name)
	if tweak != nil {
		tweak(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n := &staticNode{name: name, cfg: &cfg, local: newFakeLocal(), addr: ln.Addr().String()}
	n.m = newClusterMetrics(metrics.NewSet())
	n.r = newRouter(n.cfg, n.local, cfg.Logger, n.m)
	if n.r.ch, err = newChannel(cfg.keys()); err != nil { // as New does
		t.Fatal(err)
	}
	n.srv = newServer(n.r, ln, cfg.Logger, time.Now, anyMember)
	n.srv.start()
	t.Cleanup(func() {
		n.r.close()
		n.srv.close()
	})
	return n
}

// staticCluster builds n static nodes that share one table.
func staticCluster(t testing.TB, n int, tweak func(*Config)) []*staticNode {
	nodes := make([]*staticNode, n)
	var ms []string
	addrs := map[string]string{}
	for i := range nodes {
		nodes[i] = newStaticNode(t, fmt.Sprintf("node-%d", i), tweak)
		ms = append(ms, nodes[i].name)
		addrs[nodes[i].name] = nodes[i].addr
	}
	tb := NewTable(nodes[0].cfg.Partitions, ms)
	for _, nd := range nodes {
		nd.r.setTable(tb, addrs)
	}
	return nodes
}

func touchBatch(ids []string, at time.Time) []engine.Touch {
	b := make([]engine.Touch, len(ids))
	for i, id := range ids {
		b[i] = engine.Touch{ID: id, At: at}
	}
	return b
}

func deviceIDs(prefix string, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%06d", prefix, i)
	}
	return ids
}

// anyMember is the data server's membership check for routers tested
// without a Node: every sender is a member.
func anyMember(string, time.Time) bool { return true }

// Devices implements Local's lookups.
func (f *fakeLocal) Devices(ids []string, dst []engine.DeviceState) []engine.DeviceState {
	if f.hang != nil {
		<-f.hang
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range ids {
		st, ok := f.state[id]
		if !ok {
			st = engine.DeviceState{ID: id}
		}
		dst = append(dst, st)
	}
	return dst
}
