package daemon

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/cluster"
	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/events"
	"github.com/presence-dev/presence/ingest"
	"github.com/presence-dev/presence/internal/envflag"
	"github.com/presence-dev/presence/writeback"
)

// ErrInvalidConfig wraps every configuration error.
var ErrInvalidConfig = errors.New("invalid configuration")

// Config is everything presenced is told by flags and environment.
type Config struct {
	// MQTT in. An empty MQTTURL starts the embedded broker on
	// EmbeddedMQTTAddr and reads from it.
	MQTTURL          string
	MQTTUsername     string
	MQTTPassword     string
	MQTTClientID     string
	MQTTConnections  int
	MQTTQoS          int
	ShareGroup       string
	EmbeddedMQTTAddr string
	TelemetryTopics  []string // PATTERN or PATTERN=TIMEOUT
	StatusTopics     []string

	// Redis: used when RedisURL or RedisHost is set.
	RedisURL      string
	RedisHost     string
	RedisPort     string
	RedisDB       string
	RedisPassword string
	RedisAddrs    []string // Cluster seeds, or Sentinels with RedisMaster
	RedisMaster   string
	RedisPrefix   string
	RedisTTL      time.Duration
	RedisFlush    time.Duration
	NoHydrate     bool

	// Postgres: used when DatabaseURL is set.
	DatabaseURL     string
	PGTable         string
	PGIDColumn      string
	PGLastSeenCol   string
	PGStatusCol     string
	PGInsertUnknown bool
	PGFlush         time.Duration
	HistoryTable    string

	// Events: Redis Pub/Sub and Stream (with Redis), retained MQTT presence
	// messages, webhooks, SSE, alerts.
	EventsChannel      string
	EventsStream       string
	EventsStreamMaxLen int
	EventsMQTTTopic    string // empty: no retained presence messages
	WebhookURLs        []string
	WebhookSecret      string
	OfflineAlertAfter  time.Duration
	MassOfflineCount   int
	MassOfflineShare   float64
	MassOfflineWindow  time.Duration

	// Cluster: used when ClusterBind or ClusterJoin is set.
	NodeName        string
	ClusterBind     string
	ClusterJoin     []string
	ClusterKey      string
	ClusterDataAddr string

	// The engine.
	Timeout time.Duration
	Tick    time.Duration

	// HTTP.
	HTTPAddr string
	APIToken string

	Demo            int
	ShutdownTimeout time.Duration
	LogLevel        string
	LogFormat       string
}

// DefaultConfig is presenced with nothing set: embedded broker, in-memory
// state, the seed's topics and 60 s timeout, the API on 127.0.0.1:8080.
func DefaultConfig() Config {
	rc, pc, hc := writeback.DefaultRedisConfig(), writeback.DefaultPostgresConfig(), writeback.DefaultHistoryConfig()
	ic, ev := ingest.DefaultConfig(), events.DefaultConfig()
	return Config{
		EventsChannel:      ev.PubSub.Channel,
		EventsStream:       ev.Stream.Key,
		EventsStreamMaxLen: int(ev.Stream.MaxLen),
		OfflineAlertAfter:  ev.Alerts.OfflineAfter,
		MassOfflineCount:   ev.Alerts.Mass.Count,
		MassOfflineShare:   ev.Alerts.Mass.Share,
		MassOfflineWindow:  ev.Alerts.Mass.Window,
		MQTTClientID:       "presenced",
		MQTTConnections:    ic.Connections,
		MQTTQoS:            int(ic.QoS),
		ShareGroup:         ic.ShareGroup,
		EmbeddedMQTTAddr:   "127.0.0.1:1883",
		TelemetryTopics:    []string{"devices/{id}/telemetry"},
		StatusTopics:       []string{"devices/{id}/status"},
		RedisPrefix:        rc.KeyPrefix,
		RedisTTL:           rc.TTL,
		RedisFlush:         rc.Flush.Interval,
		PGTable:            pc.Table,
		PGIDColumn:         pc.IDColumn,
		PGLastSeenCol:      pc.LastSeenColumn,
		PGStatusCol:        pc.StatusColumn,
		PGFlush:            pc.Flush.Interval,
		HistoryTable:       hc.Table,
		Timeout:            engine.DefaultConfig().DefaultTimeout,
		Tick:               engine.DefaultConfig().Tick,
		HTTPAddr:           "127.0.0.1:8080",
		ShutdownTimeout:    15 * time.Second,
		LogLevel:           "info",
		LogFormat:          "text",
	}
}

const usageHeader = `Usage: presenced [flags]

presenced tells which of your MQTT devices are online. A device is online from
its first message on a telemetry topic and offline after -timeout without one;
an "offline" payload on a status topic (a Last Will) turns it offline at once.
Status and last-seen time are written to Redis (device:status:{id},
device:lastseen:{id}) and PostgreSQL (devices.last_seen, status history) in
batches, and served over HTTP (-http-addr): /v1/devices/{id},
/v1/devices:batchGet, /v1/stats, /metrics, /healthz, /readyz.

With no MQTT_URL it runs its own MQTT broker; with no REDIS_URL/REDIS_HOST and
no DATABASE_URL it keeps state in memory only. -demo N simulates N devices.
At start-up with Redis it rebuilds its state from Redis (devices whose
deadline passed while it was down turn offline at once). SIGINT/SIGTERM stop
ingest, flush what is pending within -shutdown-timeout and exit 0.

Every flag has an environment twin, shown in parentheses; a flag given on the
command line wins. Exit status: 0 after a clean shutdown, 1 on a runtime
failure, 2 on invalid flags or environment.

Flags:
`

// ParseFlags builds a Config from DefaultConfig, the environment (read with
// getenv) and args. With -h it writes the usage to out and returns
// flag.ErrHelp; any other error wraps ErrInvalidConfig and names the flag
// or variable at fault.
func ParseFlags(args []string, getenv func(string) string, out io.Writer) (Config, error) {
	c := DefaultConfig()
	s := envflag.New("presenced")

	s.String(&c.MQTTURL, "mqtt-url", "MQTT_URL", "MQTT broker: tcp://host:1883, ssl://host:8883, ws://host:port/path; empty runs the embedded broker")
	s.String(&c.MQTTUsername, "mqtt-username", "MQTT_USERNAME", "MQTT username (user info in -mqtt-url works too)")
	s.String(&c.MQTTPassword, "mqtt-password", "MQTT_PASSWORD", "MQTT password; prefer the variable to keep it out of ps")
	s.String(&c.MQTTClientID, "mqtt-client-id", "MQTT_CLIENT_ID", "prefix of the subscriber connections' client ids")
	s.Int(&c.MQTTConnections, "mqtt-connections", "PRESENCE_MQTT_CONNECTIONS", "subscriber connections sharing the stream (1..64)")
	s.Int(&c.MQTTQoS, "mqtt-qos", "PRESENCE_MQTT_QOS", "QoS of the subscriptions: 0, 1 or 2")
	s.String(&c.ShareGroup, "share-group", "PRESENCE_SHARE_GROUP", "shared-subscription group ($share/GROUP/...): connections and cluster nodes split the stream; empty subscribes plainly (one connection only)")
	s.String(&c.EmbeddedMQTTAddr, "embedded-mqtt-addr", "PRESENCE_EMBEDDED_MQTT_ADDR", "address of the embedded MQTT broker (used when -mqtt-url is empty)")
	s.Var(envflag.NewList(&c.TelemetryTopics), "telemetry-topic", "PRESENCE_TELEMETRY_TOPICS",
		"telemetry topic patterns, comma-separated or repeated, each with one {id} segment and an optional timeout of its own: devices/{id}/telemetry,sensors/fast/{id}=30s,meters/{id}/data=10m")
	s.Var(envflag.NewList(&c.StatusTopics), "status-topic", "PRESENCE_STATUS_TOPICS",
		`status topic patterns whose payload "online"/"offline" (a Last Will) is an explicit transition`)

	s.String(&c.RedisURL, "redis-url", "REDIS_URL", "Redis URL: redis://[user:password@]host:port/db, rediss:// for TLS; wins over -redis-host")
	s.String(&c.RedisHost, "redis-host", "REDIS_HOST", "Redis host; Redis is used when this, -redis-url or -redis-addrs is set")
	s.String(&c.RedisPort, "redis-port", "REDIS_PORT", "Redis port (default 6379)")
	s.String(&c.RedisDB, "redis-db", "REDIS_DB", "Redis database number (default 0)")
	s.String(&c.RedisPassword, "redis-password", "REDIS_PASSWORD", "Redis password")
	s.Var(envflag.NewList(&c.RedisAddrs), "redis-addrs", "REDIS_ADDRS", "Redis Cluster seed nodes, or Sentinel addresses with -redis-master, host:port comma-separated; wins over -redis-url and -redis-host (password and db from them still apply)")
	s.String(&c.RedisMaster, "redis-master", "REDIS_MASTER_NAME", "Sentinel master name: -redis-addrs are Sentinels")
	s.String(&c.RedisPrefix, "redis-prefix", "PRESENCE_REDIS_PREFIX", "prefix of the Redis keys {prefix}status:{id} and {prefix}lastseen:{id}; change only with every consumer")
	s.Duration(&c.RedisTTL, "redis-ttl", "PRESENCE_REDIS_TTL", "TTL of the Redis keys, whole seconds")
	s.Duration(&c.RedisFlush, "redis-flush-interval", "PRESENCE_REDIS_FLUSH_INTERVAL", "how often changed devices are written to Redis")
	s.Bool(&c.NoHydrate, "no-hydrate", "PRESENCE_NO_HYDRATE", "do not rebuild the state from Redis at start-up")

	s.String(&c.DatabaseURL, "database-url", "DATABASE_URL", "PostgreSQL URL (postgres://user@host:5432/db); empty: no Postgres")
	s.String(&c.PGTable, "pg-table", "PRESENCE_PG_TABLE", "the existing devices table (optionally schema.table); never created or altered")
	s.String(&c.PGIDColumn, "pg-id-column", "PRESENCE_PG_ID_COLUMN", "its id column (bigint as in the seed, or text)")
	s.String(&c.PGLastSeenCol, "pg-last-seen-column", "PRESENCE_PG_LAST_SEEN_COLUMN", "its last-seen column (timestamptz); never moves backwards")
	s.String(&c.PGStatusCol, "pg-status-column", "PRESENCE_PG_STATUS_COLUMN", "its status column, written if it exists; empty never writes status")
	s.Bool(&c.PGInsertUnknown, "pg-insert-unknown", "PRESENCE_PG_INSERT_UNKNOWN", "insert devices that have no row (needs a unique index on the id column)")
	s.Duration(&c.PGFlush, "pg-flush-interval", "PRESENCE_PG_FLUSH_INTERVAL", "how often changed devices are written to Postgres")
	s.String(&c.HistoryTable, "history-table", "PRESENCE_HISTORY_TABLE", "table receiving every transition (created if missing); empty disables history")

	s.String(&c.EventsChannel, "events-channel", "PRESENCE_EVENTS_CHANNEL", "Redis Pub/Sub channel receiving every transition as JSON (with Redis); empty: none")
	s.String(&c.EventsStream, "events-stream", "PRESENCE_EVENTS_STREAM", "Redis Stream receiving every transition, for consumer groups (with Redis); empty: none")
	s.Int(&c.EventsStreamMaxLen, "events-stream-maxlen", "PRESENCE_EVENTS_STREAM_MAXLEN", "approximate length the stream is trimmed to (XADD MAXLEN ~)")
	s.String(&c.EventsMQTTTopic, "events-mqtt-topic", "PRESENCE_EVENTS_MQTT_TOPIC", "retained MQTT message online/offline per device on this topic, e.g. devices/{id}/presence; empty: none")
	s.Var(envflag.NewList(&c.WebhookURLs), "webhook-url", "PRESENCE_WEBHOOK_URLS", "URLs receiving JSON batches of events by HTTP POST, comma-separated or repeated")
	s.String(&c.WebhookSecret, "webhook-secret", "PRESENCE_WEBHOOK_SECRET", "HMAC-SHA256 key signing webhook bodies (X-Presence-Signature: sha256=...)")
	s.Duration(&c.OfflineAlertAfter, "offline-alert-after", "PRESENCE_OFFLINE_ALERT_AFTER", "emit one offline_alert event per offline period after this long offline; 0: never")
	s.Int(&c.MassOfflineCount, "mass-offline-count", "PRESENCE_MASS_OFFLINE_COUNT", "devices going offline within -mass-offline-window that make one mass_offline incident (or the share below)")
	s.Float64(&c.MassOfflineShare, "mass-offline-share", "PRESENCE_MASS_OFFLINE_SHARE", "share of the fleet (0..1) going offline within the window that makes a mass_offline incident; 0: count only")
	s.Duration(&c.MassOfflineWindow, "mass-offline-window", "PRESENCE_MASS_OFFLINE_WINDOW", "window of the mass-outage detector; 0 disables it")

	s.String(&c.NodeName, "node-name", "PRESENCE_NODE_NAME", "this node's name in the cluster, unique (default: the host name)")
	s.String(&c.ClusterBind, "cluster-bind", "PRESENCE_CLUSTER_BIND", "gossip address host:port (memberlist); setting it or -cluster-join runs presenced as a cluster node")
	s.Var(envflag.NewList(&c.ClusterJoin), "cluster-join", "PRESENCE_CLUSTER_JOIN", "seed nodes' gossip addresses, comma-separated; joined at start and again periodically so a healed partition merges")
	s.String(&c.ClusterKey, "cluster-key", "PRESENCE_CLUSTER_KEY", "gossip encryption key, base64 of 16, 24 or 32 bytes; the same on every node")
	s.String(&c.ClusterDataAddr, "cluster-data-addr", "PRESENCE_CLUSTER_DATA_ADDR", "address peers forward messages and hand devices to (default: the gossip host, gossip port + 1)")

	s.Duration(&c.Timeout, "timeout", "DEVICE_OFFLINE_TIMEOUT", "silence after which a device is offline, 1s..168h; per-topic timeouts override it")
	s.Duration(&c.Tick, "tick", "PRESENCE_TICK", "bound on how late an offline transition may be, 10ms..10s")

	s.String(&c.HTTPAddr, "http-addr", "PRESENCE_HTTP_ADDR", "address of the HTTP API")
	s.String(&c.APIToken, "api-token", "PRESENCE_API_TOKEN", "bearer token required by /v1/ routes; empty: no authentication")

	s.Int(&c.Demo, "demo", "PRESENCE_DEMO", "simulate this many devices publishing to the broker, going silent and coming back (0: none)")
	s.Duration(&c.ShutdownTimeout, "shutdown-timeout", "PRESENCE_SHUTDOWN_TIMEOUT", "how long SIGTERM may take to flush what is pending (after a cluster node's leave and handoff, bounded separately: at most 45 s)")
	s.String(&c.LogLevel, "log-level", "PRESENCE_LOG_LEVEL", "debug, info, warn or error")
	s.String(&c.LogFormat, "log-format", "PRESENCE_LOG_FORMAT", "text or json")

	if err := s.Parse(args, getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			s.PrintUsage(out, usageHeader)
			return c, err
		}
		return c, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	return c, c.Validate()
}

// Validate reports every invalid field at once.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Timeout < engine.MinTimeout || c.Timeout > engine.MaxTimeout {
		bad("-timeout (DEVICE_OFFLINE_TIMEOUT) must be in [%v, %v], got %v", engine.MinTimeout, engine.MaxTimeout, c.Timeout)
	}
	if c.Tick < 10*time.Millisecond || c.Tick > 10*time.Second {
		bad("-tick must be in [10ms, 10s], got %v", c.Tick)
	}
	if c.MQTTQoS < 0 || c.MQTTQoS > 2 {
		bad("-mqtt-qos must be 0, 1 or 2, got %d", c.MQTTQoS)
	}
	if len(c.TelemetryTopics) == 0 && len(c.StatusTopics) == 0 {
		bad("no topic to subscribe to: give -telemetry-topic or -status-topic")
	}
	if _, err := c.topics(); err != nil {
		errs = append(errs, err)
	}
	for name, addr := range map[string]string{"-http-addr": c.HTTPAddr, "-embedded-mqtt-addr": c.EmbeddedMQTTAddr} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad("%s %q is not host:port: %v", name, addr, err)
		}
	}
	if c.Demo < 0 || c.Demo > 100_000 {
		bad("-demo must be in [0, 100000], got %d", c.Demo)
	}
	if c.ShutdownTimeout <= 0 {
		bad("-shutdown-timeout must be positive, got %v", c.ShutdownTimeout)
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		errs = append(errs, err)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		bad("-log-format must be text or json, got %q", c.LogFormat)
	}
	if c.redisEnabled() {
		if cl, err := c.redisClient(); err != nil {
			errs = append(errs, err)
		} else {
			cl.Close()
		}
		rc := c.redisConfig(nil)
		if err := rc.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.DatabaseURL != "" {
		pc := c.postgresConfig(nil)
		if err := pc.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.clustered() {
		if cc, err := c.clusterConfig(nil); err != nil {
			errs = append(errs, err)
		} else if err := cc.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if ec := c.eventsConfig("tcp://" + c.EmbeddedMQTTAddr); ec.Validate() != nil {
		errs = append(errs, ec.Validate())
	}
	if c.MQTTConnections < 1 || c.MQTTConnections > 64 {
		bad("-mqtt-connections must be in [1, 64], got %d", c.MQTTConnections)
	} else if ic := c.ingestConfig(nil); ic.Validate() != nil {
		errs = append(errs, ic.Validate())
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(errs...))
	}
	return nil
}

// topics parses the topic patterns.
func (c Config) topics() ([]ingest.Topic, error) {
	var out []ingest.Topic
	for _, spec := range c.TelemetryTopics {
		t, err := ingest.ParseTopicSpec(ingest.KindTelemetry, spec)
		if err != nil {
			return nil, fmt.Errorf("-telemetry-topic %q: %w", spec, err)
		}
		out = append(out, t)
	}
	for _, spec := range c.StatusTopics {
		t, err := ingest.ParseTopicSpec(ingest.KindStatus, spec)
		if err != nil {
			return nil, fmt.Errorf("-status-topic %q: %w", spec, err)
		}
		out = append(out, t)
	}
	return out, nil
}

func (c Config) redisEnabled() bool {
	return c.RedisURL != "" || c.RedisHost != "" || len(c.RedisAddrs) > 0
}

// redisClient builds the client: a single node from REDIS_URL or
// REDIS_HOST..., or with REDIS_ADDRS a Cluster client (or a Sentinel-backed
// failover client when REDIS_MASTER_NAME is set). Key names are the seed's
// in every case: the Cluster client splits pipelines by slot.
func (c Config) redisClient() (redis.UniversalClient, error) {
	getenv := c.redisEnv
	if len(c.RedisAddrs) > 0 && c.RedisURL == "" && c.RedisHost == "" {
		getenv = func(name string) string {
			if name == "REDIS_HOST" {
				return "localhost" // only password and db are used below
			}
			return c.redisEnv(name)
		}
	}
	opts, err := writeback.RedisOptionsFromEnv(getenv)
	if err != nil {
		return nil, err
	}
	if len(c.RedisAddrs) == 0 {
		return redis.NewClient(opts), nil
	}
	for _, a := range c.RedisAddrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("REDIS_ADDRS: %q is not host:port", a)
		}
	}
	return redis.NewUniversalClient(&redis.UniversalOptions{
		Addrs:         c.RedisAddrs,
		MasterName:    c.RedisMaster,
		DB:            opts.DB,
		Username:      opts.Username,
		Password:      opts.Password,
		TLSConfig:     opts.TLSConfig,
		IsClusterMode: c.RedisMaster == "",
	}), nil
}

// redisEnv answers writeback.RedisOptionsFromEnv from the flags.
func (c Config) redisEnv(name string) string {
	switch name {
	case "REDIS_URL":
		return c.RedisURL
	case "REDIS_HOST":
		return c.RedisHost
	case "REDIS_PORT":
		return c.RedisPort
	case "REDIS_DB":
		return c.RedisDB
	case "REDIS_PASSWORD":
		return c.RedisPassword
	}
	return ""
}

func (c Config) redisConfig(log *slog.Logger) writeback.RedisConfig {
	rc := writeback.DefaultRedisConfig()
	rc.KeyPrefix, rc.TTL = c.RedisPrefix, c.RedisTTL
	rc.Flush.Interval, rc.Flush.Logger = c.RedisFlush, log
	rc.Guarded = c.clustered() // a stale owner must not move last-seen back
	return rc
}

func (c Config) postgresConfig(log *slog.Logger) writeback.PostgresConfig {
	pc := writeback.DefaultPostgresConfig()
	pc.Table, pc.IDColumn, pc.LastSeenColumn, pc.StatusColumn = c.PGTable, c.PGIDColumn, c.PGLastSeenCol, c.PGStatusCol
	pc.InsertUnknown = c.PGInsertUnknown
	pc.Flush.Interval, pc.Flush.Logger = c.PGFlush, log
	return pc
}

func (c Config) ingestConfig(log *slog.Logger) ingest.Config {
	ic := ingest.DefaultConfig()
	ic.BrokerURL = c.MQTTURL
	if ic.BrokerURL == "" {
		ic.BrokerURL = "tcp://" + c.EmbeddedMQTTAddr
	}
	ic.Username, ic.Password = c.MQTTUsername, c.MQTTPassword
	ic.ClientIDPrefix = c.MQTTClientID
	ic.Connections, ic.QoS, ic.ShareGroup = c.MQTTConnections, byte(c.MQTTQoS), c.ShareGroup
	if t, err := c.topics(); err == nil {
		ic.Topics = t
	}
	if log != nil {
		ic.Logger = log
	}
	return ic
}

// eventsConfig maps the flags onto the events hub; Redis destinations
// need Redis.
func (c Config) eventsConfig(brokerURL string) events.Config {
	ec := events.DefaultConfig()
	ec.PubSub.Enabled = c.redisEnabled() && c.EventsChannel != ""
	ec.PubSub.Channel = c.EventsChannel
	ec.Stream.Enabled = c.redisEnabled() && c.EventsStream != ""
	ec.Stream.Key, ec.Stream.MaxLen = c.EventsStream, int64(c.EventsStreamMaxLen)
	if c.EventsMQTTTopic != "" {
		ec.MQTT.Enabled, ec.MQTT.Topic = true, c.EventsMQTTTopic
		ec.MQTT.BrokerURL, ec.MQTT.Username, ec.MQTT.Password = brokerURL, c.MQTTUsername, c.MQTTPassword
		ec.MQTT.ClientID = c.MQTTClientID + "-events"
	}
	for _, u := range c.WebhookURLs {
		ec.Webhooks = append(ec.Webhooks, events.DefaultWebhookConfig(u, c.WebhookSecret))
	}
	ec.Alerts.OfflineAfter = c.OfflineAlertAfter
	ec.Alerts.Mass.Enabled = c.MassOfflineWindow > 0
	ec.Alerts.Mass.Count, ec.Alerts.Mass.Share, ec.Alerts.Mass.Window = c.MassOfflineCount, c.MassOfflineShare, c.MassOfflineWindow
	return ec
}

func (c Config) clustered() bool { return c.ClusterBind != "" || len(c.ClusterJoin) > 0 }

// clusterConfig maps the flags onto a cluster node.
func (c Config) clusterConfig(log *slog.Logger) (cluster.Config, error) {
	cc := cluster.DefaultConfig()
	if c.NodeName != "" {
		cc.NodeName = c.NodeName
	}
	if c.ClusterBind != "" {
		cc.BindAddr = c.ClusterBind
	}
	cc.Join, cc.DataAddr = c.ClusterJoin, c.ClusterDataAddr
	if c.ClusterKey != "" {
		k, err := cluster.ParseKey(c.ClusterKey)
		if err != nil {
			return cc, fmt.Errorf("PRESENCE_CLUSTER_KEY: %w", err)
		}
		cc.SecretKey = k
	}
	cc.Logger = log
	return cc, nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToUpper(s))); err != nil {
		return 0, fmt.Errorf("-log-level must be debug, info, warn or error, got %q", s)
	}
	return l, nil
}
