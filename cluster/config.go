package cluster

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/hashicorp/memberlist"
)

// ErrInvalidConfig is wrapped by every Config.Validate error.
var ErrInvalidConfig = errors.New("cluster: invalid config")

// Gossip timing profiles (Config.GossipProfile).
const (
	// ProfileLAN is memberlist.DefaultLANConfig: probes every second, a
	// crashed node suspected, then declared dead after a few seconds. For
	// production.
	ProfileLAN = "lan"
	// ProfileLocal is memberlist.DefaultLocalConfig with faster probes and
	// suspicion: a crashed node is declared dead quickly on loopback.
	// For tests and single-host clusters; too eager for real networks.
	ProfileLocal = "local"
)

// Config configures a Node: membership (gossip), ownership (partitions) and
// forwarding (data connections). Start from DefaultConfig; New calls
// Validate. The daemon maps the PRESENCE_CLUSTER_* variables onto it (noted
// per field); a daemon without cluster settings does not build a Node.
type Config struct {
	// NodeName identifies this node in the cluster (PRESENCE_NODE_NAME).
	// Unique among the members and stable across restarts: ownership is a
	// function of the names. Default: the host name.
	NodeName string

	// BindAddr is the gossip address, host:port, UDP and TCP
	// (PRESENCE_CLUSTER_BIND). Default "0.0.0.0:7946". Port 0 picks a free
	// port (tests); DataAddr must then be explicit.
	BindAddr string
	// AdvertiseAddr is the gossip address told to the other nodes, host:port,
	// when BindAddr is a wildcard or behind NAT. Empty: memberlist chooses
	// (the bind host, or the first private address for a wildcard).
	AdvertiseAddr string
	// DataAddr is where this node accepts forwarded messages and handoffs,
	// host:port (PRESENCE_CLUSTER_DATA_ADDR). Empty: the gossip bind host
	// with the gossip port + 1. It is advertised in the node metadata; a
	// wildcard host is advertised as the gossip advertise address.
	DataAddr string

	// Join lists seed gossip addresses, host:port (PRESENCE_CLUSTER_JOIN,
	// comma-separated). Empty: this node starts a cluster of its own and
	// works alone until another node joins it. Start succeeds even if no
	// seed answers; the seeds are retried every RejoinInterval.
	Join []string
	// RejoinInterval is how often the seeds are joined again, even when
	// everything looks healthy: after a network partition heals the two
	// halves have declared each other dead and only a join merges them.
	// A join is one TCP push/pull per seed. 0 disables. Default 30 s.
	RejoinInterval time.Duration
	// SecretKey encrypts and authenticates gossip (AES, 16, 24 or 32 bytes;
	// PRESENCE_CLUSTER_KEY in base64, see ParseKey). Nil: plain gossip. Every
	// node needs the same key. The data connections are not encrypted: run
	// them on a private network.
	SecretKey []byte
	// GossipProfile picks memberlist's timings: ProfileLAN (default) or
	// ProfileLocal.
	GossipProfile string
	// Transport, if set, carries the gossip instead of memberlist's default
	// NetTransport (UDP and TCP on BindAddr); nil (production) is the
	// default. It is already listening: memberlist ignores BindAddr then
	// (BindAddr still gives the default DataAddr), asks the Transport for
	// the advertised address unless AdvertiseAddr is set, and shuts it
	// down with the Node. One Node per Transport. Tests wrap the real
	// transport to cut the network between nodes.
	Transport memberlist.Transport

	// Partitions is the fixed partition count (1..MaxPartitions); every node
	// must use the same. More partitions spread devices more evenly and make
	// a handoff finer-grained; each costs 2 bytes per table. Default 1024.
	Partitions int
	// Debounce is how long membership must stay quiet before the table is
	// rebuilt: a burst of joins (a cluster starting) yields one table, not
	// one per node. A change waits at most 4*Debounce. Default 200 ms.
	Debounce time.Duration
	// LeaveTimeout bounds each of Close's three gossip waits: for the
	// leaving flag's broadcast, for its push to every member over TCP, then
	// for the leave broadcast (so Close may spend three times this before
	// its handoff). Default 5 s.
	LeaveTimeout time.Duration

	// QueueSize is how many messages wait for one peer (about 48 bytes each
	// plus the id). A full queue drops what does not fit, counted per peer.
	// Default 65536 (about 1 s of a heavy node's traffic for that peer).
	QueueSize int
	// MaxBatch bounds the messages per batch frame. Default 1024.
	MaxBatch int
	// EnqueueWait is the longest Router.TouchBatch or MarkOffline waits for
	// room in the queues of connected peers before it drops the rest (the
	// bound on how long forwarding can stall an ingest worker). A peer that
	// is not connected never makes a caller wait. Default 5 ms.
	EnqueueWait time.Duration
	// ReadsAll says that every node receives every message: the nodes
	// subscribe plainly (a broker without shared subscriptions, e.g. the
	// NATS MQTT gateway; -share-group=none). The router then keeps the
	// messages of the devices this node owns and skips the others, counted
	// in presence_cluster_skipped_messages_total, instead of forwarding
	// them: their owner reads them itself. Handoff and rebuilds work as
	// with forwarding. The cost: every node reads and parses the whole
	// stream. The daemon sets it when clustered without a share group.
	ReadsAll bool
	// DialTimeout bounds one connection attempt to a peer. Default 2 s.
	DialTimeout time.Duration
	// Dial, if set, opens the data connections (forwarding and handoff) in
	// place of a net.Dialer; network is "tcp" and ctx carries DialTimeout
	// (and the handoff deadline). Nil (production) is a net.Dialer. Tests
	// use it to cut the data connections between nodes.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// WriteTimeout bounds writing one frame; a peer that takes longer is
	// considered gone and its connection is dropped. Default 5 s.
	WriteTimeout time.Duration
	// MinBackoff and MaxBackoff bound the exponential pause between
	// reconnect attempts to a peer. Defaults 50 ms and 2 s.
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// MaxFrameSize is the largest frame accepted, bytes; a peer sending a
	// larger one is disconnected. Default 4 MiB.
	MaxFrameSize int

	// HandoffChunk is the number of device records per handoff frame.
	// Default 1024.
	HandoffChunk int
	// HandoffTimeout bounds one handoff transfer to one peer (dial, stream,
	// acknowledgement). Default 30 s.
	HandoffTimeout time.Duration

	// OnChange, if set, is called after every new table, from the membership
	// goroutine, one call at a time; it must not block (hand the Change to
	// a goroutine). The daemon rebuilds partitions gained from crashed nodes
	// from Redis (Change.Rebuild).
	OnChange func(Change)
	// RebuildHold, for an OnChange that rebuilds the partitions of
	// Change.Rebuild and then calls Node.RebuildDone, is how long their
	// messages wait for RebuildDone before they are applied anyway. Applied
	// before its device's state is rebuilt, a message makes the device new
	// here: an online transition (and history row, and event) that the
	// device already had. Default 0: nothing is held. The daemon uses 30 s.
	RebuildHold time.Duration
	// RebuildHoldSize bounds the messages held, over all partitions. When
	// it is full, everything held is applied at once, in order, and nothing
	// more is held until the next crash (counted in
	// presence_cluster_hold_overflow_total): duplicate online transitions
	// rather than unbounded memory. Default 262144 (about 25 MiB with the
	// topics the ids point into).
	RebuildHoldSize int

	// LogInterval limits repeated log lines (drops, reconnects) to one per
	// kind per interval. Default 10 s.
	LogInterval time.Duration
	// Logger receives the logs, memberlist's included; nil is
	// slog.Default().
	Logger *slog.Logger
	// Metrics receives the metrics (names presence_cluster_*); it must not
	// be shared with another Node. Nil creates a set; see Node.Metrics.
	Metrics *metrics.Set
	// Clock is the time handed devices are adopted at; nil is time.Now.
	// The node's timers (the debounce of table changes, the expiry of
	// rebuild holds) and socket deadlines run on real time: they are the
	// runtime's and the kernel's, and a deadline must be compared with the
	// clock its timer runs on.
	Clock func() time.Time
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		NodeName:       host,
		BindAddr:       "0.0.0.0:7946",
		RejoinInterval: 30 * time.Second,
		GossipProfile:  ProfileLAN,
		Partitions:     DefaultPartitions,
		Debounce:       200 * time.Millisecond,
		LeaveTimeout:   5 * time.Second,
		QueueSize:      65536,
		MaxBatch:       1024,
		EnqueueWait:    5 * time.Millisecond,
		DialTimeout:    2 * time.Second,
		WriteTimeout:   5 * time.Second,
		MinBackoff:     50 * time.Millisecond,
		MaxBackoff:     2 * time.Second,
		MaxFrameSize:   4 << 20,
		HandoffChunk:   1024,
		HandoffTimeout: 30 * time.Second,

		RebuildHoldSize: 1 << 18,
		LogInterval:     10 * time.Second,
	}
}

// ParseKey decodes a base64 (standard encoding) gossip key of 16, 24 or 32
// bytes, as PRESENCE_CLUSTER_KEY holds it.
func ParseKey(s string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("%w: SecretKey: not base64: %v", ErrInvalidConfig, err)
	}
	if !validKeyLen(len(k)) {
		return nil, fmt.Errorf("%w: SecretKey: %d bytes, want 16, 24 or 32", ErrInvalidConfig, len(k))
	}
	return k, nil
}

func validKeyLen(n int) bool { return n == 16 || n == 24 || n == 32 }

// Validate reports every invalid field, joined; each wraps ErrInvalidConfig.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s: %s", ErrInvalidConfig, field, fmt.Sprintf(format, args...)))
	}
	if c.NodeName == "" {
		bad("NodeName (-node-name)", "empty")
	} else if len(c.NodeName) > 128 {
		bad("NodeName (-node-name)", "%d bytes, want at most 128", len(c.NodeName))
	}
	_, bindPort, err := splitHostPort(c.BindAddr)
	if err != nil {
		bad("BindAddr (-cluster-bind)", "%v", err)
	}
	if c.AdvertiseAddr != "" {
		if _, _, err := splitHostPort(c.AdvertiseAddr); err != nil {
			bad("AdvertiseAddr", "%v", err)
		}
	}
	if c.DataAddr != "" {
		if _, _, err := splitHostPort(c.DataAddr); err != nil {
			bad("DataAddr (-cluster-data-addr)", "%v", err)
		}
	} else if err == nil && (bindPort == 0 || bindPort == 65535) {
		bad("DataAddr (-cluster-data-addr)", "empty with gossip port %d: set it explicitly", bindPort)
	}
	for _, j := range c.Join {
		if _, _, err := splitHostPort(j); err != nil {
			bad("Join (-cluster-join)", "%q: %v", j, err)
		}
	}
	if c.SecretKey != nil && !validKeyLen(len(c.SecretKey)) {
		bad("SecretKey", "%d bytes, want 16, 24 or 32", len(c.SecretKey))
	}
	if c.GossipProfile != ProfileLAN && c.GossipProfile != ProfileLocal {
		bad("GossipProfile", "%q, want %q or %q", c.GossipProfile, ProfileLAN, ProfileLocal)
	}
	if c.Partitions < 1 || c.Partitions > MaxPartitions {
		bad("Partitions", "%d, want 1..%d", c.Partitions, MaxPartitions)
	}
	if c.QueueSize < 1 {
		bad("QueueSize", "%d, want >= 1", c.QueueSize)
	}
	if c.MaxBatch < 1 {
		bad("MaxBatch", "%d, want >= 1", c.MaxBatch)
	}
	if c.HandoffChunk < 1 {
		bad("HandoffChunk", "%d, want >= 1", c.HandoffChunk)
	}
	if c.RebuildHold > 0 && c.RebuildHoldSize < 1 {
		bad("RebuildHoldSize", "%d, want >= 1 with RebuildHold %v", c.RebuildHoldSize, c.RebuildHold)
	}
	// A batch frame holds MaxBatch messages of up to ~290 bytes each; a
	// state frame HandoffChunk records of up to ~300.
	if need := 64 + max(c.MaxBatch*290, c.HandoffChunk*300); c.MaxFrameSize < need {
		bad("MaxFrameSize", "%d, want >= %d for MaxBatch and HandoffChunk", c.MaxFrameSize, need)
	}
	for _, d := range []struct {
		name   string
		v, min time.Duration
	}{
		{"Debounce", c.Debounce, 0},
		{"LeaveTimeout", c.LeaveTimeout, time.Millisecond},
		{"RejoinInterval", c.RejoinInterval, 0},
		{"EnqueueWait", c.EnqueueWait, 0},
		{"DialTimeout", c.DialTimeout, time.Millisecond},
		{"WriteTimeout", c.WriteTimeout, time.Millisecond},
		{"MinBackoff", c.MinBackoff, time.Millisecond},
		{"MaxBackoff", c.MaxBackoff, c.MinBackoff},
		{"HandoffTimeout", c.HandoffTimeout, time.Millisecond},
		{"RebuildHold", c.RebuildHold, 0},
		{"LogInterval", c.LogInterval, 0},
	} {
		if d.v < d.min {
			bad(d.name, "%v, want >= %v", d.v, d.min)
		}
	}
	if c.EnqueueWait > time.Second {
		bad("EnqueueWait", "%v, want <= 1s: it stalls ingest", c.EnqueueWait)
	}
	return errors.Join(errs...)
}

// splitHostPort parses host:port with a numeric port 0..65535.
func splitHostPort(addr string) (host string, port int, err error) {
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err = strconv.Atoi(ps)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("port %q: want 0..65535", ps)
	}
	return host, port, nil
}

// dial opens a data connection to addr within DialTimeout and, if deadline
// is not zero, before deadline: through Dial if set, else a net.Dialer.
func (c *Config) dial(addr string, deadline time.Time) (net.Conn, error) {
	if c.Dial == nil {
		d := net.Dialer{Timeout: c.DialTimeout, Deadline: deadline}
		return d.Dial("tcp", addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.DialTimeout)
	defer cancel()
	if !deadline.IsZero() {
		var cancel2 context.CancelFunc
		ctx, cancel2 = context.WithDeadline(ctx, deadline)
		defer cancel2()
	}
	return c.Dial(ctx, "tcp", addr)
}
