package loadgen

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/presence-dev/presence/internal/envflag"
)

// EnvPrefix prefixes the environment twin of every flag except -broker,
// whose twin is MQTT_URL as for the daemon: -rate is LOADGEN_RATE.
const EnvPrefix = "LOADGEN_"

// ParseFlags builds a Config from DefaultConfig, then the environment (read
// with getenv), then args; a flag wins over its environment twin. With -h it
// writes the usage to out and returns flag.ErrHelp. Any other error names the
// flag or variable at fault and wraps ErrInvalidConfig.
func ParseFlags(name string, args []string, getenv func(string) string, out io.Writer) (Config, error) {
	cfg := DefaultConfig()
	s := envflag.New(name)
	var period time.Duration
	qos := uint64(cfg.QoS)
	// env is the twin of flag n: -silent-after is LOADGEN_SILENT_AFTER.
	env := func(n string) string { return EnvPrefix + strings.ToUpper(strings.ReplaceAll(n, "-", "_")) }
	str := func(p *string, n, usage string) { s.String(p, n, env(n), usage) }
	dur := func(p *time.Duration, n, usage string) {
		s.Var((*envflag.Duration)(p), n, env(n), usage+"; a `duration` like 1m30s, or seconds")
	}

	s.String(&cfg.Broker, "broker", "MQTT_URL", "MQTT broker URL: tcp://, ssl://, ws://, wss://; user:pass@ in the URL is used when -username is empty")
	str(&cfg.Username, "username", "MQTT username, empty for none")
	str(&cfg.Password, "password", "MQTT password (prefer the environment variable to keep it out of ps)")
	str(&cfg.ClientID, "client-id", "MQTT client id prefix; connection c uses <prefix>-<pid>-<c>")
	s.Int(&cfg.Devices, "devices", env("devices"), "number of simulated devices")
	s.Uint64(&cfg.IDStart, "id-start", env("id-start"), "numeric id of the first device; ids are consecutive decimal integers")
	str(&cfg.IDPrefix, "id-prefix", "text put before every numeric id, e.g. sensor- gives sensor-17; empty keeps plain integers")
	str(&cfg.Topic, "topic", "telemetry topic template; {id} is replaced by the device id")
	s.Float64(&cfg.Rate, "rate", env("rate"), "total telemetry rate in messages/s, spread evenly over devices; excludes -period")
	dur(&period, "period", "per-device publish period (rate = devices/period); excludes -rate")
	s.Int(&cfg.Conns, "conns", env("conns"), "number of MQTT connections; devices are spread over them")
	s.Uint64(&qos, "qos", env("qos"), "QoS of every publish: 0, 1 or 2")
	s.Int(&cfg.Inflight, "inflight", env("inflight"), "max publishes per connection awaiting completion (written for QoS 0, acked for QoS 1/2)")
	dur(&cfg.Duration, "duration", "stop after this long; 0 = until -count or SIGINT/SIGTERM")
	s.Uint64(&cfg.Count, "count", env("count"), "stop after this many telemetry messages; 0 = no limit")
	s.Float64(&cfg.SilentFraction, "silent-fraction", env("silent-fraction"), "fraction of devices (0..1) that stop publishing at -silent-after, spread evenly")
	dur(&cfg.SilentAfter, "silent-after", "time since start at which the silent fraction stops publishing")
	dur(&cfg.ReturnAfter, "return-after", "silenced devices publish again this long after going silent; 0 = never")
	str(&cfg.StatusTopic, "status-topic", "status topic template used by -announce; {id} is replaced by the device id")
	s.Bool(&cfg.Announce, "announce", env("announce"), "silenced devices publish \"offline\" on -status-topic when going silent and \"online\" when returning")
	s.Int(&cfg.PayloadSize, "payload-size", env("payload-size"), "pad the JSON payload to at least this many bytes; 0 = natural size (~50 bytes)")
	dur(&cfg.Tick, "tick", "pacing interval: each connection publishes everything due once per tick")
	dur(&cfg.Progress, "progress", "interval of the progress line on stderr; 0 = off")
	dur(&cfg.ConnectTimeout, "connect-timeout", "timeout of the initial connect and of the final wait for outstanding publishes")

	if err := s.Parse(args, getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			s.PrintUsage(out, fmt.Sprintf(usageHeader, name, name))
			return cfg, err
		}
		return cfg, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	if qos > 2 {
		return cfg, fmt.Errorf("%w: -qos must be 0, 1 or 2 (got %d)", ErrInvalidConfig, qos)
	}
	cfg.QoS = byte(qos)

	if s.IsSet("period", getenv) {
		if s.IsSet("rate", getenv) {
			return cfg, fmt.Errorf("%w: -rate and -period are exclusive; give one", ErrInvalidConfig)
		}
		if period <= 0 {
			return cfg, fmt.Errorf("%w: -period must be > 0 (got %s)", ErrInvalidConfig, period)
		}
		cfg.Rate = float64(cfg.Devices) / period.Seconds()
	}
	return cfg, cfg.Validate()
}

// usageHeader comes before the flags in -h; both verbs are the command name.
const usageHeader = `Usage: %s [flags]

Simulates a fleet of MQTT devices publishing small JSON telemetry to a broker,
paced at a total rate (or a per-device period) spread evenly over devices and
connections. Prints a progress line on stderr every -progress and a summary
on stdout at the end (also on SIGINT/SIGTERM). A fraction of the devices can go
silent (-silent-fraction, -silent-after) and come back (-return-after) to watch
offline detection at scale.

Every flag has an environment twin, shown in parentheses; a flag given on the
command line wins. Exit status: 0 done, 1 run failed (e.g. broker unreachable),
2 invalid flags or environment.

Example: 10k devices at 20k msg/s for 5 s, 10%% going silent after 2 s:
  %s -devices 10000 -rate 20000 -duration 5s -silent-fraction 0.1 -silent-after 2s

Flags:
`
