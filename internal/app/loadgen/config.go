package loadgen

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"strings"
	"time"
)

// ErrInvalidConfig is wrapped by every error Config.Validate returns.
var ErrInvalidConfig = errors.New("invalid configuration")

// IDPlaceholder is the segment of a topic template replaced by the device id.
const IDPlaceholder = "{id}"

// Limits enforced by Validate.
const (
	MaxDevices     = 100_000_000
	MaxConns       = 1024
	MaxRate        = 10_000_000 // msgs/s
	MaxPayloadSize = 256 << 10  // bytes
	MaxIDLen       = 128        // same bound as the engine's device ids
	MinTick        = 100 * time.Microsecond
	MaxTick        = time.Second
)

// Config configures a load generation run. Zero values are not usable; start
// from DefaultConfig.
type Config struct {
	// Broker is the MQTT broker URL (tcp://, ssl://, tls://, mqtt://, mqtts://,
	// ws://, wss://). Credentials in the URL are used when Username is empty.
	Broker string
	// Username and Password authenticate every connection; empty means none.
	Username, Password string
	// ClientID prefixes the MQTT client ids; connection c is "<ClientID>-<pid>-<c>".
	ClientID string

	// Devices is the number of simulated devices.
	Devices int
	// IDStart is the numeric id of device 0; ids are IDStart..IDStart+Devices-1.
	IDStart uint64
	// IDPrefix is prepended to the decimal id ("sensor-" gives "sensor-17").
	IDPrefix string
	// Topic is the telemetry topic template; it holds IDPlaceholder once.
	Topic string

	// Rate is the total telemetry rate in messages per second, spread evenly
	// over the devices; each device publishes every Devices/Rate seconds.
	// Silent devices skip their slots, so the achieved rate drops with them.
	Rate float64

	// Conns is the number of MQTT connections; device i uses connection
	// i mod Conns. More connections spread the broker's work over more of its
	// threads (and sockets) at the cost of more memory on both sides.
	Conns int
	// QoS of every publish: 0, 1 or 2. QoS 1 and 2 wait for acknowledgements
	// and are limited by Inflight per connection.
	QoS byte
	// Inflight bounds the publishes per connection whose completion (written
	// for QoS 0, acknowledged for QoS 1/2) is not yet observed. Larger values
	// hide broker latency; smaller ones bound memory and queueing.
	Inflight int

	// Duration stops the run after this long; 0 means no time limit. Every
	// slot due before Duration is published if the generator keeps up; if it
	// falls behind it still stops a tick after Duration, and the summary's
	// rate shows the shortfall.
	Duration time.Duration
	// Count stops the run after this many telemetry messages; 0 means no limit.
	Count uint64

	// SilentFraction of the devices (0..1) stops publishing at SilentAfter.
	SilentFraction float64
	// SilentAfter is the time since start at which silencers stop publishing.
	SilentAfter time.Duration
	// ReturnAfter is how long silencers stay silent before they publish again;
	// 0 means they never come back.
	ReturnAfter time.Duration
	// StatusTopic is the status topic template used when Announce is set.
	StatusTopic string
	// Announce makes silencers publish "offline" on StatusTopic when they go
	// silent and "online" when they return.
	Announce bool

	// PayloadSize pads the JSON payload to at least this many bytes; 0 keeps
	// the natural size (about 50 bytes).
	PayloadSize int
	// Tick is the pacing interval: every Tick each connection publishes all
	// messages that became due. Shorter ticks give smoother traffic and cost
	// more wake-ups.
	Tick time.Duration
	// Progress is the interval of the progress line; 0 disables it.
	Progress time.Duration
	// ConnectTimeout bounds the initial connection of every client and the
	// final wait for outstanding publishes.
	ConnectTimeout time.Duration
}

// DefaultConfig returns the configuration used when no flag or environment
// variable is given: 1000 devices, each publishing once per second.
func DefaultConfig() Config {
	return Config{
		Broker:         "tcp://127.0.0.1:1883",
		ClientID:       "presence-loadgen",
		Devices:        1000,
		IDStart:        1,
		Topic:          "devices/{id}/telemetry",
		Rate:           1000,
		Conns:          4,
		QoS:            0,
		Inflight:       1000,
		StatusTopic:    "devices/{id}/status",
		Tick:           5 * time.Millisecond,
		Progress:       time.Second,
		ConnectTimeout: 10 * time.Second,
	}
}

// Period is the time between two messages of one device.
func (c Config) Period() time.Duration {
	return time.Duration(float64(c.Devices) / c.Rate * float64(time.Second))
}

// SilentDevices is the number of devices that go silent: SilentFraction of
// Devices, rounded to the nearest integer.
func (c Config) SilentDevices() int {
	return int(math.Round(c.SilentFraction * float64(c.Devices)))
}

// Validate reports the first problem with c, wrapping ErrInvalidConfig.
func (c Config) Validate() error {
	for _, check := range []func() error{
		c.validateBroker,
		c.validateDevices,
		c.validateRate,
		c.validateSilence,
		c.validateLimits,
	} {
		if err := check(); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
	}
	return nil
}

func (c Config) validateBroker() error {
	u, err := url.Parse(c.Broker)
	if err != nil {
		return fmt.Errorf("-broker %q: %w", c.Broker, err)
	}
	switch u.Scheme {
	case "tcp", "ssl", "tls", "mqtt", "mqtts", "tcps", "ws", "wss":
	default:
		return fmt.Errorf("-broker %q: scheme must be tcp, ssl, tls, mqtt, mqtts, ws or wss", c.Broker)
	}
	if u.Host == "" {
		return fmt.Errorf("-broker %q: missing host", c.Broker)
	}
	if c.ClientID == "" || len(c.ClientID) > 200 {
		return fmt.Errorf("-client-id must be 1..200 bytes (got %d)", len(c.ClientID))
	}
	return nil
}

func (c Config) validateDevices() error {
	if c.Devices < 1 || c.Devices > MaxDevices {
		return fmt.Errorf("-devices must be in 1..%d (got %d)", MaxDevices, c.Devices)
	}
	if c.IDStart > math.MaxInt64-uint64(c.Devices)+1 {
		return fmt.Errorf("-id-start %d + %d devices exceeds the bigint range", c.IDStart, c.Devices)
	}
	if err := validIDPrefix(c.IDPrefix); err != nil {
		return err
	}
	if err := validTopic("-topic", c.Topic); err != nil {
		return err
	}
	if c.Announce {
		if err := validTopic("-status-topic", c.StatusTopic); err != nil {
			return err
		}
	}
	return nil
}

func (c Config) validateRate() error {
	if math.IsNaN(c.Rate) || c.Rate <= 0 || c.Rate > MaxRate {
		return fmt.Errorf("-rate must be in (0, %d] msgs/s (got %g)", MaxRate, c.Rate)
	}
	if p := c.Period(); p < time.Microsecond || p > 365*24*time.Hour {
		return fmt.Errorf("per-device period %s (-devices / -rate) must be in 1µs..8760h", p)
	}
	return nil
}

func (c Config) validateSilence() error {
	if math.IsNaN(c.SilentFraction) || c.SilentFraction < 0 || c.SilentFraction > 1 {
		return fmt.Errorf("-silent-fraction must be in [0, 1] (got %g)", c.SilentFraction)
	}
	if c.SilentAfter < 0 || c.ReturnAfter < 0 {
		return errors.New("-silent-after and -return-after must not be negative")
	}
	if c.SilentFraction == 0 {
		if c.SilentAfter != 0 || c.ReturnAfter != 0 || c.Announce {
			return errors.New("-silent-after, -return-after and -announce need -silent-fraction > 0")
		}
		return nil
	}
	if c.SilentAfter == 0 {
		return errors.New("-silent-fraction > 0 needs -silent-after > 0")
	}
	if c.Duration > 0 && c.SilentAfter >= c.Duration {
		return fmt.Errorf("-silent-after %s is not before the end of the run (-duration %s)", c.SilentAfter, c.Duration)
	}
	return nil
}

func (c Config) validateLimits() error {
	switch {
	case c.Conns < 1 || c.Conns > MaxConns:
		return fmt.Errorf("-conns must be in 1..%d (got %d)", MaxConns, c.Conns)
	case c.Conns > c.Devices:
		return fmt.Errorf("-conns (%d) must not exceed -devices (%d)", c.Conns, c.Devices)
	case c.QoS > 2:
		return fmt.Errorf("-qos must be 0, 1 or 2 (got %d)", c.QoS)
	case c.Inflight < 1 || c.Inflight > 65535:
		return fmt.Errorf("-inflight must be in 1..65535 (got %d)", c.Inflight)
	case c.Duration < 0:
		return fmt.Errorf("-duration must not be negative (got %s)", c.Duration)
	case c.PayloadSize < 0 || c.PayloadSize > MaxPayloadSize:
		return fmt.Errorf("-payload-size must be in 0..%d bytes (got %d)", MaxPayloadSize, c.PayloadSize)
	case c.Tick < MinTick || c.Tick > MaxTick:
		return fmt.Errorf("-tick must be in %s..%s (got %s)", MinTick, MaxTick, c.Tick)
	case c.Progress < 0:
		return fmt.Errorf("-progress must not be negative (got %s)", c.Progress)
	case c.ConnectTimeout <= 0:
		return fmt.Errorf("-connect-timeout must be > 0 (got %s)", c.ConnectTimeout)
	}
	return nil
}

// validTopic accepts a publish topic template with exactly one {id} and no
// wildcard, which is what the ingest side can parse back.
func validTopic(what, t string) error {
	switch {
	case strings.Count(t, IDPlaceholder) != 1:
		return fmt.Errorf("%s %q must contain %s exactly once", what, t, IDPlaceholder)
	case strings.ContainsAny(t, "+#\x00"):
		return fmt.Errorf("%s %q must not contain wildcards (+, #) or NUL", what, t)
	case len(t) > 1024:
		return fmt.Errorf("%s is longer than 1024 bytes", what)
	}
	return nil
}

// validIDPrefix keeps generated ids valid for the engine: printable ASCII
// without '/', '+', '#', and short enough to leave room for the number.
func validIDPrefix(p string) error {
	if len(p) > MaxIDLen-20 {
		return fmt.Errorf("-id-prefix longer than %d bytes", MaxIDLen-20)
	}
	for i := 0; i < len(p); i++ {
		if b := p[i]; b <= ' ' || b > '~' || b == '/' || b == '+' || b == '#' {
			return fmt.Errorf("-id-prefix %q: byte %q not allowed (printable ASCII without space, '/', '+', '#')", p, b)
		}
	}
	return nil
}
