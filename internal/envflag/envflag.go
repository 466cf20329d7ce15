// Package envflag gives every command-line flag an environment twin, as the
// binaries of this repository promise operators: the environment is read
// first, a flag given on the command line wins, and -h shows each flag with
// its variable.
package envflag

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// Set is a flag.FlagSet whose flags have environment twins.
type Set struct {
	*flag.FlagSet
	envs    map[string]string // flag name -> variable
	secrets []*secret         // in registration order
}

// New returns an empty Set for the command name.
func New(name string) *Set {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned; usage printed only for -h
	fs.Usage = func() {}
	return &Set{FlagSet: fs, envs: map[string]string{}}
}

// Secret defines flag name like Var, for a value that must never be
// printed: a bad value is reported by the flag and variable names alone,
// and its default is not shown by -h.
func (s *Set) Secret(v flag.Value, name, env, usage string) {
	sv := &secret{Value: v, name: name, env: env}
	s.secrets = append(s.secrets, sv)
	s.Var(sv, name, env, usage)
}

// SecretString defines a string flag holding a secret (see Secret).
func (s *Set) SecretString(p *string, name, env, usage string) {
	s.Secret((*stringValue)(p), name, env, usage)
}

// secret defers a bad value's error to Parse, which reports it without the
// value (the flag package's own message would quote it).
type secret struct {
	flag.Value
	name, env string
	err       error
}

func (v *secret) String() string { return "" }
func (v *secret) Set(x string) error {
	if err := v.Value.Set(x); err != nil {
		v.err = fmt.Errorf("-%s (%s): %w", v.name, v.env, err)
	}
	return nil
}

// Var defines flag name with its environment twin env (the usage gets
// "(env X)" appended).
func (s *Set) Var(v flag.Value, name, env, usage string) {
	s.envs[name] = env
	s.FlagSet.Var(v, name, usage+" (env "+env+")")
}

// String defines a string flag.
func (s *Set) String(p *string, name, env, usage string) {
	s.Var((*stringValue)(p), name, env, usage)
}

// Int defines an int flag.
func (s *Set) Int(p *int, name, env, usage string) { s.Var((*intValue)(p), name, env, usage) }

// Int64 defines an int64 flag.
func (s *Set) Int64(p *int64, name, env, usage string) { s.Var((*int64Value)(p), name, env, usage) }

// Uint64 defines a uint64 flag.
func (s *Set) Uint64(p *uint64, name, env, usage string) { s.Var((*uint64Value)(p), name, env, usage) }

// Float64 defines a float64 flag. It takes what strconv.ParseFloat takes,
// NaN and Inf included: range checks belong to the caller's Validate.
func (s *Set) Float64(p *float64, name, env, usage string) {
	s.Var((*float64Value)(p), name, env, usage)
}

// Bool defines a bool flag; it takes what ParseBool takes.
func (s *Set) Bool(p *bool, name, env, usage string) { s.Var((*boolValue)(p), name, env, usage) }

// Uint8 defines a uint8 flag (an MQTT QoS, say).
func (s *Set) Uint8(p *uint8, name, env, usage string) { s.Var((*uint8Value)(p), name, env, usage) }

// StringSwitch defines a string flag whose empty value turns a feature
// off: on is set to whether the value is not empty. -h shows the default
// only when the feature is on.
func (s *Set) StringSwitch(p *string, on *bool, name, env, usage string) {
	s.Var(&stringSwitch{p, on}, name, env, usage)
}

// DurationSwitch defines a duration flag whose zero value turns a feature
// off: on is set to whether the value is positive.
func (s *Set) DurationSwitch(p *time.Duration, on *bool, name, env, usage string) {
	s.Var(&durationSwitch{(*Duration)(p), on}, name, env, usage+"; a duration like 1m30s, or seconds")
}

// Duration defines a duration flag that also takes a bare number of seconds,
// as DEVICE_OFFLINE_TIMEOUT always has.
func (s *Set) Duration(p *time.Duration, name, env, usage string) {
	s.Var((*Duration)(p), name, env, usage+"; a duration like 1m30s, or seconds")
}

// Parse applies the environment (read with getenv), then args. A bad value
// names the flag or the variable at fault. With -h it returns flag.ErrHelp.
func (s *Set) Parse(args []string, getenv func(string) string) error {
	var err error
	s.VisitAll(func(f *flag.Flag) {
		env := s.envs[f.Name]
		v := getenv(env)
		if v == "" || err != nil || env == "" {
			return
		}
		if e := s.Set(f.Name, v); e != nil {
			err = fmt.Errorf("%s=%q: %v", env, v, e)
		}
	})
	if err != nil {
		return err
	}
	if err := s.secretErr(); err != nil {
		return err
	}
	s.VisitAll(func(f *flag.Flag) {
		if r, ok := f.Value.(Resetter); ok {
			r.Reset() // the command line replaces what the environment set
		}
	})
	if err := s.FlagSet.Parse(args); err != nil {
		return err
	}
	if err := s.secretErr(); err != nil {
		return err
	}
	if s.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", s.Arg(0))
	}
	return nil
}

func (s *Set) secretErr() error {
	for _, v := range s.secrets {
		if v.err != nil {
			return v.err
		}
	}
	return nil
}

// IsSet reports whether flag name was given on the command line or in its
// environment variable.
func (s *Set) IsSet(name string, getenv func(string) string) bool {
	set := getenv(s.envs[name]) != ""
	s.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	return set
}

// PrintUsage writes header, then every flag with its default and variable.
func (s *Set) PrintUsage(out io.Writer, header string) {
	fmt.Fprint(out, header)
	s.SetOutput(out)
	s.PrintDefaults()
	s.SetOutput(io.Discard)
}

// Duration is a flag.Value that accepts a Go duration or a bare number of
// seconds.
type Duration time.Duration

func (d *Duration) String() string {
	if d == nil {
		return "0s"
	}
	return time.Duration(*d).String()
}

// Set parses a duration like 1m30s, or a number of seconds like 60 or 2.5.
func (d *Duration) Set(v string) error {
	if f, err := strconv.ParseFloat(v, 64); err == nil {
		ns := f * float64(time.Second)
		if math.IsNaN(ns) || math.Abs(ns) > math.MaxInt64/2 {
			return errors.New("out of range")
		}
		*d = Duration(ns)
		return nil
	}
	p, err := time.ParseDuration(v)
	if err != nil {
		return errors.New("want a duration like 30s or 1m, or a number of seconds")
	}
	*d = Duration(p)
	return nil
}

// Resetter is a list-like flag.Value: Parse calls Reset after the
// environment was applied, so that the first value given on the command
// line replaces the environment's instead of adding to it.
type Resetter interface {
	flag.Value
	Reset()
}

// List is a flag.Value collecting a comma-separated list; repeating the flag
// appends, and the first value given on the command line replaces what the
// default or the environment set.
type List struct {
	p     *[]string
	fresh bool
}

// NewList returns a List storing into p, whose current content is the
// default.
func NewList(p *[]string) *List { return &List{p: p, fresh: true} }

func (l *List) String() string {
	if l == nil || l.p == nil {
		return ""
	}
	return strings.Join(*l.p, ",")
}

// Set adds the comma-separated items of v.
func (l *List) Set(v string) error {
	if l.fresh {
		*l.p = nil
		l.fresh = false
	}
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			*l.p = append(*l.p, item)
		}
	}
	return nil
}

// Reset makes the next Set replace the list (the environment was applied;
// the command line comes next).
func (l *List) Reset() { l.fresh = true }

type stringValue string

func (v *stringValue) String() string { return string(*v) }
func (v *stringValue) Set(s string) error {
	*v = stringValue(s)
	return nil
}

type intValue int

func (v *intValue) String() string { return strconv.Itoa(int(*v)) }
func (v *intValue) Set(s string) error {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return errors.New("want an integer")
	}
	*v = intValue(n)
	return nil
}

type int64Value int64

func (v *int64Value) String() string { return strconv.FormatInt(int64(*v), 10) }
func (v *int64Value) Set(s string) error {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return errors.New("want an integer")
	}
	*v = int64Value(n)
	return nil
}

type uint64Value uint64

func (v *uint64Value) String() string { return strconv.FormatUint(uint64(*v), 10) }
func (v *uint64Value) Set(s string) error {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return errors.New("want a non-negative integer")
	}
	*v = uint64Value(n)
	return nil
}

type float64Value float64

func (v *float64Value) String() string { return strconv.FormatFloat(float64(*v), 'g', -1, 64) }
func (v *float64Value) Set(s string) error {
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil {
		return errors.New("want a number")
	}
	*v = float64Value(f)
	return nil
}

type boolValue bool

func (v *boolValue) String() string   { return strconv.FormatBool(bool(*v)) }
func (v *boolValue) IsBoolFlag() bool { return true }
func (v *boolValue) Set(s string) error {
	b, err := ParseBool(s)
	if err != nil {
		return err
	}
	*v = boolValue(b)
	return nil
}

// ParseBool is how every boolean flag and variable is read: 1, t, true,
// yes, on, and 0, f, false, no, off, in any case, surrounding space
// ignored.
func ParseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "1", "t", "true", "yes", "on":
		return true, nil
	case "0", "f", "false", "no", "off":
		return false, nil
	}
	return false, errors.New("want true or false")
}

type uint8Value uint8

func (v *uint8Value) String() string { return strconv.Itoa(int(*v)) }
func (v *uint8Value) Set(s string) error {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 8)
	if err != nil {
		return errors.New("want an integer from 0 to 255")
	}
	*v = uint8Value(n)
	return nil
}

type stringSwitch struct {
	p  *string
	on *bool
}

func (v *stringSwitch) String() string {
	if v.p == nil || !*v.on {
		return ""
	}
	return *v.p
}

func (v *stringSwitch) Set(s string) error {
	*v.p, *v.on = s, s != ""
	return nil
}

type durationSwitch struct {
	d  *Duration
	on *bool
}

func (v *durationSwitch) String() string {
	if v.d == nil || !*v.on {
		return "0s"
	}
	return v.d.String()
}

func (v *durationSwitch) Set(s string) error {
	if err := v.d.Set(s); err != nil {
		return err
	}
	*v.on = *v.d > 0
	return nil
}
