package loadgen

import (
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func envOf(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

func TestParseFlags(t *testing.T) {
	def := DefaultConfig()
	tests := []struct {
		name string
		args []string
		env  func(string) string
		want func(*Config) // edits applied to DefaultConfig
	}{
		{name: "defaults", want: func(*Config) {}},
		{
			name: "flags",
			args: []string{"-broker", "ws://b:9001/mqtt", "-devices", "10000", "-rate", "20000", "-conns", "8", "-qos", "1",
				"-duration", "5s", "-count", "7", "-id-start", "100", "-id-prefix", "sensor-", "-topic", "t/{id}",
				"-username", "u", "-password", "p", "-client-id", "lg", "-inflight", "10", "-payload-size", "200",
				"-tick", "1ms", "-progress", "0", "-connect-timeout", "3"},
			want: func(c *Config) {
				c.Broker, c.Devices, c.Rate, c.Conns, c.QoS = "ws://b:9001/mqtt", 10000, 20000, 8, 1
				c.Duration, c.Count, c.IDStart, c.IDPrefix, c.Topic = 5*time.Second, 7, 100, "sensor-", "t/{id}"
				c.Username, c.Password, c.ClientID, c.Inflight, c.PayloadSize = "u", "p", "lg", 10, 200
				c.Tick, c.Progress, c.ConnectTimeout = time.Millisecond, 0, 3*time.Second
			},
		},
		{
			name: "env twins",
			env: envOf("MQTT_URL", "tcp://broker:1883", "LOADGEN_DEVICES", "50", "LOADGEN_RATE", "5",
				"LOADGEN_SILENT_FRACTION", "0.5", "LOADGEN_SILENT_AFTER", "30", "LOADGEN_RETURN_AFTER", "1m",
				"LOADGEN_ANNOUNCE", "true", "LOADGEN_STATUS_TOPIC", "s/{id}", "LOADGEN_QOS", "2"),
			want: func(c *Config) {
				c.Broker, c.Devices, c.Rate, c.QoS = "tcp://broker:1883", 50, 5, 2
				c.SilentFraction, c.SilentAfter, c.ReturnAfter = 0.5, 30*time.Second, time.Minute
				c.Announce, c.StatusTopic = true, "s/{id}"
			},
		},
		{
			name: "flag wins over env",
			args: []string{"-devices", "7"},
			env:  envOf("LOADGEN_DEVICES", "50"),
			want: func(c *Config) { c.Devices = 7 },
		},
		{
			name: "period sets the rate",
			args: []string{"-devices", "600", "-period", "1m"},
			want: func(c *Config) { c.Devices, c.Rate = 600, 10 },
		},
		{
			name: "period from env, seconds",
			args: []string{"-devices", "100"},
			env:  envOf("LOADGEN_PERIOD", "0.5"),
			want: func(c *Config) { c.Devices, c.Rate = 100, 200 },
		},
		{
			name: "silence with return",
			args: []string{"-silent-fraction", "0.1", "-silent-after", "30s", "-return-after", "1m", "-duration", "2m", "-announce"},
			want: func(c *Config) {
				c.SilentFraction, c.SilentAfter, c.ReturnAfter, c.Duration, c.Announce = 0.1, 30*time.Second, time.Minute, 2*time.Minute, true
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := tt.env
			if env == nil {
				env = envOf()
			}
			got, err := ParseFlags("lg", tt.args, env, io.Discard)
			if err != nil {
				t.Fatalf("ParseFlags: %v", err)
			}
			want := def
			tt.want(&want)
			if got != want {
				t.Errorf("config\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestParseFlagsErrors(t *testing.T) {
	check := func(t *testing.T, args []string, env func(string) string, wantMsg string) {
		t.Helper()
		if env == nil {
			env = envOf()
		}
		_, err := ParseFlags("lg", args, env, io.Discard)
		if err == nil {
			t.Fatalf("ParseFlags(%q): no error, want one mentioning %q", args, wantMsg)
		}
		if !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("error %v does not wrap ErrInvalidConfig", err)
		}
		if !strings.Contains(err.Error(), wantMsg) {
			t.Errorf("error %q does not mention %q", err, wantMsg)
		}
	}
	tests := []struct {
		name    string
		args    []string
		env     func(string) string
		wantMsg string
	}{
		{"unknown flag", []string{"-nope"}, nil, "-nope"},
		{"not a number", []string{"-rate", "fast"}, nil, "-rate"},
		{"negative rate", []string{"-rate", "-1"}, nil, "-rate must be"},
		{"zero rate", []string{"-rate", "0"}, nil, "-rate must be"},
		{"NaN rate", []string{"-rate", "NaN"}, nil, "-rate must be"},
		{"huge rate", []string{"-rate", "1e12"}, nil, "-rate must be"},
		{"rate and period", []string{"-rate", "10", "-period", "1s"}, nil, "exclusive"},
		{"rate flag and period env", []string{"-rate", "10"}, envOf("LOADGEN_PERIOD", "1s"), "exclusive"},
		{"zero period", []string{"-period", "0s"}, nil, "-period must be > 0"},
		{"bad duration", []string{"-duration", "soon"}, nil, "-duration"},
		{"negative duration", []string{"-duration", "-1s"}, nil, "-duration must not be negative"},
		{"qos 3", []string{"-qos", "3"}, nil, "-qos must be 0, 1 or 2"},
		{"no devices", []string{"-devices", "0"}, nil, "-devices must be"},
		{"more conns than devices", []string{"-devices", "2", "-conns", "3"}, nil, "-conns (3) must not exceed"},
		{"zero conns", []string{"-conns", "0"}, nil, "-conns must be"},
		{"topic without id", []string{"-topic", "devices/x"}, nil, "exactly once"},
		{"topic with two ids", []string{"-topic", "{id}/{id}"}, nil, "exactly once"},
		{"topic wildcard", []string{"-topic", "d/+/{id}"}, nil, "wildcards"},
		{"status topic checked with announce", []string{"-silent-fraction", "0.1", "-silent-after", "1s", "-announce", "-status-topic", "s"}, nil, "-status-topic"},
		{"bad broker scheme", []string{"-broker", "http://x:1"}, nil, "scheme"},
		{"broker without host", []string{"-broker", "tcp://"}, nil, "missing host"},
		{"fraction above 1", []string{"-silent-fraction", "1.5", "-silent-after", "1s"}, nil, "-silent-fraction must be"},
		{"fraction without after", []string{"-silent-fraction", "0.1"}, nil, "needs -silent-after"},
		{"after without fraction", []string{"-silent-after", "1s"}, nil, "need -silent-fraction"},
		{"announce without fraction", []string{"-announce"}, nil, "need -silent-fraction"},
		{"silence after the end", []string{"-silent-fraction", "0.1", "-silent-after", "10s", "-duration", "5s"}, nil, "not before the end"},
		{"id prefix with slash", []string{"-id-prefix", "a/b"}, nil, "-id-prefix"},
		{"id range beyond bigint", []string{"-id-start", "9223372036854775807", "-devices", "2", "-conns", "1"}, nil, "bigint"},
		{"tick too short", []string{"-tick", "1us"}, nil, "-tick must be"},
		{"payload too big", []string{"-payload-size", "10000000"}, nil, "-payload-size"},
		{"inflight zero", []string{"-inflight", "0"}, nil, "-inflight"},
		{"positional argument", []string{"extra"}, nil, "unexpected argument"},
		{"bad env", nil, envOf("LOADGEN_CONNS", "many"), "LOADGEN_CONNS"},
		{"bad broker env", nil, envOf("MQTT_URL", "redis://x"), "scheme"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { check(t, tt.args, tt.env, tt.wantMsg) })
	}
}

func TestParseFlagsHelp(t *testing.T) {
	var out strings.Builder
	_, err := ParseFlags("lg", []string{"-h"}, envOf(), &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err = %v, want flag.ErrHelp", err)
	}
	help := out.String()
	for _, want := range []string{"-broker", "MQTT_URL", "-rate", "LOADGEN_RATE", "messages/s", "-period",
		"-silent-fraction", "-silent-after", "-return-after", "-announce", "-status-topic", "-conns", "-qos",
		"-duration", "-count", "(default 1000)", "(default 5ms)", "Exit status"} {
		if !strings.Contains(help, want) {
			t.Errorf("help lacks %q", want)
		}
	}
}

func TestConfigPeriodAndSilentDevices(t *testing.T) {
	c := DefaultConfig()
	c.Devices, c.Rate, c.SilentFraction = 10000, 20000, 0.1
	if got := c.Period(); got != 500*time.Millisecond {
		t.Errorf("Period = %s, want 500ms", got)
	}
	if got := c.SilentDevices(); got != 1000 {
		t.Errorf("SilentDevices = %d, want 1000", got)
	}
}
