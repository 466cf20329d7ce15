package ingest

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/envflag"
)

func TestCompilePattern(t *testing.T) {
	valid := []struct {
		pattern, filter string
	}{
		{"devices/{id}/telemetry", "devices/+/telemetry"},
		{"{id}", "+"},
		{"{id}/status", "+/status"},
		{"site/+/devices/{id}/telemetry", "site/+/devices/+/telemetry"},
		{"devices/{id}/#", "devices/+/#"},
		{"a//{id}/", "a//+/"}, // empty levels are legal MQTT
		{"$aws/things/{id}/shadow", "$aws/things/+/shadow"},
		{"a/{b}c/{id}", "a/{b}c/+"}, // braces not around a whole level are literal
	}
	for _, tc := range valid {
		t.Run(tc.pattern, func(t *testing.T) {
			p, err := CompilePattern(tc.pattern)
			if err != nil {
				t.Fatalf("CompilePattern(%q): %v", tc.pattern, err)
			}
			if got := p.Filter(); got != tc.filter {
				t.Errorf("Filter() = %q, want %q", got, tc.filter)
			}
			if p.String() != tc.pattern {
				t.Errorf("String() = %q", p.String())
			}
		})
	}

	invalid := []struct {
		pattern, reason string // reason: a substring of the error
	}{
		{"", "empty"},
		{"devices/+/telemetry", "no {id}"},
		{"devices/{id}/{id}", "more than one"},
		{"devices/x{id}/telemetry", "whole segment"},
		{"devices/{id}x", "whole segment"},
		{"devices/{id}/#/x", "'#' must be the last"},
		{"devices/a+/{id}", "wildcards"},
		{"devices/#a/{id}", "wildcards"},
		{"devices/{ID}/telemetry", "unknown placeholder"},
		{"devices/{device}/{id}", "unknown placeholder"},
		{"$share/g/devices/{id}", "ShareGroup"},
		{"devices/\x00/{id}", "NUL"},
		{"devices/\xff/{id}", "UTF-8"},
	}
	for _, tc := range invalid {
		t.Run("invalid/"+tc.pattern, func(t *testing.T) {
			_, err := CompilePattern(tc.pattern)
			if err == nil {
				t.Fatalf("CompilePattern(%q) succeeded, want error", tc.pattern)
			}
			if !errors.Is(err, ErrInvalidPattern) {
				t.Errorf("error %v does not wrap ErrInvalidPattern", err)
			}
			var pe *PatternError
			if !errors.As(err, &pe) || pe.Pattern != tc.pattern {
				t.Errorf("error %v is not a *PatternError for %q", err, tc.pattern)
			}
			if !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("error %q does not mention %q", err, tc.reason)
			}
		})
	}
}

func TestPatternMatch(t *testing.T) {
	cases := []struct {
		pattern, topic string
		id             string
		ok             bool
	}{
		{"devices/{id}/telemetry", "devices/d1/telemetry", "d1", true},
		{"devices/{id}/telemetry", "devices//telemetry", "", true}, // empty id: rejected later by ValidID
		{"devices/{id}/telemetry", "devices/d1/status", "", false},
		{"devices/{id}/telemetry", "devices/d1/telemetry/x", "", false},
		{"devices/{id}/telemetry", "devices/d1", "", false},
		{"devices/{id}/telemetry", "devices/d1/telemetry/", "", false},
		{"devices/{id}/telemetry", "Devices/d1/telemetry", "", false},
		{"devices/{id}/telemetry", "", "", false},
		{"{id}", "abc", "abc", true},
		{"{id}", "abc/", "", false},
		{"{id}", "$SYS", "", false}, // wildcards at the first level never match $ topics
		{"{id}/t", "$x/t", "", false},
		{"$aws/{id}", "$aws/x", "x", true},
		{"site/+/devices/{id}/telemetry", "site/paris/devices/d7/telemetry", "d7", true},
		{"site/+/devices/{id}/telemetry", "site/devices/d7/telemetry", "", false},
		{"devices/{id}/#", "devices/d1", "d1", true}, // '#' also matches the parent level
		{"devices/{id}/#", "devices/d1/a/b/c", "d1", true},
		{"devices/{id}/#", "devices/d1/", "d1", true},
		{"devices/{id}/#", "devices", "", false},
		{"a//{id}/", "a//x/", "x", true},
		{"a//{id}/", "a/x/y/", "", false},
	}
	for _, tc := range cases {
		t.Run(tc.pattern+"|"+tc.topic, func(t *testing.T) {
			p, err := CompilePattern(tc.pattern)
			if err != nil {
				t.Fatal(err)
			}
			id, ok := p.Match(tc.topic)
			if id != tc.id || ok != tc.ok {
				t.Errorf("Match(%q) = %q, %v; want %q, %v", tc.topic, id, ok, tc.id, tc.ok)
			}
			// The strings.Split reference must agree.
			rid, rok := splitMatch(tc.pattern, tc.topic)
			if rid != id || rok != ok {
				t.Errorf("splitMatch(%q) = %q, %v; Match gave %q, %v", tc.topic, rid, rok, id, ok)
			}
		})
	}
}

func TestValidID(t *testing.T) {
	check := func(id string, want bool) {
		t.Helper()
		if got := ValidID(id); got != want {
			t.Errorf("ValidID(%q) = %v, want %v", id, got, want)
		}
	}
	check("d1", true)
	check("sensor-0042_A.b:c@d$e", true)
	check("!", true)
	check("~", true)
	check(strings.Repeat("x", engine.MaxIDLen), true)
	check(strings.Repeat("x", engine.MaxIDLen+1), false)
	check("", false)
	check("a b", false)
	check("a/b", false)
	check("a+b", false)
	check("a#b", false)
	check("caf\u00e9", false)
	check("a\x7f", false)
	check("a\tb", false)
	check("a\x00", false)
}

func testParser(t testing.TB) *Parser {
	t.Helper()
	p, err := NewParser([]Topic{
		{Pattern: "devices/{id}/telemetry"},
		{Pattern: "devices/{id}/status", Kind: KindStatus},
		{Pattern: "slow/{id}/telemetry", Timeout: 10 * time.Minute},
		{Pattern: "fast/{id}/status", Kind: KindStatus, Timeout: 15 * time.Second},
	}, 256, 64)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParse(t *testing.T) {
	p := testParser(t)
	cases := []struct {
		name, topic, payload string
		want                 Message
		err                  error
	}{
		{"telemetry", "devices/d1/telemetry", `{"t":21.5}`, Message{ID: "d1", Kind: KindTelemetry}, nil},
		{"telemetry empty payload", "devices/d1/telemetry", "", Message{ID: "d1"}, nil},
		{"status online", "devices/d1/status", "online", Message{ID: "d1", Kind: KindStatus, Pattern: 1}, nil},
		{"status offline", "devices/d1/status", "offline", Message{ID: "d1", Kind: KindStatus, Offline: true, Pattern: 1}, nil},
		{"status trimmed any case", "devices/d1/status", " \tOFFline\r\n", Message{ID: "d1", Kind: KindStatus, Offline: true, Pattern: 1}, nil},
		{"status bad", "devices/d1/status", "maybe", Message{}, ErrBadStatus},
		{"status empty", "devices/d1/status", "", Message{}, ErrBadStatus},
		{"status onlinex", "devices/d1/status", "onlinex", Message{}, ErrBadStatus},
		{"per-pattern timeout", "slow/d2/telemetry", "x", Message{ID: "d2", Timeout: 10 * time.Minute, Pattern: 2}, nil},
		{"per-pattern timeout status", "fast/d3/status", "online", Message{ID: "d3", Kind: KindStatus, Timeout: 15 * time.Second, Pattern: 3}, nil},
		{"no match", "other/d1/telemetry", "", Message{}, ErrNoMatch},
		{"empty id", "devices//telemetry", "", Message{}, ErrInvalidID},
		{"id with space", "devices/a b/telemetry", "", Message{}, ErrInvalidID},
		{"id non-ascii", "devices/caf\u00e9/telemetry", "", Message{}, ErrInvalidID},
		{"id too long", "devices/" + strings.Repeat("x", 129) + "/telemetry", "", Message{}, ErrInvalidID},
		{"topic too long", "devices/" + strings.Repeat("x", 250) + "/telemetry", "", Message{}, ErrTopicTooLong},
		{"payload too large", "devices/d1/telemetry", strings.Repeat("x", 65), Message{}, ErrPayloadTooLarge},
		{"payload at limit", "devices/d1/telemetry", strings.Repeat("x", 64), Message{ID: "d1"}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := p.Parse(tc.topic, []byte(tc.payload))
			if err != tc.err {
				t.Fatalf("Parse(%q, %q) error = %v, want %v", tc.topic, tc.payload, err, tc.err)
			}
			if got != tc.want {
				t.Errorf("Parse(%q, %q) = %+v, want %+v", tc.topic, tc.payload, got, tc.want)
			}
		})
	}
	if _, err := p.Parse("devices//telemetry", nil); !errors.Is(err, engine.ErrInvalidID) {
		t.Errorf("ErrInvalidID does not wrap engine.ErrInvalidID: %v", err)
	}
}

func TestParseFirstMatchWins(t *testing.T) {
	p, err := NewParser([]Topic{
		{Pattern: "devices/{id}/status", Kind: KindStatus},
		{Pattern: "devices/{id}/+"},
	}, 256, 1024)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := p.Parse("devices/d/status", []byte("offline")); err != nil || !m.Offline {
		t.Errorf("status: %+v, %v", m, err)
	}
	if m, err := p.Parse("devices/d/temp", []byte("1")); err != nil || m.Kind != KindTelemetry || m.Pattern != 1 {
		t.Errorf("telemetry: %+v, %v", m, err)
	}
	if got := p.Filters(); len(got) != 2 || got[0] != "devices/+/status" || got[1] != "devices/+/+" {
		t.Errorf("Filters() = %q", got)
	}
}

func TestNewParserErrors(t *testing.T) {
	check := func(name string, topics []Topic, want string) {
		t.Helper()
		_, err := NewParser(topics, 256, 1024)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want one mentioning %q", name, err, want)
		}
	}
	check("none", nil, "no topic patterns")
	check("duplicate", []Topic{{Pattern: "a/{id}"}, {Pattern: "a/{id}"}}, "listed twice")
	check("bad pattern", []Topic{{Pattern: "a/b"}}, "no {id}")
	check("bad kind", []Topic{{Pattern: "a/{id}", Kind: 7}}, "unknown kind")
	check("short timeout", []Topic{{Pattern: "a/{id}", Timeout: time.Millisecond}}, "outside")
	check("long timeout", []Topic{{Pattern: "a/{id}", Timeout: 8 * 24 * time.Hour}}, "outside")
}

func TestParseTopicSpec(t *testing.T) {
	cases := []struct {
		spec string
		want Topic
		err  string
	}{
		{"devices/{id}/telemetry", Topic{Pattern: "devices/{id}/telemetry"}, ""},
		{"slow/{id}/telemetry=10m", Topic{Pattern: "slow/{id}/telemetry", Timeout: 10 * time.Minute}, ""},
		{" fast/{id}/telemetry = 15 ", Topic{Pattern: "fast/{id}/telemetry", Timeout: 15 * time.Second}, ""},
		{"a=b/{id}=0", Topic{Pattern: "a=b/{id}"}, ""},
		{"a/{id}=soon", Topic{}, "want a duration"},
		{"a/{id}=1ms", Topic{}, "outside"},
		{"a/b=10s", Topic{}, "no {id}"},
	}
	for _, tc := range cases {
		t.Run(tc.spec, func(t *testing.T) {
			got, err := ParseTopicSpec(KindTelemetry, tc.spec)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one mentioning %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseTopicSpec(%q) = %+v, %v; want %+v", tc.spec, got, err, tc.want)
			}
		})
	}
	if st, err := ParseTopicSpec(KindStatus, "d/{id}/lwt=90"); err != nil || st.Kind != KindStatus || st.Timeout != 90*time.Second {
		t.Errorf("status spec: %+v, %v", st, err)
	}
}

func TestDropReason(t *testing.T) {
	for r := reasonNone + 1; r < numReasons; r++ {
		if got := DropReason(reasonInfo[r].err); got != r.String() {
			t.Errorf("DropReason(%v) = %q, want %q", reasonInfo[r].err, got, r.String())
		}
	}
	if got := DropReason(errors.New("other")); got != "" {
		t.Errorf("DropReason(other) = %q", got)
	}
	if got := DropReason(nil); got != "" {
		t.Errorf("DropReason(nil) = %q", got)
	}
}

func TestParseNoAllocs(t *testing.T) {
	p := testParser(t)
	payload := []byte(" offline ")
	allocs := testing.AllocsPerRun(1000, func() {
		_, _ = p.Parse("devices/sensor-000123/telemetry", payload)
		_, _ = p.Parse("devices/sensor-000123/status", payload)
		_, _ = p.Parse("devices/sensor 1/status", payload)
		_, _ = p.Parse("nothing/here", payload)
	})
	if allocs != 0 {
		t.Errorf("Parse allocates %v times per run, want 0", allocs)
	}
}

// splitMatch is the obvious strings.Split implementation of Pattern.Match:
// the reference in tests and fuzzing, and the baseline in BenchmarkParse.
func splitMatch(pattern, topic string) (id string, ok bool) {
	pl, tl := strings.Split(pattern, "/"), strings.Split(topic, "/")
	if (pl[0] == "+" || pl[0] == IDPlaceholder) && strings.HasPrefix(topic, "$") {
		return "", false
	}
	if pl[len(pl)-1] == "#" {
		pl = pl[:len(pl)-1]
		if len(tl) < len(pl) {
			return "", false
		}
	} else if len(tl) != len(pl) {
		return "", false
	}
	for i, p := range pl {
		switch p {
		case IDPlaceholder:
			id = tl[i]
		case "+":
		default:
			if p != tl[i] {
				return "", false
			}
		}
	}
	return id, true
}

// The topic flags: a kind's first value replaces its defaults (or the
// environment's), repeats add, per-pattern timeouts are read, and
// telemetry patterns stay before status ones.
func TestTopicFlags(t *testing.T) {
	check := func(args []string, env map[string]string, want ...string) {
		t.Helper()
		c := DefaultConfig()
		s := envflag.New("x")
		c.RegisterFlags(s)
		if err := s.Parse(args, func(k string) string { return env[k] }); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, tp := range c.Topics {
			got = append(got, tp.Kind.String()+":"+tp.Spec())
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%v %v: topics %v, want %v", args, env, got, want)
		}
	}
	check(nil, nil, "telemetry:devices/{id}/telemetry", "status:devices/{id}/status")
	check([]string{"-telemetry-topic", "sensors/fast/{id}=30s", "-telemetry-topic", "meters/{id}/data=10m,x/{id}"}, nil,
		"telemetry:sensors/fast/{id}=30s", "telemetry:meters/{id}/data=10m0s", "telemetry:x/{id}", "status:devices/{id}/status")
	check([]string{"-status-topic", "s/{id}"}, map[string]string{"PRESENCE_TELEMETRY_TOPICS": "t/{id}", "PRESENCE_STATUS_TOPICS": "e/{id}"},
		"telemetry:t/{id}", "status:s/{id}")
	c := DefaultConfig()
	s := envflag.New("x")
	c.RegisterFlags(s)
	if err := s.Parse([]string{"-telemetry-topic", "devices/{id}/{id}"}, func(string) string { return "" }); err == nil ||
		!strings.Contains(err.Error(), "-telemetry-topic") {
		t.Fatalf("bad pattern: %v", err)
	}
}

// A broker URL that does not parse is refused without quoting it: it may
// hold a password.
func TestBrokerURLErrorHidesPassword(t *testing.T) {
	c := DefaultConfig()
	c.BrokerURL = "tcp://user:hunter2@broker:port"
	err := c.Validate()
	if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "-mqtt-url") {
		t.Fatalf("Validate = %v", err)
	}
}

// A probe topic built from a pattern matches it, and the parser takes it
// for a probe, never for a device.
func TestProbeTopic(t *testing.T) {
	for _, pat := range []string{"devices/{id}/telemetry", "{id}/t", "a/+/{id}/#", "x/{id}"} {
		p, err := CompilePattern(pat)
		if err != nil {
			t.Fatal(err)
		}
		id := ProbePrefix + "abc_7"
		topic := p.Topic(id)
		if got, ok := p.Match(topic); !ok || got != id {
			t.Errorf("%s: Match(%q) = %q, %v", pat, topic, got, ok)
		}
		parser, err := NewParser([]Topic{{Pattern: pat, Kind: KindStatus}}, 256, 100)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := parser.Parse(topic, []byte("not a status")); !errors.Is(err, ErrProbe) {
			t.Errorf("%s: Parse(%q) = %v, want ErrProbe", pat, topic, err)
		}
		if DropReason(ErrProbe) != "" {
			t.Error("a probe is not a drop")
		}
	}
}

// With overlapping patterns a probe built from the second is matched by the
// first as well: it is still a probe, never the device "x" (the probe
// level is found before any pattern is tried).
func TestProbeOverlappingPatterns(t *testing.T) {
	parser, err := NewParser([]Topic{{Pattern: "a/+/{id}"}, {Pattern: "a/{id}/x"}}, 256, 100)
	if err != nil {
		t.Fatal(err)
	}
	second, _ := CompilePattern("a/{id}/x")
	topic := second.Topic(ProbePrefix + "n_1")
	if _, err := parser.Parse(topic, nil); !errors.Is(err, ErrProbe) {
		t.Fatalf("Parse(%q) = %v, want ErrProbe", topic, err)
	}
	for _, tc := range []struct {
		topic string
		level string
	}{
		{"devices/" + ProbePrefix + "a_2/telemetry", ProbePrefix + "a_2"},
		{ProbePrefix + "b/x", ProbePrefix + "b"},
		{"x" + ProbePrefix + "c/" + ProbePrefix + "d", ProbePrefix + "d"},
	} {
		if got, ok := probeLevel(tc.topic); !ok || got != tc.level {
			t.Errorf("probeLevel(%q) = %q, %v; want %q", tc.topic, got, ok, tc.level)
		}
	}
	if _, ok := probeLevel("devices/x" + ProbePrefix + "/t"); ok {
		t.Error("a level that only contains the prefix is not a probe")
	}
}
