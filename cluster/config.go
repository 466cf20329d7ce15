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

	"github.com/presence-dev/presence/internal/netaddr"
)

// maxNodeName is the longest node name, bytes (also in a hello).
const maxNodeName = 128

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
	// SecretKey is the cluster key (AES, 16, 24 or 32 bytes;
	// PRESENCE_CLUSTER_KEY in base64, see ParseKeys). It encrypts and
	// authenticates gossip (memberlist's keyring), and the data connections
	// derive theirs from it: TLS 1.3, each end proving the key
	// (secure.go). Every node needs it. Nil: plain gossip and plain data
	// connections, which only a loopback cluster may use unless Insecure.
	SecretKey []byte
	// SecondaryKeys are further cluster keys accepted from others, never
	// used to send (the rest of PRESENCE_CLUSTER_KEY's comma-separated
	// list): how a key is rotated without stopping the cluster
	// (SECURITY.md, "Rotating the cluster key").
	SecondaryKeys [][]byte
	// Insecure allows a cluster without SecretKey on addresses other than
	// loopback (PRESENCE_CLUSTER_INSECURE): then anyone who can reach the
	// gossip or data port can join, forward telemetry and hand devices
	// over. The node logs a warning at start and every hour. Default false:
	// New refuses such a configuration.
	Insecure bool
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
	// larger one is disconnected. Default 4 MiB. A batch frame may hold at
	// most MaxBatch messages and a state frame HandoffChunk records, so
	// every node needs the same three.
	MaxFrameSize int
	// MaxConns bounds the data connections accepted at once (one per peer
	// for forwarding, plus one per handoff in progress); more are closed at
	// once and counted. Default 256.
	MaxConns int
	// HandshakeTimeout bounds a new data connection's handshake (TLS, hello,
	// welcome) on both ends. Default 5 s.
	HandshakeTimeout time.Duration
	// IdleTimeout is how long the data server waits for the next frame on
	// a connection before it closes it; a connected peer with nothing to
	// send writes an empty batch every IdleTimeout/4, so every node needs
	// the same. Once a frame's header is read, its body must follow within
	// 2*WriteTimeout. More than HandoffTimeout. Default 2 min.
	IdleTimeout time.Duration

	// QueryTimeout is how long an answer for the whole cluster (the API's
	// lookups, stats and lists in a clustered daemon) waits for the other
	// nodes (PRESENCE_CLUSTER_QUERY_TIMEOUT); a node that has not answered
	// by then is reported missing, the answer partial. Default 1 s.
	QueryTimeout time.Duration

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

		QueryTimeout:     time.Second,
		MaxConns:         256,
		HandshakeTimeout: 5 * time.Second,
		IdleTimeout:      2 * time.Minute,

		RebuildHoldSize: 1 << 18,
		LogInterval:     10 * time.Second,
	}
}

// ParseKey decodes a base64 (standard encoding) cluster key of 16, 24 or 32
// bytes.
func ParseKey(s string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		// Not err's text: it would quote the offending byte of a secret.
		return nil, fmt.Errorf("%w: SecretKey: not base64", ErrInvalidConfig)
	}
	if !validKeyLen(len(k)) {
		return nil, fmt.Errorf("%w: SecretKey: %d bytes, want 16, 24 or 32", ErrInvalidConfig, len(k))
	}
	return k, nil
}

// ParseKeys decodes PRESENCE_CLUSTER_KEY: one key, or a comma-separated
// list whose first is the primary (SecretKey) and the others secondary
// (SecondaryKeys).
func ParseKeys(s string) (primary []byte, secondary [][]byte, err error) {
	for i, part := range strings.Split(s, ",") {
		k, err := ParseKey(part)
		if err != nil {
			return nil, nil, fmt.Errorf("key %d of the list: %w", i+1, err)
		}
		if i == 0 {
			primary = k
		} else {
			secondary = append(secondary, k)
		}
	}
	return primary, secondary, nil
}

// keys returns every cluster key, the primary first; nil without one.
func (c *Config) keys() [][]byte {
	if c.SecretKey == nil {
		return nil
	}
	return append([][]byte{c.SecretKey}, c.SecondaryKeys...)
}

// Exposed returns the addresses of the configuration (gossip bind and
// advertise, data) that are not loopback: a wildcard or empty host, a host
// name other than localhost, or an IP outside 127.0.0.0/8 and ::1.
func (c *Config) Exposed() []string {
	var out []string
	for _, a := range []string{c.BindAddr, c.AdvertiseAddr, c.DataAddr} {
		if a != "" && !netaddr.Loopback(a) {
			out = append(out, a)
		}
	}
	return out
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
	} else if len(c.NodeName) > maxNodeName {
		bad("NodeName (-node-name)", "%d bytes, want at most %d", len(c.NodeName), maxNodeName)
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
	for i, k := range c.SecondaryKeys {
		if !validKeyLen(len(k)) {
			bad("SecondaryKeys", "key %d: %d bytes, want 16, 24 or 32", i+1, len(k))
		}
	}
	if c.SecretKey == nil && len(c.SecondaryKeys) > 0 {
		bad("SecondaryKeys", "set without SecretKey")
	}
	if exp := c.Exposed(); c.SecretKey == nil && !c.Insecure && len(exp) > 0 {
		bad("SecretKey (PRESENCE_CLUSTER_KEY)", "empty, and %s is not a loopback address: anyone who can reach it "+
			"could join the cluster and change what it reports. Set the same PRESENCE_CLUSTER_KEY on every node "+
			"(e.g. openssl rand -base64 32), or PRESENCE_CLUSTER_INSECURE=true to run without one", strings.Join(exp, ", "))
	}
	if c.MaxConns < 1 {
		bad("MaxConns", "%d, want >= 1", c.MaxConns)
	}
	if c.IdleTimeout <= c.HandoffTimeout {
		// A handoff connection may wait for another transfer's ack, up to
		// HandoffTimeout, between two of its frames.
		bad("IdleTimeout", "%v, want more than HandoffTimeout (%v)", c.IdleTimeout, c.HandoffTimeout)
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
		{"HandshakeTimeout", c.HandshakeTimeout, time.Millisecond},
		{"QueryTimeout", c.QueryTimeout, time.Millisecond},
		{"IdleTimeout", c.IdleTimeout, 4 * time.Millisecond},
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
