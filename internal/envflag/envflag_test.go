package envflag

import (
	"errors"
	"flag"
	"math"
	"strings"
	"testing"
	"time"
)

func env(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

type conf struct {
	name    string
	n       int
	on      bool
	timeout time.Duration
	topics  []string
}

func parse(t *testing.T, args []string, getenv func(string) string) (conf, *Set, error) {
	t.Helper()
	c := conf{name: "def", n: 1, timeout: time.Minute, topics: []string{"a"}}
	s := New("cmd")
	s.String(&c.name, "name", "NAME", "a name")
	s.Int(&c.n, "n", "N", "a number")
	s.Bool(&c.on, "on", "ON", "a switch")
	s.Duration(&c.timeout, "timeout", "TIMEOUT", "a timeout")
	s.Var(NewList(&c.topics), "topic", "TOPICS", "topics")
	err := s.Parse(args, getenv)
	return c, s, err
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  func(string) string
		want conf
	}{
		{"defaults", nil, env(), conf{"def", 1, false, time.Minute, []string{"a"}}},
		{"env", nil, env("NAME", "x", "N", "3", "ON", "true", "TIMEOUT", "90", "TOPICS", "b, c"),
			conf{"x", 3, true, 90 * time.Second, []string{"b", "c"}}},
		{"flag wins", []string{"-name", "y", "-timeout", "2m", "-topic", "d", "-topic", "e,f"},
			env("NAME", "x", "TIMEOUT", "5", "TOPICS", "b"),
			conf{"y", 1, false, 2 * time.Minute, []string{"d", "e", "f"}}},
		{"fractional seconds", []string{"-timeout", "2.5"}, env(), conf{"def", 1, false, 2500 * time.Millisecond, []string{"a"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, _, err := parse(t, tc.args, tc.env)
			if err != nil {
				t.Fatal(err)
			}
			if got.name != tc.want.name || got.n != tc.want.n || got.on != tc.want.on || got.timeout != tc.want.timeout ||
				strings.Join(got.topics, "|") != strings.Join(tc.want.topics, "|") {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	check := func(args []string, getenv func(string) string, want string) {
		t.Helper()
		_, _, err := parse(t, args, getenv)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("args %v: error %v, want it to mention %q", args, err, want)
		}
	}
	check(nil, env("N", "many"), `N="many"`)
	check(nil, env("TIMEOUT", "soon"), `TIMEOUT="soon"`)
	check([]string{"-timeout", "1e300"}, env(), "out of range")
	check([]string{"-on=maybe"}, env(), "on")
	check([]string{"-nope"}, env(), "nope")
	check([]string{"extra"}, env(), `unexpected argument "extra"`)
	if _, _, err := parse(t, []string{"-h"}, env()); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
}

func TestUsageAndIsSet(t *testing.T) {
	_, s, err := parse(t, []string{"-n", "2"}, env("NAME", "x"))
	if err != nil {
		t.Fatal(err)
	}
	getenv := env("NAME", "x")
	if !s.IsSet("n", getenv) || !s.IsSet("name", getenv) || s.IsSet("on", getenv) {
		t.Fatal("IsSet is wrong")
	}
	var b strings.Builder
	s.PrintUsage(&b, "Usage: cmd\n")
	for _, want := range []string{"Usage: cmd", "-timeout", "(env TIMEOUT)", "or seconds", "(env TOPICS)"} {
		if !strings.Contains(b.String(), want) {
			t.Fatalf("usage lacks %q:\n%s", want, b.String())
		}
	}
}

func TestUint64AndFloat64(t *testing.T) {
	parse := func(args []string, getenv func(string) string) (uint64, float64, error) {
		u, f := uint64(7), 0.5
		s := New("cmd")
		s.Uint64(&u, "u", "U", "a count")
		s.Float64(&f, "f", "F", "a rate")
		err := s.Parse(args, getenv)
		return u, f, err
	}
	check := func(args []string, getenv func(string) string, wantU uint64, wantF float64) {
		t.Helper()
		u, f, err := parse(args, getenv)
		if err != nil || u != wantU || (f != wantF && !(math.IsNaN(f) && math.IsNaN(wantF))) {
			t.Fatalf("args %v: %d, %v, %v; want %d, %v", args, u, f, err, wantU, wantF)
		}
	}
	check(nil, env(), 7, 0.5)
	check(nil, env("U", "18446744073709551615", "F", "2.5e3"), math.MaxUint64, 2500)
	check([]string{"-u", "3", "-f", "1"}, env("U", "9", "F", "9"), 3, 1)
	check([]string{"-f", "NaN"}, env(), 7, math.NaN()) // ranges are Validate's job
	checkErr := func(args []string, getenv func(string) string, want string) {
		t.Helper()
		if _, _, err := parse(args, getenv); err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("args %v: error %v, want it to mention %q", args, err, want)
		}
	}
	checkErr([]string{"-u", "-1"}, env(), "-u")
	checkErr([]string{"-f", "fast"}, env(), "-f")
	checkErr(nil, env("U", "1.5"), `U="1.5"`)
	checkErr(nil, env("F", "x"), `F="x"`)
}

// A secret's bad value is named by its flag and variable, never quoted:
// not from the environment, not from the command line.
func TestSecretNeverEchoed(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  func(string) string
	}{
		{nil, env("KEY", "hunter2!")},
		{[]string{"-key", "hunter2!"}, env()},
	} {
		s := New("cmd")
		s.Secret(funcValue(func(v string) error {
			if len(v) != 16 {
				return errors.New("want 16 bytes")
			}
			return nil
		}), "key", "KEY", "a key")
		err := s.Parse(tc.args, tc.env)
		if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "-key (KEY): want 16 bytes") {
			t.Fatalf("%v: %v", tc.args, err)
		}
	}
	s := New("cmd")
	var pw string
	s.SecretString(&pw, "password", "PASSWORD", "a password")
	var out strings.Builder
	if err := s.Parse(nil, env("PASSWORD", "pw")); err != nil || pw != "pw" {
		t.Fatalf("%v %q", err, pw)
	}
	s.PrintUsage(&out, "")
	if strings.Contains(out.String(), "pw") && strings.Contains(out.String(), "default") {
		t.Fatalf("-h shows the secret:\n%s", out.String())
	}
}

type funcValue func(string) error

func (f funcValue) String() string     { return "" }
func (f funcValue) Set(v string) error { return f(v) }

func TestSwitches(t *testing.T) {
	check := func(args []string, getenv func(string) string, wantCh string, wantOn bool, wantWin time.Duration, wantMass bool) {
		t.Helper()
		s := New("cmd")
		ch, on := "events", true
		win, mass := 30*time.Second, true
		s.StringSwitch(&ch, &on, "channel", "CHANNEL", "a channel; empty: none")
		s.DurationSwitch(&win, &mass, "window", "WINDOW", "a window; 0: off")
		if err := s.Parse(args, getenv); err != nil {
			t.Fatal(err)
		}
		if ch != wantCh || on != wantOn || win != wantWin || mass != wantMass {
			t.Fatalf("%v: %q %v %v %v", args, ch, on, win, mass)
		}
	}
	check(nil, env(), "events", true, 30*time.Second, true)
	check([]string{"-channel", "", "-window", "0"}, env(), "", false, 0, false)
	check(nil, env("CHANNEL", "x", "WINDOW", "1m"), "x", true, time.Minute, true)
}

func TestParseBool(t *testing.T) {
	for in, want := range map[string]bool{"1": true, "TRUE": true, " yes ": true, "on": true, "0": false, "False": false, "no": false, "OFF": false} {
		if got, err := ParseBool(in); err != nil || got != want {
			t.Errorf("ParseBool(%q) = %v, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "2", "y", "enabled"} {
		if _, err := ParseBool(bad); err == nil {
			t.Errorf("ParseBool(%q) succeeded", bad)
		}
	}
}

func TestUint8(t *testing.T) {
	s := New("cmd")
	var q uint8 = 1
	s.Uint8(&q, "qos", "QOS", "qos")
	if err := s.Parse([]string{"-qos", "2"}, env()); err != nil || q != 2 {
		t.Fatalf("%v %d", err, q)
	}
	if err := New("x").Parse(nil, env()); err != nil {
		t.Fatal(err)
	}
	s2 := New("cmd")
	s2.Uint8(&q, "qos", "QOS", "qos")
	if err := s2.Parse([]string{"-qos", "300"}, env()); err == nil {
		t.Fatal("300 accepted as a uint8")
	}
}
