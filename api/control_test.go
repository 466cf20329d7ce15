package api

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/presence-dev/presence/engine"
)

func controlFixture(t testing.TB) *fixture {
	t.Helper()
	f := newFixture(t, nil)
	var err error
	cfg := f.srv.cfg
	cfg.Controller = EngineController(f.eng)
	if f.srv, err = New(cfg, f.eng); err != nil {
		t.Fatal(err)
	}
	return f
}

// PUT sets a device's own timeout, DELETE returns it to the default; each
// answers the device as GET does, source included.
func TestTimeoutRoutes(t *testing.T) {
	f := controlFixture(t)
	f.touch("t1", t0)
	device := func(method, body string, wantSec float64, wantSource string) {
		t.Helper()
		w := f.do(method, "/v1/devices/t1/timeout", body)
		var d Device
		decodeStrict(t, w.Body.Bytes(), &d)
		if w.Code != 200 || d.TimeoutSeconds != wantSec || d.TimeoutSource != wantSource {
			t.Fatalf("%s %s: %d %s", method, body, w.Code, w.Body)
		}
		w = f.do("GET", "/v1/devices/t1", "")
		decodeStrict(t, w.Body.Bytes(), &d)
		if d.TimeoutSeconds != wantSec || d.TimeoutSource != wantSource {
			t.Fatalf("GET after %s: %s", method, w.Body)
		}
	}
	device("PUT", `{"timeout_seconds":600}`, 600, "device")
	device("PUT", `{"timeout_seconds":604800}`, 604800, "device")
	device("DELETE", ``, 60, "default")
	device("DELETE", ``, 60, "default") // idempotent
	checkJSONError(t, f.do("PUT", "/v1/devices/nobody/timeout", `{"timeout_seconds":600}`), 404, `device "nobody" not found`)
	checkJSONError(t, f.do("DELETE", "/v1/devices/nobody/timeout", ``), 404, `device "nobody" not found`)
	checkJSONError(t, f.do("PUT", "/v1/devices/a+b/timeout", `{"timeout_seconds":600}`), 400, "invalid device id")
	for body, want := range map[string]string{
		``:                                       "want {",
		`{}`:                                     `missing field "timeout_seconds"`,
		`{"timeout_seconds":0}`:                  "whole number of seconds from 1 to 604800",
		`{"timeout_seconds":0.5}`:                "whole number of seconds",
		`{"timeout_seconds":1.5}`:                "whole number of seconds",
		`{"timeout_seconds":604801}`:             "whole number of seconds",
		`{"timeout_seconds":-60}`:                "whole number of seconds",
		`{"timeout_seconds":"60"}`:               "whole number of seconds",
		`{"timeout_seconds":null}`:               "whole number of seconds",
		`{"timeout_seconds":60,"id":"t1"}`:       `unknown field "id"`,
		`{"Timeout_Seconds":60}`:                 `unknown field "Timeout_Seconds"`,
		`{"timeout_seconds":60}x`:                "want {",
		`[60]`:                                   "want {",
		strings.Repeat(" ", 2000) + `{"a":1}`:    "body too large",
		`{"timeout_seconds":1e400}`:              "whole number of seconds",
		`{"timeout_seconds":60,"timeout_sec":1}`: `unknown field "timeout_sec"`,
	} {
		code := 400
		if strings.Contains(want, "too large") {
			code = 413
		}
		checkJSONError(t, f.do("PUT", "/v1/devices/t1/timeout", body), code, want)
	}
	if d, _ := f.eng.Device("t1"); d.TimeoutSource != engine.TimeoutDefault {
		t.Fatalf("refused requests changed t1: %+v", d)
	}
	m := f.metrics()
	for _, want := range []string{
		`presence_api_controls_total{control="set_timeout",result="applied"} 2`,
		`presence_api_controls_total{control="clear_timeout",result="applied"} 2`,
		`presence_api_controls_total{control="set_timeout",result="not_found"} 1`,
		`presence_api_requests_rejected_total{reason="invalid_body"} 15`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s:\n%s", want, grep(m, "controls_total"))
		}
	}
}

// DELETE /v1/devices/{id} forgets a device: GET no longer finds it, a
// second DELETE is 404, and its next message brings it back.
func TestDecommissionRoute(t *testing.T) {
	f := controlFixture(t)
	f.touch("d1", t0)
	w := f.do("DELETE", "/v1/devices/d1", "")
	var res Decommissioned
	decodeStrict(t, w.Body.Bytes(), &res)
	if w.Code != 200 || res.ID != "d1" || !res.Removed {
		t.Fatalf("DELETE: %d %s", w.Code, w.Body)
	}
	checkJSONError(t, f.do("GET", "/v1/devices/d1", ""), 404, `device "d1" not found`)
	checkJSONError(t, f.do("DELETE", "/v1/devices/d1", ""), 404, `device "d1" not found`)
	checkJSONError(t, f.do("DELETE", "/v1/devices/a+b", ""), 400, "invalid device id")
	f.touch("d1", t0.Add(time.Second))
	if w := f.do("GET", "/v1/devices/d1", ""); w.Code != 200 {
		t.Fatalf("back: %d %s", w.Code, w.Body)
	}
}

// The batch forms apply what they can and list the rest with a reason;
// a malformed body is refused whole.
func TestBatchControls(t *testing.T) {
	f := controlFixture(t)
	for _, id := range []string{"b1", "b2", "b3"} {
		f.touch(id, t0)
	}
	w := f.do("POST", "/v1/devices:batchSetTimeout", `{"timeouts":[{"id":"b1","timeout_seconds":300},`+
		`{"id":"b2","timeout_seconds":300},{"id":"b2","timeout_seconds":null},{"id":"nobody","timeout_seconds":300},`+
		`{"id":"a+b","timeout_seconds":300},{"id":"b3","timeout_seconds":0.25}]}`)
	var res ControlBatchResult
	decodeStrict(t, w.Body.Bytes(), &res)
	want := []ControlReject{{"nobody", "not_found"}, {"a+b", "invalid_id"}, {"b3", "invalid_timeout"}}
	if w.Code != 200 || res.Accepted != 3 || res.Forwarded != 0 || !slices.Equal(res.Rejected, want) {
		t.Fatalf("batchSetTimeout: %d %s", w.Code, w.Body)
	}
	for id, src := range map[string]engine.TimeoutSource{"b1": engine.TimeoutDevice, "b2": engine.TimeoutDefault, "b3": engine.TimeoutDefault} {
		if d, _ := f.eng.Device(id); d.TimeoutSource != src {
			t.Errorf("%s: %+v, want source %v", id, d, src)
		}
	}
	w = f.do("POST", "/v1/devices:batchDecommission", `{"ids":["b1","b2","nobody","a+b"]}`)
	res = ControlBatchResult{}
	decodeStrict(t, w.Body.Bytes(), &res)
	if w.Code != 200 || res.Accepted != 2 || !slices.Equal(res.Rejected, []ControlReject{{"nobody", "not_found"}, {"a+b", "invalid_id"}}) {
		t.Fatalf("batchDecommission: %d %s", w.Code, w.Body)
	}
	if c := f.eng.Counts(); c.Total != 1 {
		t.Fatalf("counts %+v after decommissioning 2 of 3", c)
	}
	for path, bodies := range map[string]map[string]string{
		"/v1/devices:batchSetTimeout": {
			`{}`:                               `must be an array`,
			`{"timeouts":[{"id":"b3"}]}`:       `without "timeout_seconds"`,
			`{"timeouts":[{"id":"b3","x":1}]}`: `unknown field "x"`,
			`{"timeouts":[{"id":3,"timeout_seconds":1}]}`: "want a string",
			`{"timeouts":["b3"]}`:                         "each timeout is",
			`{"timeouts":[],"ids":[]}`:                    `unknown field "ids"`,
		},
		"/v1/devices:batchDecommission": {
			`{"ids":"b3"}`:    `must be an array`,
			`{"ids":[3]}`:     "want a string",
			`{"IDs":["b3"]}`:  `unknown field "IDs"`,
			`{"ids":["b3"]}x`: "want {",
		},
	} {
		for body, want := range bodies {
			checkJSONError(t, f.do("POST", path, body), 400, want)
		}
	}
	many := `{"ids":[` + strings.Repeat(`"x",`, DefaultMaxBatchIDs) + `"x"]}`
	checkJSONError(t, f.do("POST", "/v1/devices:batchDecommission", many), 413, "split the batch")
	if c := f.eng.Counts(); c.Total != 1 {
		t.Fatalf("refused batches changed the fleet: %+v", c)
	}
}

// fakeController answers as a cluster node that owns nothing, or as one
// that cannot take writes now.
type fakeController struct{ err error }

func (c fakeController) SetTimeout(string, time.Duration) (bool, error) { return c.err == nil, c.err }
func (c fakeController) Decommission(string, time.Time) (bool, error)   { return c.err == nil, c.err }

// Forwarded controls answer 202; a Controller that cannot take writes now
// makes them 503 with Retry-After.
func TestControlsForwardedAndUnavailable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code int
	}{{nil, 202}, {ErrUnavailable, 503}} {
		f := newFixture(t, func(c *Config) { c.Controller = fakeController{tc.err} })
		for _, req := range [][2]string{
			{"PUT", `{"timeout_seconds":60}`}, {"DELETE", ""},
		} {
			w := f.do(req[0], "/v1/devices/x1/timeout", req[1])
			if w.Code != tc.code {
				t.Fatalf("%s timeout with %v: %d %s", req[0], tc.err, w.Code, w.Body)
			}
		}
		w := f.do("DELETE", "/v1/devices/x1", "")
		if w.Code != tc.code {
			t.Fatalf("DELETE with %v: %d %s", tc.err, w.Code, w.Body)
		}
		if tc.code == 202 {
			var fw ControlForwarded
			decodeStrict(t, w.Body.Bytes(), &fw)
			if fw.ID != "x1" || !fw.Forwarded {
				t.Fatalf("forwarded: %s", w.Body)
			}
		} else if w.Header().Get("Retry-After") == "" {
			t.Fatal("503 without Retry-After")
		}
		w = f.do("POST", "/v1/devices:batchDecommission", `{"ids":["x1","x2"]}`)
		var res ControlBatchResult
		if tc.code == 202 {
			decodeStrict(t, w.Body.Bytes(), &res)
			if w.Code != 200 || res.Accepted != 2 || res.Forwarded != 2 {
				t.Fatalf("batch forwarded: %d %s", w.Code, w.Body)
			}
		} else {
			checkJSONError(t, w, 503, "item 1 of 2 (the 0 before it were taken, none after)")
		}
	}
}

// A control held for a rebuild (ErrHeld) answers 202 without forwarded,
// and counts as accepted in a batch.
func TestControlsHeld(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.Controller = fakeController{ErrHeld} })
	w := f.do("DELETE", "/v1/devices/h1", "")
	var fw ControlForwarded
	decodeStrict(t, w.Body.Bytes(), &fw)
	if w.Code != 202 || fw.ID != "h1" || fw.Forwarded {
		t.Fatalf("held: %d %s", w.Code, w.Body)
	}
	w = f.do("POST", "/v1/devices:batchSetTimeout", `{"timeouts":[{"id":"h1","timeout_seconds":60}]}`)
	var res ControlBatchResult
	decodeStrict(t, w.Body.Bytes(), &res)
	if w.Code != 200 || res.Accepted != 1 || res.Forwarded != 0 {
		t.Fatalf("held batch: %d %s", w.Code, w.Body)
	}
}

// A DELETE needs no Content-Type (it has no body, and a browser must ask
// the CORS preflight for it), a PUT does; both are writes, refused on an
// open listener without a token.
func TestControlsAreWrites(t *testing.T) {
	f := controlFixture(t)
	f.touch("w1", t0)
	checkJSONError(t, f.do("PUT", "/v1/devices/w1/timeout", `{"timeout_seconds":60}`, "Content-Type", "text/plain"), 415, "Content-Type: application/json")
	checkJSONError(t, f.do("DELETE", "/v1/devices/w1", "", "Host", "evil.example"), 403, "loopback Host")
	open := newFixture(t, func(c *Config) { c.Addr = "0.0.0.0:0"; c.Controller = EngineController(nil) })
	checkJSONError(t, open.do("DELETE", "/v1/devices/w1", ""), 403, "writes are refused")
	if _, err := f.eng.Device("w1"); err != nil {
		t.Fatalf("refused writes changed w1: %v", err)
	}
}

// FuzzControlBodies: any body of any control is answered with JSON, never a
// panic, and what is refused changes nothing.
func FuzzControlBodies(f *testing.F) {
	for _, s := range []string{
		`{"timeout_seconds":60}`, `{"timeout_seconds":null}`, `{"timeout_seconds":1e308}`, `{}`, ``, `null`,
		`{"timeouts":[{"id":"1","timeout_seconds":60},{"id":"2","timeout_seconds":null}]}`,
		`{"timeouts":[{"id":"1"}]}`, `{"timeouts":null}`, `{"ids":["1","2","bad id"]}`, `{"ids":[null]}`,
		`{"timeout_seconds":6e1}`, `{"timeout_seconds":60.0000000001}`, "{\"ids\":[\"\xff\"]}",
	} {
		for route := range 3 {
			f.Add(uint8(route), []byte(s))
		}
	}
	fx := controlFixture(f)
	for _, id := range fuzzKnown {
		fx.touch(id, t0)
	}
	routes := [][2]string{{"PUT", "/v1/devices/1/timeout"}, {"POST", "/v1/devices:batchSetTimeout"}, {"POST", "/v1/devices:batchDecommission"}}
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		rt := routes[int(route)%len(routes)]
		req := httptest.NewRequest(rt[0], rt[1], bytes.NewReader(body))
		req.Host = "127.0.0.1:8080"
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		before := fx.eng.Counts()
		fx.srv.Handler().ServeHTTP(w, req)
		if !json.Valid(w.Body.Bytes()) {
			t.Fatalf("status %d, invalid JSON body %q", w.Code, w.Body)
		}
		if w.Code != 200 && fx.eng.Counts() != before {
			t.Fatalf("refused (%d) but the fleet changed", w.Code)
		}
		if w.Code == 200 && rt[1] == "/v1/devices:batchDecommission" {
			for _, id := range fuzzKnown { // bring them back for the next input
				if err := fx.eng.Touch(id, t0); err != nil {
					t.Fatal(err)
				}
			}
		}
		if w.Code >= 500 {
			t.Fatalf("status %d: %s", w.Code, w.Body)
		}
		var e struct{ Error string }
		if w.Code >= 400 && (json.Unmarshal(w.Body.Bytes(), &e) != nil || e.Error == "") {
			t.Fatalf("error %d without an error message: %s", w.Code, w.Body)
		}
	})
}

// FuzzControlIDs: any id in a control's path is answered with JSON, 400
// for an invalid one, never a panic or a 5xx.
func FuzzControlIDs(f *testing.F) {
	for _, s := range []string{"1", "nobody", "", " ", "a/b", "a+b", "#", "?x", "%", "é", "\x00", `q"\`,
		strings.Repeat("x", 128), strings.Repeat("x", 129)} {
		f.Add(s, uint8(0))
	}
	fx := controlFixture(f)
	for _, id := range fuzzKnown {
		fx.touch(id, t0)
	}
	routes := [][3]string{{"PUT", "/timeout", `{"timeout_seconds":60}`}, {"DELETE", "/timeout", ""}, {"DELETE", "", ""}}
	f.Fuzz(func(t *testing.T, id string, route uint8) {
		rt := routes[int(route)%len(routes)]
		req := httptest.NewRequest(rt[0], "/v1/devices/"+url.PathEscape(id)+rt[1], strings.NewReader(rt[2]))
		req.Host = "127.0.0.1:8080"
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		fx.srv.Handler().ServeHTTP(w, req)
		if (id == "" || id == "." || id == "..") && w.Code >= 300 && w.Code <= 308 {
			return // the mux cleans such paths and redirects (FuzzDeviceID)
		}
		if w.Code >= 500 || !json.Valid(w.Body.Bytes()) {
			t.Fatalf("%s %q: %d %q", rt[0], id, w.Code, w.Body)
		}
		if engine.ValidID(id) && id != "." && id != ".." && w.Code == 400 {
			t.Fatalf("valid id %q refused: %s", id, w.Body)
		}
		if !engine.ValidID(id) && w.Code < 400 {
			t.Fatalf("invalid id %q taken: %d %s", id, w.Code, w.Body)
		}
		if w.Code == 200 && rt[1] == "" { // decommissioned: bring it back
			if err := fx.eng.Touch(id, t0); err != nil {
				t.Fatal(err)
			}
		}
	})
}
