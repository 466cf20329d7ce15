package api

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/presence-dev/presence/engine"
)

// contractTime is the Redis contract's last-seen format, exactly.
var contractTime = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$`)

// checkTime asserts s is in the contract format and equals want to the
// microsecond.
func checkTime(t *testing.T, field, s string, want time.Time) {
	t.Helper()
	if !contractTime.MatchString(s) {
		t.Fatalf("%s %q is not in the contract format 2025-12-14T10:30:45.123456+00:00", field, s)
	}
	got, err := time.Parse(TimeLayout, s)
	if err != nil {
		t.Fatalf("%s %q: %v", field, s, err)
	}
	if _, off := got.Zone(); off != 0 {
		t.Errorf("%s %q: offset %d, want UTC", field, s, off)
	}
	if w := want.Truncate(time.Microsecond); !got.Equal(w) {
		t.Errorf("%s = %v, want %v", field, got, w)
	}
}

func TestDevice(t *testing.T) {
	f := newFixture(t, nil)
	f.touch("123", t0)
	f.touch("sensor-\"q\\", t0)
	f.eng.TouchBatch([]engine.Touch{{ID: "fast", At: t0, Timeout: 5 * time.Second}})
	f.advance(10 * time.Second) // fast goes offline at t0+5s
	f.touch("123", t0.Add(7*time.Second))

	t.Run("exact body", func(t *testing.T) {
		w := f.do("GET", "/v1/devices/123", "")
		want := `{"id":"123","status":"online","last_seen":"2025-12-14T10:30:52.123456+00:00",` +
			`"since":"2025-12-14T10:30:45.123456+00:00","timeout_seconds":60,"timeout_source":"default"}` + "\n"
		if w.Code != 200 || w.Body.String() != want {
			t.Fatalf("got %d %s\nwant %s", w.Code, w.Body, want)
		}
		for k, v := range map[string]string{
			"Content-Type": "application/json", "Cache-Control": "no-store",
		} {
			if got := w.Header().Get(k); got != v {
				t.Errorf("%s = %q, want %q", k, got, v)
			}
		}
	})

	for _, tc := range []struct {
		name, path string
		id, status string
		lastSeen   time.Time
		since      time.Time
		timeout    float64
	}{
		{"online", "/v1/devices/123", "123", "online", t0.Add(7 * time.Second), t0, 60},
		{"offline by timeout", "/v1/devices/fast", "fast", "offline", t0, t0.Add(5 * time.Second), 5},
		{"escaped", "/v1/devices/sensor-%22q%5C", "sensor-\"q\\", "online", t0, t0, 60},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := f.do("GET", tc.path, "")
			if w.Code != 200 {
				t.Fatalf("status %d: %s", w.Code, w.Body)
			}
			var d Device
			decodeStrict(t, w.Body.Bytes(), &d)
			if d.ID != tc.id || d.Status != tc.status || d.TimeoutSeconds != tc.timeout {
				t.Errorf("got %+v", d)
			}
			checkTime(t, "last_seen", d.LastSeen, tc.lastSeen)
			checkTime(t, "since", d.Since, tc.since)
		})
	}

	for _, tc := range []struct {
		name, path string
		code       int
		msg        string
	}{
		{"unknown", "/v1/devices/nobody", 404, `device "nobody" not found`},
		{"space", "/v1/devices/a%20b", 400, "invalid device id"},
		{"encoded slash", "/v1/devices/a%2Fb", 400, "invalid device id"},
		{"plus", "/v1/devices/a+b", 400, "invalid device id"},
		{"hash", "/v1/devices/a%23", 400, "invalid device id"},
		{"control", "/v1/devices/a%00", 400, "invalid device id"},
		{"non-ASCII", "/v1/devices/%C3%A9", 400, "invalid device id"},
		{"too long", "/v1/devices/" + strings.Repeat("x", engine.MaxIDLen+1), 400, "invalid device id"},
		{"empty", "/v1/devices/", 404, "no such endpoint"},
		{"two segments", "/v1/devices/a/b", 404, "no such endpoint"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkJSONError(t, f.do("GET", tc.path, ""), tc.code, tc.msg)
		})
	}

	t.Run("longest valid", func(t *testing.T) {
		id := strings.Repeat("y", engine.MaxIDLen)
		f.touch(id, t0)
		if w := f.do("GET", "/v1/devices/"+id, ""); w.Code != 200 {
			t.Fatalf("status %d: %s", w.Code, w.Body)
		}
	})
	t.Run("HEAD", func(t *testing.T) {
		w := f.do("HEAD", "/v1/devices/123", "")
		if w.Code != 200 {
			t.Fatalf("status %d", w.Code)
		}
	})
	if got := f.eng.Stats().Rejected; got != 0 {
		t.Errorf("engine counted %d rejected ids: the API must validate before asking", got)
	}
}

func TestDeviceStoreErrors(t *testing.T) {
	store := &fakeStore{devs: map[string]engine.DeviceState{
		"ghost": {ID: "ghost"}, // StatusUnknown without an error
	}}
	srv, err := New(DefaultConfig(), store)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, srv: srv}
	checkJSONError(t, f.do("GET", "/v1/devices/ghost", ""), 404, "not found")
	store.err = engine.ErrInvalidID
	checkJSONError(t, f.do("GET", "/v1/devices/x", ""), 400, "invalid device id")
	store.err = errors.New("disk on fire")
	w := f.do("GET", "/v1/devices/x", "")
	checkJSONError(t, w, 500, "internal error")
	if strings.Contains(w.Body.String(), "disk") {
		t.Errorf("internal error leaked to the client: %s", w.Body)
	}
}

func TestStats(t *testing.T) {
	f := newFixture(t, nil)
	f.touch("a", t0)
	f.touch("b", t0)
	f.eng.TouchBatch([]engine.Touch{{ID: "c", At: t0, Timeout: time.Second}})
	f.advance(2 * time.Second)

	w := f.do("GET", "/v1/stats", "")
	if w.Code != 200 {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	var st Stats
	decodeStrict(t, w.Body.Bytes(), &st)
	if st.Total != 3 || st.Online != 2 || st.Offline != 1 {
		t.Errorf("totals %+v", st)
	}
	if st.Engine == nil || st.Engine.Touches != 3 || st.Engine.OnlineTransitions != 3 || st.Engine.OfflineTransitions != 1 {
		t.Errorf("engine stats %+v", st.Engine)
	}

	// A Store without Stats: no "engine" member at all.
	srv, err := New(DefaultConfig(), &fakeStore{devs: map[string]engine.DeviceState{
		"x": {ID: "x", Status: engine.StatusOffline},
	}})
	if err != nil {
		t.Fatal(err)
	}
	f2 := &fixture{t: t, srv: srv}
	w = f2.do("GET", "/v1/stats", "")
	if got, want := w.Body.String(), `{"total":1,"online":0,"offline":1}`+"\n"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

func TestHealthAndReadiness(t *testing.T) {
	var notReady atomic.Pointer[error]
	hydrating := NotReady("recovery", errors.New("hydrating from Redis"))
	notReady.Store(&hydrating)
	f := newFixture(t, func(c *Config) {
		c.Ready = func() error {
			if p := notReady.Load(); p != nil {
				return *p
			}
			return nil
		}
	})
	check := func(path string, code int, body string) {
		t.Helper()
		w := f.do("GET", path, "")
		if w.Code != code || !strings.Contains(w.Body.String(), body) {
			t.Errorf("%s: %d %s, want %d containing %q", path, w.Code, w.Body, code, body)
		}
	}
	check("/healthz", 200, `{"status":"ok"}`)
	check("/readyz", 503, `{"status":"not ready","reasons":["recovery"],"error":"not ready: recovery"}`)
	notReady.Store(nil)
	check("/readyz", 200, `{"status":"ready"}`)
	check("/healthz", 200, `{"status":"ok"}`)
	subscribing := errors.New("subscribing") // unnamed
	notReady.Store(&subscribing)
	check("/readyz", 503, `{"status":"not ready","reasons":["unspecified"],"error":"not ready: unspecified"}`)

	// Nil Ready: always ready.
	check2 := newFixture(t, nil)
	if w := check2.do("GET", "/readyz", ""); w.Code != 200 {
		t.Errorf("nil Ready: %d", w.Code)
	}
}

func TestRoutingErrors(t *testing.T) {
	f := newFixture(t, nil)
	for _, tc := range []struct {
		method, path string
		code         int
		allow        string
	}{
		{"GET", "/v1/devices:batchGet", 405, "POST"},
		{"PUT", "/v1/devices:batchGet", 405, "POST"},
		{"POST", "/v1/devices/123", 405, "GET, HEAD"},
		{"DELETE", "/v1/devices/123", 405, "GET, HEAD"},
		{"POST", "/v1/stats", 405, "GET, HEAD"},
		{"POST", "/healthz", 405, "GET, HEAD"},
		{"GET", "/", 404, ""},
		{"GET", "/v1/nothing", 404, ""},
		{"GET", "/v1/devices:batchget", 404, ""}, // patterns are case-sensitive
		{"POST", "/v2/devices:batchGet", 404, ""},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			w := f.do(tc.method, tc.path, "")
			want := "no such endpoint"
			if tc.code == 405 {
				want = "method not allowed; allowed: " + tc.allow
			}
			checkJSONError(t, w, tc.code, want)
			if got := w.Header().Get("Allow"); got != tc.allow {
				t.Errorf("Allow %q, want %q", got, tc.allow)
			}
		})
	}
	m := f.metrics()
	for _, want := range []string{
		`presence_api_requests_rejected_total{reason="method_not_allowed"} 6`,
		`presence_api_requests_rejected_total{reason="no_route"} 4`,
		`presence_api_requests_total{route="unmatched",code="405"} 6`,
		`presence_api_requests_total{route="unmatched",code="404"} 4`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func TestAuth(t *testing.T) {
	const token = "s3cret-token-0123456789abcdef"
	f := newFixture(t, func(c *Config) { c.Token = token })
	f.touch("123", t0)
	protected := []struct{ method, path, body string }{
		{"GET", "/v1/devices/123", ""},
		{"POST", "/v1/devices:batchGet", `{"ids":["123"]}`},
		{"GET", "/v1/stats", ""},
	}
	for _, p := range protected {
		for _, tc := range []struct {
			name, auth string
			code       int
			challenge  string
		}{
			{"none", "", 401, `Bearer realm="presence"`},
			{"basic", "Basic dXNlcjpwYXNz", 401, `Bearer realm="presence"`},
			{"empty bearer", "Bearer ", 401, `Bearer realm="presence", error="invalid_token"`},
			{"wrong", "Bearer nope", 401, `Bearer realm="presence", error="invalid_token"`},
			{"prefix", "Bearer " + token[:10], 401, `Bearer realm="presence", error="invalid_token"`},
			{"longer", "Bearer " + token + "x", 401, `Bearer realm="presence", error="invalid_token"`},
			{"right", "Bearer " + token, 200, ""},
			{"scheme case", "bearer " + token, 200, ""},
			{"spaces", " Bearer   " + token + " \t", 200, ""}, // 1*SP, and OWS around the value
			{"bare scheme", "Bearer", 401, `Bearer realm="presence", error="invalid_token"`},
			{"tab", "Bearer\t" + token, 401, `Bearer realm="presence"`},
			{"no-break space", "Bearer\u00a0" + token, 401, `Bearer realm="presence"`},
		} {
			t.Run(p.path+"/"+tc.name, func(t *testing.T) {
				var hdr []string
				if tc.auth != "" {
					hdr = []string{"Authorization", tc.auth}
				}
				w := f.do(p.method, p.path, p.body, hdr...)
				if w.Code != tc.code {
					t.Fatalf("status %d, want %d: %s", w.Code, tc.code, w.Body)
				}
				if got := w.Header().Get("WWW-Authenticate"); got != tc.challenge {
					t.Errorf("WWW-Authenticate %q, want %q", got, tc.challenge)
				}
				if tc.code == 401 {
					checkJSONError(t, w, 401, "bearer token")
				}
			})
		}
	}
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		if w := f.do("GET", path, ""); w.Code != 200 {
			t.Errorf("%s without a token: %d, want open", path, w.Code)
		}
	}
	if m := f.metrics(); !strings.Contains(m, `presence_api_requests_rejected_total{reason="unauthorized"} 27`) {
		t.Errorf("unauthorized not counted:\n%s", grep(m, "rejected"))
	}

	// No token: everything open.
	open := newFixture(t, nil)
	open.touch("123", t0)
	for _, p := range protected {
		if w := open.do(p.method, p.path, p.body); w.Code != 200 {
			t.Errorf("%s %s without token config: %d", p.method, p.path, w.Code)
		}
	}
}

func TestHandle(t *testing.T) {
	const token = "tok"
	f := newFixture(t, func(c *Config) { c.Token = token })
	hello := func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("hi")) }
	f.srv.Handle("GET /v1/cluster", http.HandlerFunc(hello))
	f.srv.HandlePublic("GET /{$}", http.HandlerFunc(hello))

	if w := f.do("GET", "/v1/cluster", ""); w.Code != 401 {
		t.Errorf("Handle without token: %d, want 401", w.Code)
	}
	if w := f.do("GET", "/v1/cluster", "", "Authorization", "Bearer "+token); w.Code != 200 || w.Body.String() != "hi" {
		t.Errorf("Handle with token: %d %s", w.Code, w.Body)
	}
	if w := f.do("GET", "/", ""); w.Code != 200 {
		t.Errorf("HandlePublic: %d", w.Code)
	}
	// The dashboard at "GET /{$}" leaves other paths to the JSON 404.
	checkJSONError(t, f.do("GET", "/nope", ""), 404, "no such endpoint")
	m := f.metrics()
	for _, want := range []string{
		`presence_api_requests_total{route="GET /v1/cluster",code="401"} 1`,
		`presence_api_requests_total{route="GET /v1/cluster",code="200"} 1`,
		`presence_api_requests_total{route="GET /{$}",code="200"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	defer func() {
		if recover() == nil {
			t.Error("a conflicting pattern did not panic")
		}
	}()
	f.srv.Handle("GET /v1/stats", http.HandlerFunc(hello))
}

func TestPanicRecovery(t *testing.T) {
	f := newFixture(t, nil)
	f.srv.Handle("GET /boom", http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		panic("boom")
	}))
	for range 3 {
		checkJSONError(t, f.do("GET", "/boom", ""), 500, "internal error")
	}
	m := f.metrics()
	for _, want := range []string{
		`presence_api_panics_total 3`,
		`presence_api_requests_total{route="GET /boom",code="500"} 3`,
		`presence_api_requests_in_flight 1`, // the /metrics request itself
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if got := strings.Count(f.log.String(), "handler panic"); got != 1 {
		t.Errorf("%d panic log lines, want 1 (rate-limited):\n%s", got, f.log)
	}
	if !strings.Contains(f.log.String(), "boom") {
		t.Errorf("the panic value is not logged:\n%s", f.log)
	}
}

func TestRejectedLogRateLimited(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.LogInterval = time.Hour })
	for range 5 {
		f.do("GET", "/v1/devices/a%20b", "")
	}
	f.do("POST", "/v1/devices:batchGet", "{")
	log := f.log.String()
	if got := strings.Count(log, "reason=invalid_id"); got != 1 {
		t.Errorf("%d invalid_id lines, want 1:\n%s", got, log)
	}
	if got := strings.Count(log, "reason=invalid_body"); got != 1 {
		t.Errorf("%d invalid_body lines, want 1:\n%s", got, log)
	}
	if m := f.metrics(); !strings.Contains(m, `presence_api_requests_rejected_total{reason="invalid_id"} 5`) {
		t.Errorf("invalid_id not counted 5 times:\n%s", grep(m, "rejected"))
	}

	every := newFixture(t, func(c *Config) { c.LogInterval = 0 })
	for range 3 {
		every.do("GET", "/v1/devices/a%20b", "")
	}
	if got := strings.Count(every.log.String(), "reason=invalid_id"); got != 3 {
		t.Errorf("LogInterval 0: %d lines, want 3", got)
	}
}

func TestMetricsEndpoint(t *testing.T) {
	other := metrics.NewSet()
	other.NewCounter("presence_ingest_messages_received_total").Add(7)
	f := newFixture(t, func(c *Config) {
		c.MetricSets = []*metrics.Set{other, other} // listed twice: written once
		c.ProcessMetrics = true
	})
	f.touch("secret-device-42", t0)
	f.do("GET", "/v1/devices/secret-device-42", "")
	f.do("GET", "/v1/devices/nobody-99", "")
	f.do("POST", "/v1/devices:batchGet", `{"ids":["secret-device-42","nobody-99","bad id"]}`)
	w := f.do("GET", "/metrics", "")
	if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type %q", ct)
	}
	m := w.Body.String()
	for _, want := range []string{
		`presence_ingest_messages_received_total 7`,
		`presence_api_requests_total{route="GET /v1/devices/{id}",code="200"} 1`,
		`presence_api_requests_total{route="GET /v1/devices/{id}",code="404"} 1`,
		`presence_api_requests_total{route="POST /v1/devices:batchGet",code="200"} 1`,
		`presence_api_request_duration_seconds_bucket{route="GET /v1/devices/{id}",le="0.0001"}`,
		`presence_api_request_duration_seconds_count{route="GET /v1/devices/{id}"} 2`,
		`presence_api_requests_rejected_total{reason="too_many_ids"} 0`,
		`presence_api_batch_ids_total{result="found"} 1`,
		`presence_api_batch_ids_total{result="missing"} 1`,
		`presence_api_batch_ids_total{result="invalid"} 1`,
		`presence_api_panics_total 0`,
		"go_goroutines ",
		"go_memstats_alloc_bytes ",
		"process_resident_memory_bytes ",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if n := strings.Count(m, "presence_ingest_messages_received_total 7"); n != 1 {
		t.Errorf("a set listed twice is written %d times", n)
	}
	if strings.Contains(m, "secret-device-42") || strings.Contains(m, "nobody-99") {
		t.Error("a device id appears in /metrics")
	}
	for _, line := range strings.Split(strings.TrimSpace(m), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name := line[:strings.LastIndexByte(line, ' ')]
		if err := metrics.ValidateMetric(name); err != nil {
			t.Errorf("invalid exposition line %q: %v", line, err)
		}
	}
	if f.srv.Metrics() == nil || f.srv.Metrics() == other {
		t.Error("Metrics() is not the API's own set")
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string // "" means valid
	}{
		{"default", func(*Config) {}, ""},
		{"any port", func(c *Config) { c.Addr = ":0" }, ""},
		{"token", func(c *Config) { c.Token = "abc-DEF_123.~+/=" }, ""},
		{"addr", func(c *Config) { c.Addr = "localhost" }, "Addr"},
		{"token space", func(c *Config) { c.Token = "a b" }, "Token"},
		{"token newline", func(c *Config) { c.Token = "ab\n" }, "Token"},
		{"batch 0", func(c *Config) { c.MaxBatchIDs = 0 }, "MaxBatchIDs"},
		{"batch huge", func(c *Config) { c.MaxBatchIDs = 2_000_000 }, "MaxBatchIDs"},
		{"body", func(c *Config) { c.MaxBodyBytes = 10 }, "MaxBodyBytes"},
		{"nil set", func(c *Config) { c.MetricSets = []*metrics.Set{nil} }, "MetricSets"},
		{"header timeout", func(c *Config) { c.ReadHeaderTimeout = 0 }, "ReadHeaderTimeout"},
		{"read timeout", func(c *Config) { c.ReadTimeout = -1 }, "ReadTimeout"},
		{"header bytes", func(c *Config) { c.MaxHeaderBytes = 10 }, "MaxHeaderBytes"},
		{"shutdown", func(c *Config) { c.ShutdownTimeout = 0 }, "ShutdownTimeout"},
		{"log interval", func(c *Config) { c.LogInterval = -time.Second }, "LogInterval"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mod(&c)
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one about %s", err, tc.want)
			}
			if _, err := New(c, &fakeStore{}); err == nil {
				t.Error("New accepted an invalid config")
			}
		})
	}
	c := DefaultConfig()
	c.Addr, c.MaxBatchIDs = "", 0
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "Addr") || !strings.Contains(err.Error(), "MaxBatchIDs") {
		t.Errorf("Validate does not report every problem: %v", err)
	}
	if _, err := New(DefaultConfig(), nil); err == nil {
		t.Error("New accepted a nil Store")
	}
}

func TestTimeEncoding(t *testing.T) {
	for _, tc := range []struct {
		in   time.Time
		want string
	}{
		{t0, `"2025-12-14T10:30:45.123456+00:00"`},
		{time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), `"2025-01-02T03:04:05.000000+00:00"`},
		{time.Date(2025, 1, 2, 5, 4, 5, 999, time.FixedZone("CEST", 2*3600)), `"2025-01-02T03:04:05.000000+00:00"`},
		{time.Time{}, `null`},
	} {
		if got := string(appendTime(nil, tc.in)); got != tc.want {
			t.Errorf("appendTime(%v) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

// grep returns the lines of s containing sub.
func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestConcurrent serves every route from many goroutines while the engine
// changes underneath (run with -race).
func TestConcurrent(t *testing.T) {
	f := newFixture(t, nil)
	for i := range 100 {
		f.touch(fmt.Sprint(i), t0)
	}
	h := f.srv.Handler()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				var req *http.Request
				switch i % 5 {
				case 0:
					req = httptest.NewRequest("GET", fmt.Sprintf("/v1/devices/%d", (g*50+i)%150), nil)
				case 1:
					req = httptest.NewRequest("POST", "/v1/devices:batchGet", strings.NewReader(idsBody("1", "2", "x y", fmt.Sprint(i))))
				case 2:
					req = httptest.NewRequest("GET", "/v1/stats", nil)
				case 3:
					req = httptest.NewRequest("GET", "/metrics", nil)
				default:
					req = httptest.NewRequest("GET", "/nope", nil)
				}
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if w.Code >= 500 {
					t.Errorf("%s %s: %d %s", req.Method, req.URL, w.Code, w.Body)
				}
			}
		})
	}
	wg.Go(func() {
		for i := range 200 {
			f.eng.Touch(fmt.Sprint(i), t0.Add(time.Duration(i)*time.Millisecond))
		}
	})
	wg.Wait()
	if m := f.metrics(); !strings.Contains(m, `presence_api_requests_total{route="unmatched",code="404"} 80`) {
		t.Errorf("404s not all counted:\n%s", grep(m, "unmatched"))
	}
}
