package events

import (
	"encoding/json"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/presence-dev/presence/engine"
)

func TestEventJSON(t *testing.T) {
	at := t0.UnixMicro()
	inc := &incident{id: "1765708245123-1", started: at, window: 30 * time.Second, count: 120, fleet: 1200, share: 0.1}
	tests := []struct {
		name string
		r    rec
		want string
	}{
		{"status", statusRec(&engine.Transition{ID: "dev-1", From: engine.StatusOnline, To: engine.StatusOffline, At: t0, Cause: engine.CauseTimeout}),
			`{"type":"status","id":"dev-1","status":"offline","previous":"online","at":"2025-12-14T10:30:45.123456+00:00","cause":"timeout"}`},
		{"first message, coalesced", statusRec(&engine.Transition{ID: `q"\`, To: engine.StatusOnline, At: t0, Cause: engine.CauseTelemetry, Coalesced: true}),
			`{"type":"status","id":"q\"\\","status":"online","previous":"unknown","at":"2025-12-14T10:30:45.123456+00:00","cause":"telemetry","coalesced":true}`},
		{"removed", statusRec(&engine.Transition{ID: "dev-1", From: engine.StatusOffline, To: engine.StatusUnknown, At: t0, Cause: engine.CauseAPI}),
			`{"type":"removed","id":"dev-1","previous":"offline","at":"2025-12-14T10:30:45.123456+00:00","cause":"api"}`},
		{"flapping", rec{typ: TypeFlapping, id: "dev-1", status: engine.StatusOnline, at: at + 3e7, since: at},
			`{"type":"flapping","id":"dev-1","status":"online","at":"2025-12-14T10:31:15.123456+00:00","since":"2025-12-14T10:30:45.123456+00:00"}`},
		{"flapping_stopped", rec{typ: TypeFlappingStopped, id: "dev-1", status: engine.StatusOffline, at: at + 3e8, since: at},
			`{"type":"flapping_stopped","id":"dev-1","status":"offline","at":"2025-12-14T10:35:45.123456+00:00","since":"2025-12-14T10:30:45.123456+00:00","duration_seconds":300}`},
		{"offline_alert", rec{typ: TypeOfflineAlert, id: "dev-1", at: at + 9e8, since: at, cause: engine.CauseLastWill},
			`{"type":"offline_alert","id":"dev-1","status":"offline","at":"2025-12-14T10:45:45.123456+00:00","cause":"last_will","since":"2025-12-14T10:30:45.123456+00:00","offline_seconds":900}`},
		{"mass_offline", rec{typ: TypeMassOffline, at: at, inc: inc},
			`{"type":"mass_offline","incident":"1765708245123-1","at":"2025-12-14T10:30:45.123456+00:00","count":120,"fleet":1200,"share":0.1,"window_seconds":30}`},
		{"mass_offline_recovered", rec{typ: TypeMassOfflineRecovered, at: at + 125e6, inc: &incident{id: inc.id, started: at, count: 1000, fleet: 1200, share: 0.8, recovered: 800, stillOffline: 200}},
			`{"type":"mass_offline_recovered","incident":"1765708245123-1","at":"2025-12-14T10:32:50.123456+00:00","started":"2025-12-14T10:30:45.123456+00:00","count":1000,"recovered":800,"still_offline":200,"fleet":1200,"share":0.8,"duration_seconds":125}`},
	}
	var enc encoder
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := string(enc.appendJSON(nil, &tt.r))
			if got != tt.want {
				t.Fatalf("got  %s\nwant %s", got, tt.want)
			}
			if !json.Valid([]byte(got)) {
				t.Fatal("invalid JSON")
			}
			e := decode(t, []byte(got))
			if e.Type != tt.r.typ.String() || !e.At.Equal(time.UnixMicro(tt.r.at)) {
				t.Fatalf("decoded %+v", e)
			}
			// The stream entry has the same fields with the same values.
			fs, _ := tt.r.fields(nil, nil)
			var m map[string]any
			_ = json.Unmarshal([]byte(got), &m)
			if len(fs) != len(m) {
				t.Fatalf("%d stream fields, %d JSON fields", len(fs), len(m))
			}
			for _, f := range fs {
				if _, ok := m[f.key]; !ok {
					t.Fatalf("stream field %s not in JSON", f.key)
				}
			}
		})
	}
}

func TestParseFilter(t *testing.T) {
	check := func(q string, match []rec, nomatch []rec) {
		t.Helper()
		v, _ := url.ParseQuery(q)
		f, err := parseFilter(v, 10)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		for _, r := range match {
			if !f.match(&r) {
				t.Errorf("%s: %+v should match", q, r)
			}
		}
		for _, r := range nomatch {
			if f.match(&r) {
				t.Errorf("%s: %+v should not match", q, r)
			}
		}
	}
	on := func(id string) rec { return rec{typ: TypeStatus, id: id, status: engine.StatusOnline} }
	off := func(id string) rec { return rec{typ: TypeStatus, id: id, status: engine.StatusOffline} }
	alert := func(id string) rec { return rec{typ: TypeOfflineAlert, id: id} }
	mass := rec{typ: TypeMassOffline, inc: &incident{}}
	check("", []rec{on("a"), off("b"), alert("c"), mass}, nil)
	check("id=a,b", []rec{on("a"), off("b"), alert("a")}, []rec{on("c"), mass})
	check("id=a&id=b", []rec{on("a"), on("b")}, []rec{on("c")})
	check("status=offline", []rec{off("a"), alert("a")}, []rec{on("a"), mass})
	check("status=online,offline", []rec{on("a"), off("a")}, []rec{mass})
	check("type=status", []rec{on("a")}, []rec{alert("a"), mass})
	check("type=mass_offline,offline_alert&status=offline", []rec{alert("a")}, []rec{off("a"), mass})
}

// FuzzParseFilter: client input never panics, and an accepted filter only
// holds valid ids and known statuses and types.
func FuzzParseFilter(f *testing.F) {
	for _, s := range []string{"", "id=a,b", "status=offline", "type=status&id=x", "id=%2F", "x=1", "id=,,", "status=online,offline,"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		v, err := url.ParseQuery(q)
		if err != nil {
			return
		}
		fl, err := parseFilter(v, 100)
		if err != nil {
			if strings.TrimSpace(err.Error()) == "" {
				t.Fatal("empty error")
			}
			return
		}
		for id := range fl.ids {
			if !engine.ValidID(id) {
				t.Fatalf("accepted invalid id %q", id)
			}
		}
		if len(fl.ids) > 100 {
			t.Fatal("too many ids")
		}
		if fl.statuses&^(1<<engine.StatusOnline|1<<engine.StatusOffline) != 0 {
			t.Fatalf("statuses %b", fl.statuses)
		}
		for _, r := range []rec{{typ: TypeStatus, id: "a"}, {typ: TypeMassOffline, inc: &incident{}}} {
			fl.match(&r) // must not panic
		}
	})
}

func TestConfigValidate(t *testing.T) {
	ok := DefaultConfig()
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	tests := map[string]func(*Config){
		"empty channel":   func(c *Config) { c.PubSub.Channel = "" },
		"zero queue":      func(c *Config) { c.Stream.Delivery.QueueCapacity = 0 },
		"negative maxlen": func(c *Config) { c.Stream.MaxLen = -1 },
		"mqtt no broker":  func(c *Config) { c.MQTT.Enabled = true },
		"mqtt topic":      func(c *Config) { c.MQTT.Enabled, c.MQTT.BrokerURL, c.MQTT.Topic = true, "tcp://x:1", "devices/+/p" },
		"webhook url":     func(c *Config) { c.Webhooks = []WebhookConfig{DefaultWebhookConfig("ftp://x", "")} },
		"webhook dup names": func(c *Config) {
			w := DefaultWebhookConfig("http://x", "")
			w.Name = "a"
			c.Webhooks = []WebhookConfig{w, w}
		},
		"webhook reserved": func(c *Config) {
			w := DefaultWebhookConfig("http://x", "")
			w.Name = "stream"
			c.Webhooks = []WebhookConfig{w}
		},
		"sse buffer":     func(c *Config) { c.SSE.ClientBuffer = 0 },
		"share":          func(c *Config) { c.Alerts.Mass.Share = 1.5 },
		"no trigger":     func(c *Config) { c.Alerts.Mass.Count, c.Alerts.Mass.Share = 0, 0 },
		"recover share":  func(c *Config) { c.Alerts.Mass.RecoverShare = 0 },
		"check interval": func(c *Config) { c.Alerts.CheckInterval = 0 },
	}
	for name, mod := range tests {
		t.Run(name, func(t *testing.T) {
			c := DefaultConfig()
			mod(&c)
			if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("Validate = %v, want ErrInvalidConfig", err)
			}
		})
	}
	if _, err := New(DefaultConfig(), Deps{}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("New without Redis: %v", err)
	}
}
