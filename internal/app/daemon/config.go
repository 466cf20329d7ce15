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

	"github.com/presence-dev/presence/api"
	"github.com/presence-dev/presence/cluster"
	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/events"
	"github.com/presence-dev/presence/ingest"
	"github.com/presence-dev/presence/internal/envflag"
	"github.com/presence-dev/presence/internal/netaddr"
	"github.com/presence-dev/presence/recovery"
	"github.com/presence-dev/presence/writeback/postgres"
	"github.com/presence-dev/presence/writeback/redis"
)

// ErrInvalidConfig wraps every configuration error.
var ErrInvalidConfig = errors.New("invalid configuration")

// Config is everything presenced is told by flags and environment: each
// component's own Config (which registers its flags, see RegisterFlags),
// and the few settings of the daemon itself. Which optional components run
// follows from it: Redis when Redis.Enabled, PostgreSQL when
// Postgres.Enabled, the history when History.Table is set, a cluster node
// when Cluster.BindAddr or Cluster.Join is set, the embedded broker when
// Ingest.BrokerURL is empty.
type Config struct {
	Engine engine.Config
	// Ingest.BrokerURL empty: the embedded broker on EmbeddedMQTTAddr.
	Ingest   ingest.Config
	Redis    redis.ClientConfig
	Keys     redis.Config // the Redis sink: the seed's keys
	Postgres postgres.PoolConfig
	Devices  postgres.Config // the Postgres sink: the devices table
	History  postgres.HistoryConfig
	Events   events.Config
	Recovery recovery.Config
	// Cluster.BindAddr and Join empty: a single node.
	Cluster cluster.Config
	API     api.Config

	// EmbeddedMQTTAddr is where the embedded broker listens. Taken and the
	// default, a free port is used instead (another broker runs there).
	EmbeddedMQTTAddr string
	Demo             int // simulated devices
	ShutdownTimeout  time.Duration
	// PprofAddr, if set, serves net/http/pprof there (-pprof-addr): a
	// loopback address, or any with API.Token set (its requests then need
	// the token, as everywhere when one is set).
	PprofAddr string
	LogLevel  string
	LogFormat string
}

// Defaults of the daemon's own settings.
const (
	defaultEmbeddedMQTTAddr = "127.0.0.1:1883"
)

// DefaultConfig is presenced with nothing set: embedded broker, in-memory
// state, the seed's topics and 60 s timeout, the API on 127.0.0.1:8080.
func DefaultConfig() Config {
	c := Config{
		Engine:           engine.DefaultConfig(),
		Ingest:           ingest.DefaultConfig(),
		Redis:            redis.DefaultClientConfig(),
		Keys:             redis.DefaultConfig(),
		Devices:          postgres.DefaultConfig(),
		History:          postgres.DefaultHistoryConfig(),
		Events:           events.DefaultConfig(),
		Recovery:         recovery.DefaultConfig(),
		Cluster:          cluster.DefaultConfig(),
		API:              api.DefaultConfig(),
		EmbeddedMQTTAddr: defaultEmbeddedMQTTAddr,
		ShutdownTimeout:  15 * time.Second,
		LogLevel:         "info",
		LogFormat:        "text",
	}
	c.Ingest.BrokerURL = "" // the embedded broker
	c.Ingest.ClientIDPrefix = "presenced"
	c.Cluster.BindAddr = "" // not clustered
	return c
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
failure, 2 on invalid flags or environment. docs/CONFIGURATION.md explains
each setting.

Flags:
`

// RegisterFlags registers every flag: each component's, then the daemon's
// own.
func (c *Config) RegisterFlags(s *envflag.Set) {
	c.Engine.RegisterFlags(s)
	c.Ingest.RegisterFlags(s)
	c.Redis.RegisterFlags(s)
	c.Keys.RegisterFlags(s)
	c.Postgres.RegisterFlags(s)
	c.Devices.RegisterFlags(s)
	c.History.RegisterFlags(s)
	c.Events.RegisterFlags(s)
	c.Recovery.RegisterFlags(s)
	c.Cluster.RegisterFlags(s)
	c.API.RegisterFlags(s)
	s.String(&c.EmbeddedMQTTAddr, "embedded-mqtt-addr", "PRESENCE_EMBEDDED_MQTT_ADDR", "address of the embedded MQTT broker (used when -mqtt-url is empty)")
	s.Int(&c.Demo, "demo", "PRESENCE_DEMO", "simulate this many devices publishing to the broker, going silent and coming back (0: none)")
	s.String(&c.PprofAddr, "pprof-addr", "PRESENCE_PPROF_ADDR", "serve Go's net/http/pprof profiles on this host:port (off when empty); beyond loopback only with -api-token, which its requests then need")
	s.Duration(&c.ShutdownTimeout, "shutdown-timeout", "PRESENCE_SHUTDOWN_TIMEOUT", "how long SIGTERM may take to flush what is pending (after a cluster node's leave and handoff, bounded separately: at most 50 s)")
	s.String(&c.LogLevel, "log-level", "PRESENCE_LOG_LEVEL", "debug, info, warn or error")
	s.String(&c.LogFormat, "log-format", "PRESENCE_LOG_FORMAT", "text or json")
}

// ParseFlags builds a Config from DefaultConfig, the environment (read with
// getenv) and args. With -h it writes the usage to out and returns
// flag.ErrHelp; a value that does not parse is an error wrapping
// ErrInvalidConfig that names the flag or variable at fault. It does not
// Validate: New does.
func ParseFlags(args []string, getenv func(string) string, out io.Writer) (Config, error) {
	c := DefaultConfig()
	s := envflag.New("presenced")
	c.RegisterFlags(s)
	if err := s.Parse(args, getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			s.PrintUsage(out, usageHeader)
			return c, err
		}
		return c, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	if c.Ingest.ShareGroup == "" && !s.IsSet("mqtt-connections", getenv) {
		c.Ingest.Connections = 1 // a plain subscription on several connections would read everything twice
	}
	return c, nil
}

// clustered reports whether presenced runs as a cluster node.
func (c Config) clustered() bool { return c.Cluster.BindAddr != "" || len(c.Cluster.Join) > 0 }

// resolve fills in what follows from other settings: the embedded broker's
// URL, what needs Redis, the cluster's defaults and hooks, the names that
// several components share. It does no I/O.
func (c Config) resolve(brokerURL string) Config {
	if c.Ingest.BrokerURL == "" {
		c.Ingest.BrokerURL = brokerURL
	}
	c.Events.NameAfter(c.Keys.KeyPrefix) // a prefix of its own: a channel and a stream of its own
	if !c.Redis.Enabled() {              // the Redis destinations need Redis
		c.Events.PubSub.Enabled, c.Events.Stream.Enabled = false, false
	}
	if c.Events.MQTT.Enabled { // retained presence messages go to ingest's broker
		m := &c.Events.MQTT
		m.BrokerURL, m.Username, m.Password, m.TLS = c.Ingest.BrokerURL, c.Ingest.Username, c.Ingest.Password, c.Ingest.TLS
		m.ClientID = c.Ingest.ClientIDPrefix + "-events"
		if c.clustered() { // one publisher per node: the same id would take the other over
			m.ClientID = c.Ingest.ClientIDPrefix + "-" + c.Cluster.NodeName + "-events"
		}
	}
	c.Recovery.Index.KeyPrefix, c.Recovery.Index.TimeoutsKey = c.Keys.KeyPrefix, c.Keys.TimeoutsKey()
	c.History.MaxYield = c.Devices.Flush.MaxYield // one knob: -pg-max-yield
	if c.clustered() {
		if c.Cluster.BindAddr == "" { // -cluster-join alone
			c.Cluster.BindAddr = cluster.DefaultConfig().BindAddr
		}
		c.Keys.Guarded = true // a stale owner must not move last-seen back
		// Plain subscriptions: every node reads the whole stream and keeps
		// its own devices' messages.
		c.Cluster.ReadsAll = c.Ingest.ShareGroup == ""
		if !c.Ingest.CleanSession {
			// Stable client ids must differ between nodes.
			c.Ingest.ClientIDPrefix += "-" + c.Cluster.NodeName
		}
		c.Recovery.Index.Partitions = c.Cluster.Partitions
		if c.Redis.Enabled() {
			// Messages of partitions gained from a crashed node wait for
			// their rebuild from Redis (recovery.Recovery.OnChange); the
			// rebuild gives up first.
			c.Cluster.RebuildHold = c.Recovery.RebuildTimeout + 5*time.Second
		}
	}
	return c
}

// Validate reports every invalid setting at once, each component's
// configuration validated once. It does no I/O.
func (c Config) Validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.PprofAddr != "" {
		if _, _, err := net.SplitHostPort(c.PprofAddr); err != nil {
			bad("-pprof-addr %q is not host:port: %v", c.PprofAddr, err)
		} else if !netaddr.Loopback(c.PprofAddr) && c.API.Token == "" {
			bad("-pprof-addr %s is not a loopback address: profiles show the heap and the code to whoever reaches it; "+
				"set -api-token (PRESENCE_API_TOKEN), which its requests then need, or use 127.0.0.1", c.PprofAddr)
		}
	}
	if _, _, err := net.SplitHostPort(c.EmbeddedMQTTAddr); err != nil {
		bad("-embedded-mqtt-addr %q is not host:port: %v", c.EmbeddedMQTTAddr, err)
	}
	if c.Demo < 0 || c.Demo > 100_000 {
		bad("-demo must be in [0, 100000], got %d", c.Demo)
	}
	if c.ShutdownTimeout <= 0 {
		bad("-shutdown-timeout must be positive, got %v", c.ShutdownTimeout)
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		add(err)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		bad("-log-format must be text or json, got %q", c.LogFormat)
	}

	r := c.resolve("tcp://" + c.EmbeddedMQTTAddr)
	add(r.Engine.Validate())
	add(r.Ingest.Validate())
	add(r.API.Validate())
	add(r.Events.Validate())
	if r.Redis.Enabled() {
		add(r.Redis.Validate())
		add(r.Keys.Validate())
		add(r.Recovery.Validate())
		add(r.keysApart())
	}
	if r.Postgres.Enabled() {
		add(r.Postgres.Validate())
		add(r.Devices.Validate())
		if r.History.Table != "" {
			add(r.History.Validate())
		}
	}
	if r.clustered() {
		add(r.Cluster.Validate())
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(errs...))
	}
	return nil
}

// keysApart refuses an events stream key inside the device keys or the
// device index: one message from a device with the matching id would
// overwrite the stream (or the index set) with a status string.
func (c Config) keysApart() error {
	if !c.Events.Stream.Enabled {
		return nil
	}
	for _, key := range c.Events.Stream.ShardKeys() {
		if key == c.Keys.TimeoutsKey() {
			return fmt.Errorf("-events-stream (PRESENCE_EVENTS_STREAM) %q is the devices' own timeouts of earlier versions, which a start moves and deletes; choose another key, such as the default %q",
				key, c.Keys.KeyPrefix+"events:stream")
		}
		for i, ns := range append(c.Keys.DeviceNamespaces(), c.Recovery.Index.Namespace(), c.Keys.TimeoutsKey()+":") {
			if strings.HasPrefix(key, ns) {
				what := "a device" // the device namespaces come first
				if i >= len(c.Keys.DeviceNamespaces()) {
					what = "a partition"
				}
				return fmt.Errorf("-events-stream (PRESENCE_EVENTS_STREAM) %q falls inside the keys %s* (-redis-prefix %q): %s named %q would overwrite it; choose a key outside them, such as the default %q",
					key, ns, c.Keys.KeyPrefix, what, strings.TrimPrefix(key, ns), c.Keys.KeyPrefix+"events:stream")
			}
		}
	}
	return nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToUpper(s))); err != nil {
		return 0, fmt.Errorf("-log-level must be debug, info, warn or error, got %q", s)
	}
	return l, nil
}
