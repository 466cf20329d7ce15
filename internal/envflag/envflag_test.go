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
