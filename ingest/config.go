package ingest

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Config configures an Ingester. Start from DefaultConfig; Validate (also
// called by New) reports every problem at once.
type Config struct {
	// BrokerURL is the MQTT broker: tcp://host:1883 (also mqtt://),
	// ssl://host:8883 (also tls://, mqtts://), ws://host:port/path or
	// wss://. User info in the URL ("tcp://user:pass@host:1883") is used
	// as credentials when Username is empty.
	BrokerURL string
	// Username and Password authenticate every connection (optional).
	Username string
	Password string
	// TLS configures ssl:// and wss:// connections; nil uses the system roots.
	TLS *tls.Config

	// ClientIDPrefix names the connections: with CleanSession the client id
	// is PREFIX-RANDOM-N (RANDOM fixed per Ingester, so restarts and several
	// nodes never collide); without it PREFIX-N, stable across restarts so
	// the broker resumes the session, hence each node needs its own prefix.
	// Keep it short: some brokers limit client ids to 23 bytes.
	ClientIDPrefix string

	// Topics are the subscribed patterns, tried in order; see Topic.
	Topics []Topic

	// Connections is how many subscriber connections share the stream
	// (1..64). Each is one paho client decoding on its own goroutine: more
	// connections spread the decoding over cores (BENCHMARKS.md measures
	// one and two). More than one needs ShareGroup, otherwise every
	// connection would get every message.
	Connections int
	// ShareGroup makes the subscriptions shared ("$share/GROUP/FILTER"):
	// the broker gives each message to one subscriber of the group, so
	// connections (and nodes of a cluster using the same group) split the
	// stream. Empty disables sharing (plain subscriptions; the flag and
	// variable say "none"), for brokers without shared subscriptions.
	// MQTT forbids '/', '+' and '#' in it.
	ShareGroup string
	// QoS of the subscriptions (0, 1 or 2). With 1 (default) the broker
	// retries messages not yet acknowledged when a connection drops; a
	// message is acknowledged as soon as it is read from the connection
	// (ingestConn), not once the engine has it.
	QoS byte
	// CleanSession starts every connection with a fresh session (default
	// true). False (-mqtt-persistent-session) keeps a persistent session
	// per connection under a stable client id, so that the broker queues
	// QoS 1 messages while presenced restarts and delivers them when it
	// reconnects; they are applied with the time they arrive. Not the
	// default: the broker keeps the sessions of a node that is gone for good
	// (Mosquitto by default forever), and with shared subscriptions it may
	// keep handing that session its share of the stream. See "Restarts and
	// persistent sessions" in docs/CONFIGURATION.md. Subscriptions are
	// renewed on every connect either way.
	CleanSession bool

	// ProbeTimeout bounds the wait for the subscription probe (see
	// ProbePrefix): after each connection's SUBACK a message is published
	// on a reserved topic of every filter, and the Ingester is not Ready
	// until it came back. A probe not back within ProbeTimeout makes
	// ReadyErr name the likely cause (no shared subscriptions, an ACL).
	// 0 disables probing: Ready then only needs the SUBACKs.
	ProbeTimeout time.Duration

	// Shards is the number of worker goroutines (and queues); a device
	// always maps to the same shard, so its messages stay in order.
	Shards int
	// QueueSize is how many messages one shard buffers. When a shard's
	// queue is full, further messages for it are dropped (reason
	// queue_full) instead of blocking the MQTT client. Memory: two buffers
	// of QueueSize * 48 bytes per shard.
	QueueSize int
	// BatchSize bounds the messages per Handler.TouchBatch call.
	BatchSize int
	// BatchDelay is how long a worker waits after a shard's first pending
	// message for a full batch before it hands over what it has: larger
	// batches and fewer wake-ups against added latency. 0 hands over at
	// once. Under load batches fill before the delay.
	BatchDelay time.Duration

	// MaxTopicLen drops longer topics (bytes; reason topic_too_long).
	MaxTopicLen int
	// MaxPayloadLen drops larger payloads (bytes; reason payload_too_large).
	MaxPayloadLen int

	// KeepAlive is the MQTT keep-alive; a dead connection is noticed after
	// about 1.5 times this.
	KeepAlive time.Duration
	// ConnectTimeout bounds one connection attempt (dial, TLS, CONNACK).
	ConnectTimeout time.Duration
	// ConnectRetryInterval is the pause between attempts of the first
	// connection (the broker may start after us).
	ConnectRetryInterval time.Duration
	// MaxReconnectInterval caps paho's exponential backoff (from 1 s)
	// between reconnect attempts, and ours between subscribe retries.
	MaxReconnectInterval time.Duration
	// SubscribeTimeout bounds the wait for a SUBACK.
	SubscribeTimeout time.Duration
	// DisconnectQuiesce is how long Close lets each connection finish its
	// work before disconnecting.
	DisconnectQuiesce time.Duration

	// LogInterval limits logging: at most one line per drop reason, and per
	// connection event kind, per interval; the next line says how many were
	// suppressed.
	LogInterval time.Duration
	// Logger receives the logs; nil is slog.Default().
	Logger *slog.Logger
	// Metrics receives this Ingester's metrics (names
	// presence_ingest_*); it must not be shared with another Ingester.
	// Nil creates a new set; see Ingester.Metrics.
	Metrics *metrics.Set
	// Clock stamps each message when it arrives (the touch time); nil is
	// time.Now. Tests inject their own.
	Clock func() time.Time
}

// DefaultConfig returns the defaults: the local broker, the default topics,
// 2 shared connections in group "presence", QoS 1, clean sessions.
func DefaultConfig() Config {
	return Config{
		BrokerURL:            "tcp://127.0.0.1:1883",
		ClientIDPrefix:       "presence",
		Topics:               DefaultTopics(),
		Connections:          2,
		ShareGroup:           "presence",
		QoS:                  1,
		CleanSession:         true,
		ProbeTimeout:         10 * time.Second,
		Shards:               max(2, runtime.GOMAXPROCS(0)),
		QueueSize:            16384,
		BatchSize:            512,
		BatchDelay:           5 * time.Millisecond,
		MaxTopicLen:          256,
		MaxPayloadLen:        64 << 10,
		KeepAlive:            30 * time.Second,
		ConnectTimeout:       10 * time.Second,
		ConnectRetryInterval: 2 * time.Second,
		MaxReconnectInterval: 30 * time.Second,
		SubscribeTimeout:     10 * time.Second,
		DisconnectQuiesce:    250 * time.Millisecond,
		LogInterval:          10 * time.Second,
	}
}

var brokerSchemes = map[string]bool{
	"tcp": true, "mqtt": true, "ssl": true, "tls": true, "mqtts": true, "ws": true, "wss": true,
}

// Validate reports every invalid field, joined.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("ingest: %s: %s", field, fmt.Sprintf(format, args...)))
	}
	if err := validateBrokerURL(c.BrokerURL); err != nil {
		bad("BrokerURL (-mqtt-url)", "%v", err)
	}
	if len(c.Topics) == 0 {
		bad("Topics", "no topic to subscribe to: give -telemetry-topic or -status-topic")
	} else if _, err := NewParser(c.Topics, max(c.MaxTopicLen, 1), max(c.MaxPayloadLen, 0)); err != nil {
		errs = append(errs, err)
	}
	if c.Connections < 1 || c.Connections > 64 {
		bad("Connections (-mqtt-connections)", "%d, want 1..64", c.Connections)
	}
	if c.ShareGroup == "" && c.Connections > 1 {
		bad("ShareGroup (-share-group)", "empty (sharing disabled) with %d connections: every connection would receive every message; set a group or use 1 connection", c.Connections)
	}
	if strings.ContainsAny(c.ShareGroup, "/+#") {
		bad("ShareGroup (-share-group)", "%q must not contain '/', '+' or '#'", c.ShareGroup)
	}
	if c.QoS > 2 {
		bad("QoS (-mqtt-qos)", "%d, want 0, 1 or 2", c.QoS)
	}
	if c.Shards < 1 || c.Shards > 1024 {
		bad("Shards", "%d, want 1..1024", c.Shards)
	}
	if c.BatchSize < 1 {
		bad("BatchSize", "%d, want >= 1", c.BatchSize)
	}
	if c.QueueSize < c.BatchSize {
		bad("QueueSize", "%d, want >= BatchSize (%d)", c.QueueSize, c.BatchSize)
	}
	if c.BatchDelay < 0 || c.BatchDelay > time.Second {
		bad("BatchDelay", "%v, want 0..1s", c.BatchDelay)
	}
	if c.MaxTopicLen < 1 || c.MaxTopicLen > 65535 {
		bad("MaxTopicLen", "%d, want 1..65535", c.MaxTopicLen)
	}
	if c.MaxPayloadLen < 0 {
		bad("MaxPayloadLen", "%d, want >= 0", c.MaxPayloadLen)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
		min  time.Duration
	}{
		{"KeepAlive", c.KeepAlive, time.Second},
		{"ConnectTimeout", c.ConnectTimeout, time.Millisecond},
		{"ConnectRetryInterval", c.ConnectRetryInterval, time.Millisecond},
		{"MaxReconnectInterval", c.MaxReconnectInterval, time.Millisecond},
		{"SubscribeTimeout", c.SubscribeTimeout, time.Millisecond},
		{"LogInterval", c.LogInterval, 0},
	} {
		if d.v < d.min {
			bad(d.name, "%v, want >= %v", d.v, d.min)
		}
	}
	if c.ProbeTimeout < 0 {
		bad("ProbeTimeout (-mqtt-probe-timeout)", "%v, want >= 0 (0 disables the probe)", c.ProbeTimeout)
	}
	if c.DisconnectQuiesce < 0 {
		bad("DisconnectQuiesce", "%v, want >= 0", c.DisconnectQuiesce)
	}
	return errors.Join(errs...)
}

func validateBrokerURL(s string) error {
	if s == "" {
		return errors.New("empty; want e.g. tcp://127.0.0.1:1883")
	}
	u, err := url.Parse(s)
	if err != nil {
		// url.Parse's error quotes the URL, password and all.
		return errors.New("not a URL; want e.g. tcp://127.0.0.1:1883 (user:password@ before the host, percent-encoded)")
	}
	if !brokerSchemes[strings.ToLower(u.Scheme)] {
		return fmt.Errorf("%q: scheme %q not supported; want tcp://, ssl://, ws:// (or mqtt, tls, mqtts, wss), e.g. tcp://127.0.0.1:1883", redact(s), u.Scheme)
	}
	if u.Host == "" {
		return fmt.Errorf("%q: no host; want e.g. tcp://127.0.0.1:1883", redact(s))
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 0 || n > 65535 {
			return fmt.Errorf("%q: port %q is not a port number (0..65535)", redact(s), p)
		}
	}
	return nil
}

// redact hides a password in a broker URL for logs and errors.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
