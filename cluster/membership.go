package cluster

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Node metadata, gossiped by memberlist with every alive message:
//
//	metaVersion:u8 protocol:u8 dataPort:u16be partitions:u32be hostLen:u8 dataHost [flags:u8]
//
// An empty dataHost means "my gossip address". flags, optional: bit 0 =
// leaving (Node.Close gossips it before the leave, so that the others tell
// a graceful leave from a crash); other bits, and any bytes after flags
// (fields a later version may add), are ignored. A member whose
// metadata is missing, malformed, of another protocol version or of
// another partition count is left out of the table (and logged): it would
// route differently, so it must own nothing.
const metaVersion = 1

// Member is one member of the cluster as this node sees it.
type Member struct {
	Name string
	// Gossip is the memberlist address, host:port.
	Gossip string
	// Data is the advertised forwarding address ("" if the metadata is
	// unusable).
	Data string
	// State is "alive": Members lists the members memberlist has not
	// declared dead or left, and it tells no one when it merely suspects
	// one (a suspect keeps its partitions until declared dead).
	State string
	// Protocol is the advertised data protocol version.
	Protocol int
	// Partitions is the member's partition count.
	Partitions int
	// Usable says the member takes part in the table (valid metadata of
	// our protocol version and partition count).
	Usable bool
	// LastHeard is when this node last heard from the member: its answer
	// to a probe (one member is probed every probe interval, 1 s on a
	// LAN, in turn) or a gossiped change; zero for this node itself. RTT
	// is the last probe's round trip.
	LastHeard time.Time
	RTT       time.Duration
}

const metaFixedLen = 9

// metaLeaving is the flag of a node leaving gracefully.
const metaLeaving = 1

func encodeMeta(dataHost string, dataPort, partitions int, leaving bool) []byte {
	b := make([]byte, metaFixedLen, metaFixedLen+len(dataHost)+1)
	b[0], b[1] = metaVersion, ProtocolVersion
	binary.BigEndian.PutUint16(b[2:], uint16(dataPort))
	binary.BigEndian.PutUint32(b[4:], uint32(partitions))
	b[8] = byte(len(dataHost))
	b = append(b, dataHost...)
	if leaving {
		b = append(b, metaLeaving)
	}
	return b
}

// nodeMeta is a member's decoded metadata.
type nodeMeta struct {
	data       string // data address; the gossip IP stands in for an empty host
	proto      int
	partitions int
	leaving    bool // the member is leaving gracefully
}

func decodeMeta(meta []byte, gossipIP net.IP) (nodeMeta, error) {
	if len(meta) < metaFixedLen || meta[0] != metaVersion {
		return nodeMeta{}, errors.New("no presence metadata")
	}
	m := nodeMeta{proto: int(meta[1]), partitions: int(binary.BigEndian.Uint32(meta[4:]))}
	port := binary.BigEndian.Uint16(meta[2:])
	end := metaFixedLen + int(meta[8])
	if len(meta) < end || port == 0 {
		return m, errors.New("malformed metadata")
	}
	if len(meta) > end {
		m.leaving = meta[end]&metaLeaving != 0
	}
	host := string(meta[metaFixedLen:end])
	if host == "" {
		if gossipIP == nil {
			return m, errors.New("no address")
		}
		host = gossipIP.String()
	}
	m.data = net.JoinHostPort(host, strconv.Itoa(int(port)))
	return m, nil
}

// usable says why a member with this metadata cannot take part in our
// table, or nil.
func (m nodeMeta) usable(partitions int) error {
	if m.proto != ProtocolVersion {
		return fmt.Errorf("data protocol %d, want %d", m.proto, ProtocolVersion)
	}
	if m.partitions != partitions {
		return fmt.Errorf("%d partitions, want %d", m.partitions, partitions)
	}
	return nil
}

// delegate answers memberlist's callbacks. They run in memberlist's
// goroutines, some under its locks: they only record and signal.
type delegate struct {
	n          *Node
	host       string // the data address's host ("": the gossip address)
	port       int    // the data address's port
	partitions int

	mu   sync.Mutex
	meta []byte // this node's metadata, as NodeMeta hands it out
}

func newDelegate(n *Node, host string, port, partitions int) *delegate {
	return &delegate{n: n, host: host, port: port, partitions: partitions,
		meta: encodeMeta(host, port, partitions, false)}
}

var (
	_ memberlist.Delegate      = (*delegate)(nil)
	_ memberlist.EventDelegate = (*delegate)(nil)
)

func (d *delegate) NodeMeta(limit int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.meta) > limit {
		return nil // cannot happen: host <= 255 bytes < MetaMaxSize
	}
	return d.meta
}

// setLeaving adds the leaving flag to the metadata; memberlist gossips it
// on the next UpdateNode.
func (d *delegate) setLeaving() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.meta = encodeMeta(d.host, d.port, d.partitions, true)
}

func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// The event callbacks run under memberlist's node lock, the one place the
// fields of a memberlist.Node may be read: they copy it into the node's
// memberView before signalling.
func (d *delegate) NotifyJoin(n *memberlist.Node) {
	d.n.view.put(n, eventJoin)
	d.n.signal()
}

func (d *delegate) NotifyUpdate(n *memberlist.Node) {
	d.n.view.put(n, eventUpdate)
	d.n.signal()
}

// NotifyPingComplete (memberlist.PingDelegate) records that a probe of
// other was answered: Member.LastHeard and RTT. n is memberlist's own
// node; only its Name is read.
func (d *delegate) NotifyPingComplete(other *memberlist.Node, rtt time.Duration, _ []byte) {
	d.n.view.heard(other.Name, rtt)
}

// AckPayload (memberlist.PingDelegate) adds nothing to probe acks.
func (d *delegate) AckPayload() []byte { return nil }

// NotifyLeave tells a graceful leave from a failure by the member's last
// metadata: a node leaving gracefully first gossips its metadata with the
// leaving flag (Node.Close). memberlist's own mark, the Left state, does
// not reach this callback: it passes a Node whose State field memberlist
// never sets (hashicorp/memberlist#293).
func (d *delegate) NotifyLeave(n *memberlist.Node) {
	d.n.view.remove(n.Name)
	d.n.signal()
}

// memberView is this node's copy of the live members (joined, not yet
// declared dead or left) and of the membership events since the last
// table, kept by the event callbacks. memberlist's own Members() returns
// pointers into nodes that its alive handler rewrites in place (Addr, Port,
// Meta) while the caller reads them, a data race (hashicorp/memberlist#306);
// copies taken under its lock are safe. A suspect member stays in the
// view, as it stays in Members(): it keeps its partitions until declared
// dead. Members and events are read together (take), so that a table and
// the events that explain it agree.
type memberView struct {
	mu     sync.Mutex
	nodes  map[string]memberlist.Node
	events pendingEvents
	// gone holds when each member was removed, for has: a node that
	// leaves hands its devices off after its leave reached us.
	gone map[string]time.Time
	// lastHeard is when each member last answered a probe or gossiped an
	// event, and the probe's round trip.
	lastHeard map[string]heardAt
}

type heardAt struct {
	at  time.Time
	rtt time.Duration
}

// heard notes that name answered a probe with rtt.
func (v *memberView) heard(name string, rtt time.Duration) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, member := v.nodes[name]; !member {
		return // a probe answered after the member was removed: not kept
	}
	if v.lastHeard == nil {
		v.lastHeard = make(map[string]heardAt)
	}
	v.lastHeard[name] = heardAt{at: time.Now(), rtt: rtt}
}

// lastHeardOf returns when name was last heard of, and the last probe's
// round trip (0 if none yet).
func (v *memberView) lastHeardOf(name string) (time.Time, time.Duration) {
	v.mu.Lock()
	defer v.mu.Unlock()
	h := v.lastHeard[name]
	return h.at, h.rtt
}

func (v *memberView) put(n *memberlist.Node, k eventKind) {
	c := *n
	c.Meta = bytes.Clone(n.Meta)
	c.Addr = slices.Clone(n.Addr)
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.nodes == nil {
		v.nodes = make(map[string]memberlist.Node)
	}
	v.nodes[c.Name] = c
	v.events.note(c.Name, k)
	if v.lastHeard == nil {
		v.lastHeard = make(map[string]heardAt)
	}
	h := v.lastHeard[c.Name]
	h.at = time.Now()
	v.lastHeard[c.Name] = h
}

// remove drops the member and notes a graceful leave if its last metadata
// said it was leaving, a failure otherwise.
func (v *memberView) remove(name string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	k := eventFailed
	if n, ok := v.nodes[name]; ok {
		if m, err := decodeMeta(n.Meta, n.Addr); err == nil && m.leaving {
			k = eventLeft
		}
	}
	delete(v.nodes, name)
	delete(v.lastHeard, name)
	v.events.note(name, k)
	now := time.Now()
	if v.gone == nil {
		v.gone = make(map[string]time.Time)
	}
	for n, at := range v.gone {
		if now.Sub(at) > goneMemory {
			delete(v.gone, n)
		}
	}
	v.gone[name] = now
}

// goneMemory is how long has remembers a removed member: longer
// than a leaving node's handoff (HandoffTimeout, 30 s by default).
const goneMemory = 5 * time.Minute

// has reports whether name is a live member, or one removed less than
// goneMemory ago (a leaving node's handoff follows its leave).
func (v *memberView) has(name string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.nodes[name]; ok {
		return true
	}
	at, ok := v.gone[name]
	return ok && time.Since(at) <= goneMemory
}

// list returns copies of the live members.
func (v *memberView) list() []memberlist.Node {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Collect(maps.Values(v.nodes))
}

// take returns copies of the live members and the events since the last
// take.
func (v *memberView) take() (nodes []memberlist.Node, joined, left, failed []string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	joined, left, failed = v.events.take()
	return slices.Collect(maps.Values(v.nodes)), joined, left, failed
}

type eventKind uint8

const (
	eventJoin eventKind = iota
	eventUpdate
	eventLeft
	eventFailed
)

// pendingEvents accumulates membership events between two tables (guarded
// by memberView's lock).
type pendingEvents struct {
	joined, left, failed map[string]struct{}
}

func (p *pendingEvents) note(name string, k eventKind) {
	if p.joined == nil {
		p.joined, p.left, p.failed = map[string]struct{}{}, map[string]struct{}{}, map[string]struct{}{}
	}
	switch k {
	case eventJoin:
		p.joined[name] = struct{}{}
	case eventLeft:
		p.left[name] = struct{}{}
	case eventFailed:
		p.failed[name] = struct{}{}
	}
}

func (p *pendingEvents) take() (joined, left, failed []string) {
	keys := func(m map[string]struct{}) []string {
		return slices.Sorted(maps.Keys(m))
	}
	joined, left, failed = keys(p.joined), keys(p.left), keys(p.failed)
	p.joined, p.left, p.failed = nil, nil, nil
	return joined, left, failed
}

// memberlistConfig builds memberlist's configuration from ours.
func memberlistConfig(cfg *Config, d *delegate, logger *slog.Logger) (*memberlist.Config, error) {
	var mc *memberlist.Config
	if cfg.GossipProfile == ProfileLocal {
		mc = memberlist.DefaultLocalConfig()
		// Faster than DefaultLocalConfig: dead within ~1-2 s on loopback.
		mc.ProbeInterval = 200 * time.Millisecond
		mc.ProbeTimeout = 100 * time.Millisecond
		mc.GossipInterval = 50 * time.Millisecond
		mc.SuspicionMult = 2
		mc.PushPullInterval = 2 * time.Second
	} else {
		mc = memberlist.DefaultLANConfig()
	}
	mc.Name = cfg.NodeName
	host, port, err := splitHostPort(cfg.BindAddr)
	if err != nil {
		return nil, err
	}
	if host == "" {
		host = "0.0.0.0"
	}
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertisePort = port
	if cfg.AdvertiseAddr != "" {
		ah, ap, err := splitHostPort(cfg.AdvertiseAddr)
		if err != nil {
			return nil, err
		}
		mc.AdvertiseAddr, mc.AdvertisePort = ah, ap
	}
	if keys := cfg.keys(); keys != nil {
		// Sends with the primary, accepts every key of the ring.
		ring, err := memberlist.NewKeyring(keys, cfg.SecretKey)
		if err != nil {
			return nil, fmt.Errorf("cluster: keyring: %w", err)
		}
		mc.Keyring = ring
	}
	mc.Transport = cfg.Transport // nil: memberlist's NetTransport on BindAddr
	mc.Delegate = d
	mc.Events = d
	mc.Ping = d
	mc.Logger = log.New(&slogWriter{log: logger}, "", 0)
	return mc, nil
}

// slogWriter turns memberlist's "[LEVEL] memberlist: text" lines into slog
// records at the matching level (memberlist logs through a *log.Logger).
type slogWriter struct{ log *slog.Logger }

func (w *slogWriter) Write(p []byte) (int, error) {
	line := string(bytes.TrimRight(p, "\n"))
	level := slog.LevelInfo
	for _, l := range []struct {
		prefix string
		level  slog.Level
	}{
		{"[DEBUG] ", slog.LevelDebug},
		{"[INFO] ", slog.LevelInfo},
		{"[WARN] ", slog.LevelWarn},
		{"[ERR] ", slog.LevelError},
		{"[ERROR] ", slog.LevelError},
	} {
		if rest, ok := strings.CutPrefix(line, l.prefix); ok {
			line, level = rest, l.level
			break
		}
	}
	w.log.Log(context.Background(), level, line, slog.String("component", "memberlist"))
	return len(p), nil
}

var _ io.Writer = (*slogWriter)(nil)
