package events

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"
)

// Errors of this package. Compare with errors.Is.
var (
	// ErrInvalidConfig wraps every Validate and New failure.
	ErrInvalidConfig = errors.New("events: invalid config")
	// ErrClosed: the hub was closed.
	ErrClosed = errors.New("events: hub closed")
)

// Config is the event hub: its destinations and its alerts. Each
// destination has its own queue (DeliveryConfig), so one slow destination
// never holds back another, nor the engine.
type Config struct {
	// PubSub publishes every event to a Redis Pub/Sub channel, for live
	// consumers (at most once: a subscriber that is not connected misses
	// events). Enabled by default; needs Deps.Redis.
	PubSub PubSubConfig
	// Stream appends every event to a Redis Stream, for durable consumers
	// with consumer groups. Enabled by default; needs Deps.Redis.
	Stream StreamConfig
	// MQTT publishes each status change as a retained message. Disabled by
	// default.
	MQTT MQTTConfig
	// Webhooks POSTs JSON batches of events to each URL, each with its own
	// queue and worker. None by default.
	Webhooks []WebhookConfig
	// WebhookSecret signs the bodies of every webhook whose own Secret is
	// empty (PRESENCE_WEBHOOK_SECRET). Empty: those are not signed.
	WebhookSecret string
	// SSE serves GET /v1/events (Hub.SSEHandler). Enabled by default.
	SSE SSEConfig
	// Alerts derives offline_alert and mass_offline events from the
	// transitions.
	Alerts AlertConfig
}

// OnFull is what a destination does with new events when its queue is
// full. The defaults, per destination, are in DefaultConfig and in
// docs/EVENTS.md ("Delivery and back-pressure").
type OnFull uint8

const (
	// DropOldest drops the oldest queued events to make room, counted in
	// presence_events_dropped_total: the engine never waits. For consumers
	// that lose news by nature (Pub/Sub, SSE clients, webhooks).
	DropOldest OnFull = iota
	// Backpressure makes HandleTransitions wait for room while the
	// destination's store is up (its last send did not fail), so that the
	// engine's delivery slows to the store's pace and the engine coalesces
	// per device meanwhile (engine.Sink): no event is dropped, memory stays
	// bounded by the device count. While the store is down (a send failed
	// and no retry has succeeded yet), before Start and from Close on, it
	// drops the oldest like DropOldest. For destinations that hold state
	// for consumers (the Stream, retained MQTT). A wait lasts at most one
	// send (Timeout): a store that hangs fails the send and stops the wait.
	Backpressure
)

func (o OnFull) String() string {
	switch o {
	case DropOldest:
		return "drop-oldest"
	case Backpressure:
		return "backpressure"
	}
	return fmt.Sprintf("OnFull(%d)", uint8(o))
}

// DeliveryConfig is one destination's queue and retry policy.
type DeliveryConfig struct {
	// QueueCapacity is the most events waiting for this destination (about
	// 48 bytes each; the queue grows on demand up to it). When it is full,
	// OnFull applies. Larger rides out longer outages at the cost of
	// memory.
	QueueCapacity int
	// OnFull is what happens to new events when the queue is full: dropping
	// the oldest (the zero value) or back-pressure on the engine.
	OnFull OnFull
	// BatchSize is the most events per send: one Redis pipeline, one MQTT
	// burst, one webhook POST, one SSE broadcast.
	BatchSize int
	// MinBackoff and MaxBackoff bound the exponential backoff (with jitter)
	// between retries of a failed batch. A failed batch is retried until it
	// succeeds or the hub closes; meanwhile new events queue (and the oldest
	// drop when the queue is full).
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// Timeout bounds one send attempt. Too short fails big batches on a slow
	// destination; too long delays noticing a dead one.
	Timeout time.Duration
}

func defaultDelivery() DeliveryConfig {
	return DeliveryConfig{
		QueueCapacity: 1 << 18, // 262,144 events, ~12 MiB when full
		BatchSize:     1000,
		MinBackoff:    100 * time.Millisecond,
		MaxBackoff:    10 * time.Second,
		Timeout:       10 * time.Second,
	}
}

func (c DeliveryConfig) validate(dest string) error {
	switch {
	case c.QueueCapacity <= 0:
		return fmt.Errorf("%w: %s: QueueCapacity must be > 0, got %d", ErrInvalidConfig, dest, c.QueueCapacity)
	case c.OnFull > Backpressure:
		return fmt.Errorf("%w: %s: unknown OnFull %v", ErrInvalidConfig, dest, c.OnFull)
	case c.BatchSize <= 0:
		return fmt.Errorf("%w: %s: BatchSize must be > 0, got %d", ErrInvalidConfig, dest, c.BatchSize)
	case c.MinBackoff <= 0 || c.MaxBackoff < c.MinBackoff:
		return fmt.Errorf("%w: %s: need 0 < MinBackoff <= MaxBackoff, got %v, %v", ErrInvalidConfig, dest, c.MinBackoff, c.MaxBackoff)
	case c.Timeout <= 0:
		return fmt.Errorf("%w: %s: Timeout must be > 0, got %v", ErrInvalidConfig, dest, c.Timeout)
	}
	return nil
}

// PubSubConfig configures the Redis Pub/Sub destination.
type PubSubConfig struct {
	Enabled bool
	// Channel receives one PUBLISH per event (the event's JSON). Default
	// "device:status:events", or with a key prefix of its own (the Redis
	// sink's, NameAfter) {prefix}status:events. Pub/Sub ignores the
	// database number: deployments sharing one Redis share its channels.
	Channel string
	// Sharded publishes with SPUBLISH (Redis 7) instead of PUBLISH: on
	// Redis Cluster a PUBLISH is copied to every node of the cluster, an
	// SPUBLISH only to the shard owning the channel's slot. Subscribers
	// then use SSUBSCRIBE. Default off (the seed's subscribers use
	// SUBSCRIBE).
	Sharded bool
	// Delivery: events per pipeline is BatchSize (default 1000).
	Delivery DeliveryConfig
}

// StreamConfig configures the Redis Stream destination.
type StreamConfig struct {
	Enabled bool
	// Key of the stream. Default "device:events:stream", or with a key
	// prefix of its own (the Redis sink's, NameAfter)
	// {prefix}events:stream: outside the device key namespaces
	// ("device:status:stream", an earlier default, is the status key of a
	// device named "stream").
	Key string
	// Shards splits the stream into this many streams, {Key}:0 to
	// {Key}:{Shards-1} (ShardKeys), each holding the events of a disjoint
	// set of devices (FNV-1a of the id, modulo Shards; alerts and
	// incidents by their id), so that a device's events stay in order
	// while Redis Cluster spreads the streams over its masters by their
	// slots. A consumer group is created on each shard and a consumer
	// reads each (XREADGROUP of one key per call on a Cluster). Default 1
	// (0 is taken as 1): one stream named Key.
	Shards int
	// Retention trims, after every batch, the entries older than this
	// ("XTRIM MINID ~ <now - Retention>"; Redis trims whole macro nodes, so
	// a few older ones stay): a consumer group that falls up to Retention
	// behind loses nothing, whatever the size of the fleet or of a burst.
	// Default 24 h. 0: no trimming by age. The age is measured by
	// presenced's clock against Redis's entry ids (milliseconds of Redis's
	// clock): a skew between the two shifts the window by as much.
	Retention time.Duration
	// MaxLen caps the stream's length after every batch ("XTRIM MAXLEN ~
	// MaxLen"), a bound on Redis memory (about 100 bytes per status entry)
	// when the fleet flaps more than Retention was sized for. Default
	// 10,000,000 entries (about 1 GB). 0: no cap. A consumer group further
	// behind than MaxLen entries loses the oldest.
	MaxLen int64
	// Delivery: events per pipeline is BatchSize (default 1000). OnFull
	// defaults to Backpressure: the stream is where durable consumers read
	// every status change.
	Delivery DeliveryConfig
}

// MQTTConfig configures the retained MQTT presence messages. Only status
// events are published: alerts and incidents are not device states.
type MQTTConfig struct {
	Enabled bool
	// BrokerURL, e.g. "tcp://127.0.0.1:1883" (ssl:// or tls:// with TLS).
	BrokerURL string
	// ClientID of the publisher. Default "presence-events-" plus random
	// hex, so that two nodes never kick each other off the broker.
	ClientID           string
	Username, Password string
	TLS                *tls.Config
	// Topic is the template of each device's topic; "{id}" is replaced by
	// the device id. Default "devices/{id}/presence".
	Topic string
	// QoS of the publishes, 0, 1 or 2. Default 1: the broker acknowledges
	// each message, so a batch is known to be stored before it is counted
	// as sent.
	QoS byte
	// Retained marks the messages retained, so that a subscriber gets each
	// device's last status at once. Default true.
	Retained bool
	// ConnectTimeout bounds one connection attempt. Default 10 s.
	ConnectTimeout time.Duration
	// Delivery: a batch is BatchSize publishes whose acknowledgements are
	// awaited together (default 1000). OnFull defaults to Backpressure:
	// the retained messages are each device's status for every later
	// subscriber.
	Delivery DeliveryConfig
}

// WebhookConfig is one webhook URL.
type WebhookConfig struct {
	// Name labels the destination in metrics and logs (not the URL, which
	// may carry credentials). Default "webhook_<index>". Letters, digits,
	// '_' and '-'.
	Name string
	// URL receives POST requests with a JSON body
	// {"batch":"<id>","events":[...]}.
	URL string
	// Secret is the HMAC-SHA256 key of the X-Presence-Signature header
	// ("sha256=" + hex HMAC of the body). Empty sends no signature: only for
	// receivers on a trusted network.
	Secret string
	// Client sends the requests. Nil: a client of its own with
	// Delivery.Timeout per request.
	Client *http.Client
	// Delivery: default batches of 500 events, queue 65,536, backoff 500 ms
	// to 1 min, timeout 10 s per request.
	Delivery DeliveryConfig
}

// DefaultWebhookConfig returns a webhook for url with the documented
// defaults.
func DefaultWebhookConfig(url, secret string) WebhookConfig {
	d := defaultDelivery()
	d.QueueCapacity, d.BatchSize = 1<<16, 500
	d.MinBackoff, d.MaxBackoff = 500*time.Millisecond, time.Minute
	return WebhookConfig{URL: url, Secret: secret, Delivery: d}
}

// SSEConfig configures GET /v1/events.
type SSEConfig struct {
	Enabled bool
	// ClientBuffer is how many events may wait for one client. A client that
	// falls that far behind (a slow network, a stalled reader) is
	// disconnected and counted; EventSource reconnects by itself. Default
	// 1024.
	ClientBuffer int
	// MaxClients bounds concurrent streams; more are refused with 503.
	// Default 1000.
	MaxClients int
	// Heartbeat is the interval of the ": ping" comment sent when no event
	// was, so that proxies and clients see a live connection. Default 15 s.
	Heartbeat time.Duration
	// WriteTimeout bounds one write to a client (it replaces the server's
	// write deadline, which a stream would otherwise hit). Default 10 s.
	WriteTimeout time.Duration
	// MaxFilterIDs bounds the ids of one ?id= filter. Default 1000.
	MaxFilterIDs int
	// Delivery is the queue between the engine and the broadcaster that
	// copies each event to the matching clients (default 65,536 events).
	Delivery DeliveryConfig
}

// AlertConfig configures the derived alerts.
type AlertConfig struct {
	// OfflineAfter is the prolonged-offline threshold: a device offline for
	// this long gets one offline_alert per offline period. Default 15 min;
	// 0 disables offline alerts.
	OfflineAfter time.Duration
	// CheckInterval is how often the pending offline alerts are checked, so
	// an alert is emitted at most this late. Default 1 s.
	CheckInterval time.Duration
	// Mass is the mass-outage detector.
	Mass MassConfig
	// Flapping is the flapping detector.
	Flapping FlapConfig
}

// MassConfig configures mass-outage detection (see the package
// documentation for the exact rule).
type MassConfig struct {
	Enabled bool
	// Window is how close together the offline transitions must be. Default
	// 30 s. It should be at least the spread of the devices' reporting
	// intervals, since after a broker loss each device goes offline at its
	// own last_seen + timeout.
	Window time.Duration
	// Count triggers an incident when at least this many devices went
	// offline within Window and are still offline. Default 1000; 0 disables
	// the absolute trigger.
	Count int
	// Share triggers an incident when at least this fraction of the fleet
	// (Deps.FleetSize) went offline within Window, and at least MinCount
	// devices. Default 0.10; 0 disables the share trigger.
	Share float64
	// MinCount is the floor of the share trigger, so that a small fleet's
	// ordinary churn (2 of 10 devices) is no incident. Default 50.
	MinCount int
	// RecoverShare: an incident recovers when this fraction of its devices
	// is back online. Default 0.8.
	RecoverShare float64
}

// DefaultConfig returns the defaults documented on each field: Redis
// Pub/Sub, Redis Stream and SSE enabled, MQTT and webhooks off, offline
// alerts after 15 minutes, mass-outage detection at 1000 devices or 10% of
// the fleet within 30 s. The Stream and MQTT push back on the engine when
// their queue is full (Backpressure); Pub/Sub, SSE and webhooks drop the
// oldest (DropOldest).
func DefaultConfig() Config {
	d := defaultDelivery()
	sse := d
	sse.QueueCapacity = 1 << 16
	durable := d
	durable.OnFull = Backpressure
	return Config{
		PubSub: PubSubConfig{Enabled: true, Channel: "device:status:events", Delivery: d},
		Stream: StreamConfig{
			Enabled: true, Key: "device:events:stream", Shards: 1, Retention: 24 * time.Hour,
			MaxLen: 10_000_000, Delivery: durable,
		},
		MQTT: MQTTConfig{
			Topic: "devices/{id}/presence", QoS: 1, Retained: true,
			ConnectTimeout: 10 * time.Second, Delivery: durable,
		},
		SSE: SSEConfig{
			Enabled: true, ClientBuffer: 1024, MaxClients: 1000, Heartbeat: 15 * time.Second,
			WriteTimeout: 10 * time.Second, MaxFilterIDs: 1000, Delivery: sse,
		},
		Alerts: AlertConfig{
			OfflineAfter:  15 * time.Minute,
			CheckInterval: time.Second,
			Mass: MassConfig{
				Enabled: true, Window: 30 * time.Second, Count: 1000, Share: 0.10,
				MinCount: 50, RecoverShare: 0.8,
			},
			Flapping: FlapConfig{Changes: 5, Window: 5 * time.Minute, MaxTracked: 100_000},
		},
	}
}

// maxStreamShards bounds StreamConfig.Shards: far more than Redis
// Cluster masters.
const maxStreamShards = 1024

// ShardKeys are the keys of the stream: Key alone, or {Key}:{i} for each
// of Shards shards.
func (c StreamConfig) ShardKeys() []string {
	if c.Shards <= 1 {
		return []string{c.Key}
	}
	keys := make([]string, c.Shards)
	for i := range keys {
		keys[i] = c.Key + ":" + strconv.Itoa(i)
	}
	return keys
}

// shardOf is the shard of the events of device id among n: FNV-1a.
func shardOf(id string, n int) int {
	h := uint32(2166136261)
	for i := 0; i < len(id); i++ {
		h ^= uint32(id[i])
		h *= 16777619
	}
	return int(h % uint32(n))
}

// NameAfter gives the Pub/Sub channel and the stream, when left at their
// defaults, names under keyPrefix (the Redis sink's KeyPrefix, when it is
// not the default "device:"): {keyPrefix}status:events and
// {keyPrefix}events:stream. Two deployments sharing a Redis with prefixes
// of their own then share no channel and no stream (Pub/Sub ignores the
// database number). With the default prefix the names are the defaults.
func (c *Config) NameAfter(keyPrefix string) {
	d := DefaultConfig()
	if c.PubSub.Channel == d.PubSub.Channel {
		c.PubSub.Channel = keyPrefix + "status:events"
	}
	if c.Stream.Key == d.Stream.Key {
		c.Stream.Key = keyPrefix + "events:stream"
	}
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Validate reports the first invalid field, wrapping ErrInvalidConfig.
func (c Config) Validate() error {
	if c.PubSub.Enabled {
		if c.PubSub.Channel == "" {
			return fmt.Errorf("%w: pubsub: empty Channel", ErrInvalidConfig)
		}
		if err := c.PubSub.Delivery.validate("pubsub"); err != nil {
			return err
		}
	}
	if c.Stream.Enabled {
		if c.Stream.Key == "" {
			return fmt.Errorf("%w: stream: empty Key", ErrInvalidConfig)
		}
		if c.Stream.Shards < 0 || c.Stream.Shards > maxStreamShards {
			return fmt.Errorf("%w: stream: Shards (-events-stream-shards) must be in [0, %d], got %d", ErrInvalidConfig, maxStreamShards, c.Stream.Shards)
		}
		if c.Stream.MaxLen < 0 {
			return fmt.Errorf("%w: stream: MaxLen (-events-stream-maxlen) must be >= 0, got %d", ErrInvalidConfig, c.Stream.MaxLen)
		}
		if c.Stream.Retention < 0 {
			return fmt.Errorf("%w: stream: Retention (-events-stream-retention) must be >= 0, got %v", ErrInvalidConfig, c.Stream.Retention)
		}
		if err := c.Stream.Delivery.validate("stream"); err != nil {
			return err
		}
	}
	if c.MQTT.Enabled {
		m := c.MQTT
		switch {
		case m.BrokerURL == "":
			return fmt.Errorf("%w: mqtt: empty BrokerURL", ErrInvalidConfig)
		case strings.Count(m.Topic, "{id}") != 1 || strings.ContainsAny(m.Topic, "+#"):
			return fmt.Errorf("%w: mqtt: Topic (-events-mqtt-topic) %q must hold {id} once and no wildcard", ErrInvalidConfig, m.Topic)
		case m.QoS > 2:
			return fmt.Errorf("%w: mqtt: QoS must be 0, 1 or 2, got %d", ErrInvalidConfig, m.QoS)
		case m.ConnectTimeout <= 0:
			return fmt.Errorf("%w: mqtt: ConnectTimeout must be > 0", ErrInvalidConfig)
		}
		if err := m.Delivery.validate("mqtt"); err != nil {
			return err
		}
	}
	names := map[string]bool{"pubsub": true, "stream": true, "mqtt": true, "sse": true}
	for i, w := range c.Webhooks {
		name := webhookName(w, i)
		if !nameRE.MatchString(name) {
			return fmt.Errorf("%w: webhook %d: Name %q: use 1-64 letters, digits, '_' or '-'", ErrInvalidConfig, i, name)
		}
		if names[name] {
			return fmt.Errorf("%w: webhook %d: Name %q used twice", ErrInvalidConfig, i, name)
		}
		names[name] = true
		u, err := url.Parse(w.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("%w: webhook %s: URL (-webhook-url) must be an absolute http(s) URL", ErrInvalidConfig, name)
		}
		if err := w.Delivery.validate("webhook " + name); err != nil {
			return err
		}
	}
	if c.SSE.Enabled {
		s := c.SSE
		switch {
		case s.ClientBuffer <= 0:
			return fmt.Errorf("%w: sse: ClientBuffer must be > 0", ErrInvalidConfig)
		case s.MaxClients <= 0:
			return fmt.Errorf("%w: sse: MaxClients must be > 0", ErrInvalidConfig)
		case s.Heartbeat <= 0:
			return fmt.Errorf("%w: sse: Heartbeat must be > 0", ErrInvalidConfig)
		case s.WriteTimeout <= 0:
			return fmt.Errorf("%w: sse: WriteTimeout must be > 0", ErrInvalidConfig)
		case s.MaxFilterIDs <= 0:
			return fmt.Errorf("%w: sse: MaxFilterIDs must be > 0", ErrInvalidConfig)
		}
		if err := s.Delivery.validate("sse"); err != nil {
			return err
		}
	}
	a := c.Alerts
	if a.OfflineAfter < 0 {
		return fmt.Errorf("%w: alerts: OfflineAfter (-offline-alert-after) must be >= 0 (0 disables)", ErrInvalidConfig)
	}
	if f := a.Flapping; f.Changes < 0 || f.enabled() && (f.Window <= 0 || f.MaxTracked <= 0) {
		return fmt.Errorf("%w: alerts: Flapping needs Changes >= 0 (-flapping-changes, 0 disables) and, enabled, Window > 0 (-flapping-window) and MaxTracked > 0", ErrInvalidConfig)
	}
	if (a.OfflineAfter > 0 || a.Mass.Enabled || a.Flapping.enabled()) && a.CheckInterval <= 0 {
		return fmt.Errorf("%w: alerts: CheckInterval must be > 0", ErrInvalidConfig)
	}
	if m := a.Mass; m.Enabled {
		switch {
		case m.Window <= 0:
			return fmt.Errorf("%w: alerts: Mass.Window (-mass-offline-window) must be > 0", ErrInvalidConfig)
		case m.Count < 0 || m.MinCount < 0:
			return fmt.Errorf("%w: alerts: Mass.Count (-mass-offline-count) and Mass.MinCount must be >= 0", ErrInvalidConfig)
		case m.Share < 0 || m.Share > 1:
			return fmt.Errorf("%w: alerts: Mass.Share (-mass-offline-share) must be in [0, 1], got %v", ErrInvalidConfig, m.Share)
		case m.Count == 0 && m.Share == 0:
			return fmt.Errorf("%w: alerts: Mass needs Count or Share (-mass-offline-count, -mass-offline-share; or -mass-offline-window 0)", ErrInvalidConfig)
		case m.RecoverShare <= 0 || m.RecoverShare > 1:
			return fmt.Errorf("%w: alerts: Mass.RecoverShare must be in (0, 1], got %v", ErrInvalidConfig, m.RecoverShare)
		}
	}
	return nil
}

func webhookName(w WebhookConfig, i int) string {
	if w.Name != "" {
		return w.Name
	}
	return fmt.Sprintf("webhook_%d", i)
}

// Deps are what the hub uses but does not configure.
type Deps struct {
	// Redis is the client of the Pub/Sub and Stream destinations; required
	// when either is enabled. Not closed by the hub.
	Redis redis.UniversalClient
	// FleetSize returns the number of known devices (the daemon passes
	// func() int { return eng.Counts().Total }). It is called only when
	// enough devices went offline to possibly trigger the share rule. Nil
	// disables the share trigger (Count still works).
	FleetSize func() int
	// Logger: nil means slog.Default().
	Logger *slog.Logger
	// Metrics is the set the hub registers its metrics in. Nil: a new set
	// (see Hub.Metrics).
	Metrics *metrics.Set
	// Now is the clock of the alerts (tests inject one). Nil: time.Now.
	Now func() time.Time
}
