package loadgen

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
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
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned, usage printed only for -h
	fs.Usage = func() {}
	var period time.Duration
	qos := uint(cfg.QoS)
	envs := map[string]string{}
	def := func(flagName, env string) string {
		if env == "" {
			env = EnvPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
		}
		envs[flagName] = env
		return env
	}
	str := func(p *string, n, env, usage string) {
		fs.StringVar(p, n, *p, usage+" (env "+def(n, env)+")")
	}
	dur := func(p *time.Duration, n, usage string) {
		fs.Var((*durationValue)(p), n, usage+"; a `duration` like 1m30s, or seconds (env "+def(n, "")+")")
	}

	str(&cfg.Broker, "broker", "MQTT_URL", "MQTT broker URL: tcp://, ssl://, ws://, wss://; user:pass@ in the URL is used when -username is empty")
	str(&cfg.Username, "username", "", "MQTT username, empty for none")
	str(&cfg.Password, "password", "", "MQTT password (prefer the environment variable to keep it out of ps)")
	str(&cfg.ClientID, "client-id", "", "MQTT client id prefix; connection c uses <prefix>-<pid>-<c>")
	fs.IntVar(&cfg.Devices, "devices", cfg.Devices, "number of simulated devices (env "+def("devices", "")+")")
	fs.Uint64Var(&cfg.IDStart, "id-start", cfg.IDStart, "numeric id of the first device; ids are consecutive decimal integers (env "+def("id-start", "")+")")
	str(&cfg.IDPrefix, "id-prefix", "", "text put before every numeric id, e.g. sensor- gives sensor-17; empty keeps plain integers")
	str(&cfg.Topic, "topic", "", "telemetry topic template; {id} is replaced by the device id")
	fs.Float64Var(&cfg.Rate, "rate", cfg.Rate, "total telemetry rate in messages/s, spread evenly over devices; excludes -period (env "+def("rate", "")+")")
	dur(&period, "period", "per-device publish period (rate = devices/period); excludes -rate")
	fs.IntVar(&cfg.Conns, "conns", cfg.Conns, "number of MQTT connections; devices are spread over them (env "+def("conns", "")+")")
	fs.UintVar(&qos, "qos", qos, "QoS of every publish: 0, 1 or 2 (env "+def("qos", "")+")")
	fs.IntVar(&cfg.Inflight, "inflight", cfg.Inflight, "max publishes per connection awaiting completion (written for QoS 0, acked for QoS 1/2) (env "+def("inflight", "")+")")
	dur(&cfg.Duration, "duration", "stop after this long; 0 = until -count or SIGINT/SIGTERM")
	fs.Uint64Var(&cfg.Count, "count", cfg.Count, "stop after this many telemetry messages; 0 = no limit (env "+def("count", "")+")")
	fs.Float64Var(&cfg.SilentFraction, "silent-fraction", cfg.SilentFraction, "fraction of devices (0..1) that stop publishing at -silent-after, spread evenly (env "+def("silent-fraction", "")+")")
	dur(&cfg.SilentAfter, "silent-after", "time since start at which the silent fraction stops publishing")
	dur(&cfg.ReturnAfter, "return-after", "silenced devices publish again this long after going silent; 0 = never")
	str(&cfg.StatusTopic, "status-topic", "", "status topic template used by -announce; {id} is replaced by the device id")
	fs.BoolVar(&cfg.Announce, "announce", cfg.Announce, "silenced devices publish \"offline\" on -status-topic when going silent and \"online\" when returning (env "+def("announce", "")+")")
	fs.IntVar(&cfg.PayloadSize, "payload-size", cfg.PayloadSize, "pad the JSON payload to at least this many bytes; 0 = natural size (~50 bytes) (env "+def("payload-size", "")+")")
	dur(&cfg.Tick, "tick", "pacing interval: each connection publishes everything due once per tick")
	dur(&cfg.Progress, "progress", "interval of the progress line on stderr; 0 = off")
	dur(&cfg.ConnectTimeout, "connect-timeout", "timeout of the initial connect and of the final wait for outstanding publishes")

	// Environment first, so flags given on the command line override it.
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		env := envs[f.Name]
		v := getenv(env)
		if v == "" || err != nil {
			return
		}
		if e := fs.Set(f.Name, v); e != nil {
			err = fmt.Errorf("%w: %s=%q: %v", ErrInvalidConfig, env, v, e)
		}
	})
	if err != nil {
		return cfg, err
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(fs, out)
			return cfg, err
		}
		return cfg, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("%w: unexpected argument %q", ErrInvalidConfig, fs.Arg(0))
	}
	if qos > 2 {
		return cfg, fmt.Errorf("%w: -qos must be 0, 1 or 2 (got %d)", ErrInvalidConfig, qos)
	}
	cfg.QoS = byte(qos)

	rateSet := getenv(envs["rate"]) != ""
	periodSet := getenv(envs["period"]) != ""
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "rate":
			rateSet = true
		case "period":
			periodSet = true
		}
	})
	if periodSet {
		if rateSet {
			return cfg, fmt.Errorf("%w: -rate and -period are exclusive; give one", ErrInvalidConfig)
		}
		if period <= 0 {
			return cfg, fmt.Errorf("%w: -period must be > 0 (got %s)", ErrInvalidConfig, period)
		}
		cfg.Rate = float64(cfg.Devices) / period.Seconds()
	}
	return cfg, cfg.Validate()
}

func printUsage(fs *flag.FlagSet, out io.Writer) {
	fmt.Fprintf(out, `Usage: %s [flags]

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
`, fs.Name(), fs.Name())
	fs.SetOutput(out)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

// durationValue is a flag.Value that accepts a Go duration or a bare number of
// seconds (as DEVICE_OFFLINE_TIMEOUT does for the daemon).
type durationValue time.Duration

func (d *durationValue) String() string {
	if d == nil {
		return "0s"
	}
	return time.Duration(*d).String()
}

func (d *durationValue) Set(s string) error {
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		if f*float64(time.Second) > float64(1<<62) || f*float64(time.Second) < -float64(1<<62) {
			return errors.New("out of range")
		}
		*d = durationValue(f * float64(time.Second))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return errors.New("want a duration like 30s or 1m, or a number of seconds")
	}
	*d = durationValue(v)
	return nil
}
