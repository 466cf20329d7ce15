package api

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/presence-dev/presence/engine"
)

// causeSink records the cause of each transition, by device.
type causeSink struct{ got []string }

func (c *causeSink) HandleTransitions(b []engine.Transition) {
	for _, t := range b {
		c.got = append(c.got, fmt.Sprintf("%s %s %s", t.ID, t.To, t.Cause))
	}
}

// POST /v1/devices/{id}/status acts as a status message with cause api:
// online makes a device known, offline needs a known one; the answer is
// the device as GET shows it.
func TestSetStatus(t *testing.T) {
	sink := &causeSink{}
	ecfg := engine.DefaultConfig()
	ecfg.Sink = sink
	eng, err := engine.New(ecfg)
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, func(c *Config) { c.Writer = engineWriter{eng} })
	f.srv, err = New(f.srv.cfg, eng) // the API over this engine
	if err != nil {
		t.Fatal(err)
	}
	w := f.do("POST", "/v1/devices/n1/status", `{"status":"offline"}`)
	checkJSONError(t, w, 404, `device "n1" not found`)
	for _, want := range []string{"online", "offline", "online"} {
		w = f.do("POST", "/v1/devices/n1/status", `{"status":"`+want+`"}`)
		var d Device
		decodeStrict(t, w.Body.Bytes(), &d)
		if w.Code != 200 || d.ID != "n1" || d.Status != want {
			t.Fatalf("%s: %d %s", want, w.Code, w.Body)
		}
	}
	eng.Deliver()
	if got := strings.Join(sink.got, ", "); got != "n1 online api, n1 offline api, n1 online api" {
		t.Fatalf("transitions: %s", got)
	}
	for body, want := range map[string]string{
		``:                               "want {",
		`{}`:                             `missing field "status"`,
		`{"status":"gone"}`:              `want "online" or "offline"`,
		`{"status":1}`:                   `want "online" or "offline"`,
		`{"status":"online","at":"x"}`:   `unknown field "at"`,
		`[{"status":"online"}]`:          "want {",
		`{"status":"online"}x`:           "want {",
		strings.Repeat(" ", 2000) + `{}`: "body too large",
	} {
		code := 400
		if strings.Contains(want, "too large") {
			code = 413
		}
		checkJSONError(t, f.do("POST", "/v1/devices/n1/status", body), code, want)
	}
	checkJSONError(t, f.do("POST", "/v1/devices/a+b/status", `{"status":"online"}`), 400, "invalid device id")
	if d, _ := eng.Device("n1"); d.Status != engine.StatusOnline {
		t.Fatalf("refused requests changed n1: %+v", d)
	}
	if m := f.metrics(); !strings.Contains(m, `presence_api_requests_rejected_total{reason="invalid_body"} 7`) {
		t.Errorf("invalid bodies not counted:\n%s", grep(m, "rejected"))
	}
}

// A status for a device another node owns is forwarded: 202.
func TestSetStatusForwarded(t *testing.T) {
	var sent []string
	f := newFixture(t, func(c *Config) {
		c.Writer = writerFunc(func(id string, s engine.Status, _ time.Time, c engine.Cause) (bool, error) {
			sent = append(sent, id+" "+s.String()+" "+c.String())
			return true, nil
		})
	})
	w := f.do("POST", "/v1/devices/far/status", `{"status":"offline"}`)
	var got StatusForwarded
	decodeStrict(t, w.Body.Bytes(), &got)
	if w.Code != 202 || got != (StatusForwarded{ID: "far", Status: "offline", Forwarded: true}) || fmt.Sprint(sent) != "[far offline api]" {
		t.Fatalf("%d %s, sent %v", w.Code, w.Body, sent)
	}
}

// Writes need the token; beyond loopback without one they are refused
// (403), while reads are served.
func TestWritesNeedTokenOrLoopback(t *testing.T) {
	eng, _ := engine.New(engine.DefaultConfig())
	f := newFixture(t, func(c *Config) { c.Writer = engineWriter{eng}; c.Token = "s3cret-token" })
	checkJSONError(t, f.do("POST", "/v1/devices/x/status", `{"status":"online"}`), 401, "bearer token")
	if w := f.do("POST", "/v1/devices/x/status", `{"status":"online"}`, "Authorization", "Bearer s3cret-token"); w.Code != 200 && w.Code != 202 {
		t.Fatalf("with the token: %d %s", w.Code, w.Body)
	}
	open := newFixture(t, func(c *Config) { c.Writer = engineWriter{eng}; c.Addr = "0.0.0.0:0" })
	if open.srv.WritesAllowed() {
		t.Fatal("writes allowed beyond loopback without a token")
	}
	checkJSONError(t, open.do("POST", "/v1/devices/y/status", `{"status":"online"}`), 403, "-api-token")
	if _, err := eng.Device("y"); err == nil {
		t.Fatal("a refused write changed the engine")
	}
	if w := open.do("GET", "/v1/stats", ""); w.Code != 200 {
		t.Fatalf("reads on the open listener: %d", w.Code)
	}
	if m := open.metrics(); !strings.Contains(m, `presence_api_requests_rejected_total{reason="writes_refused"} 1`) {
		t.Errorf("refused write not counted:\n%s", grep(m, "rejected"))
	}
}

type writerFunc func(string, engine.Status, time.Time, engine.Cause) (bool, error)

func (f writerFunc) SetStatus(id string, s engine.Status, at time.Time, c engine.Cause) (bool, error) {
	return f(id, s, at, c)
}

// engineWriter is a Writer applying to an engine (never forwarded).
type engineWriter struct{ e *engine.Engine }

func (w engineWriter) SetStatus(id string, s engine.Status, at time.Time, c engine.Cause) (bool, error) {
	return false, w.e.SetStatus(id, s, at, c)
}

// A write without Content-Type: application/json (a cross-site form or
// text/plain request) is refused with 415; without a token, one for a
// Host or Origin that is not loopback (DNS rebinding) with 403; a Writer
// that cannot take writes now makes it 503.
func TestWritesGuardedAgainstBrowsers(t *testing.T) {
	f := newFixture(t, nil)
	cfg := f.srv.cfg
	cfg.Writer = engineWriter{f.eng}
	var err error
	if f.srv, err = New(cfg, f.eng); err != nil {
		t.Fatal(err)
	}
	body := `{"status":"online"}`
	for _, c := range []struct {
		hdr  []string
		code int
	}{
		{[]string{"Content-Type", "text/plain"}, 415},
		{[]string{"Content-Type", ""}, 415},
		{[]string{"Content-Type", "application/json; charset=utf-8"}, 200},
		{[]string{"Content-Type", "application/json", "Host", "evil.example:8080"}, 403},
		{[]string{"Content-Type", "application/json", "Origin", "http://evil.example"}, 403},
		{[]string{"Content-Type", "application/json", "Origin", "http://localhost:8080", "Host", "localhost:8080"}, 200},
		{[]string{"Content-Type", "application/json", "Host", "[::1]:8080"}, 200},
	} {
		if w := f.do("POST", "/v1/devices/b1/status", body, c.hdr...); w.Code != c.code {
			t.Errorf("%v: %d %s, want %d", c.hdr, w.Code, w.Body, c.code)
		}
	}
	busy := newFixture(t, func(c *Config) {
		c.Writer = writerFunc(func(string, engine.Status, time.Time, engine.Cause) (bool, error) {
			return false, fmt.Errorf("%w: ingest: closed", ErrUnavailable)
		})
	})
	w := busy.do("POST", "/v1/devices/b1/status", body)
	checkJSONError(t, w, 503, "closed")
	if w.Header().Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
}

// FuzzStatusBody: decodeStatus never panics and accepts exactly the
// bodies whose only field is "status", online or offline.
func FuzzStatusBody(f *testing.F) {
	for _, s := range []string{`{"status":"online"}`, `{"status":"offline"}`, `{}`, `{"status":"x"}`, `{"Status":"online"}`, `null`, `{"status":"online","status":"gone"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var req StatusRequest
		err := decodeStatus(body, &req)
		var raw map[string]any
		ok := json.Unmarshal(body, &raw) == nil && len(raw) == 1
		if ok {
			s, isStr := raw["status"].(string)
			ok = isStr && (s == "online" || s == "offline")
		}
		if (err == nil) != ok {
			t.Fatalf("%q: decodeStatus %v, reference accepts %v", body, err, ok)
		}
	})
}
