package api

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/presence-dev/presence/engine"
)

// t0 has microseconds and a sub-microsecond part, to check both the format
// and the truncation.
var t0 = time.Date(2025, 12, 14, 10, 30, 45, 123456789, time.UTC)

// fixture is a Server over a real engine with a manual clock.
type fixture struct {
	t   testing.TB
	eng *engine.Engine
	srv *Server
	now time.Time
	log *syncBuffer
}

// newFixture builds a fixture; mod adjusts the API config.
func newFixture(t testing.TB, mod func(*Config)) *fixture {
	t.Helper()
	f := &fixture{t: t, now: t0, log: &syncBuffer{}}
	ecfg := engine.DefaultConfig()
	ecfg.Shards = 4
	ecfg.Now = func() time.Time { return f.now }
	eng, err := engine.New(ecfg)
	if err != nil {
		t.Fatal(err)
	}
	f.eng = eng
	cfg := DefaultConfig()
	cfg.ProcessMetrics = false
	cfg.Addr = "127.0.0.1:0" // serve() binds a free port
	cfg.Logger = slog.New(slog.NewTextHandler(f.log, nil))
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg, eng)
	if err != nil {
		t.Fatal(err)
	}
	f.srv = srv
	return f
}

// advance moves the clock and the engine's wheel.
func (f *fixture) advance(d time.Duration) {
	f.now = f.now.Add(d)
	f.eng.Advance(f.now)
}

func (f *fixture) touch(id string, at time.Time) {
	f.t.Helper()
	if err := f.eng.Touch(id, at); err != nil {
		f.t.Fatalf("Touch(%q): %v", id, err)
	}
}

// do serves one request in memory.
func (f *fixture) do(method, target, body string, hdr ...string) *httptest.ResponseRecorder {
	f.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, target, rd)
	req.Host = "127.0.0.1:8080" // as a local client sends it
	if method == "POST" || method == "PUT" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		switch {
		case hdr[i] == "Host":
			req.Host = hdr[i+1]
		case hdr[i+1] == "":
			req.Header.Del(hdr[i])
		default:
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	w := httptest.NewRecorder()
	f.srv.Handler().ServeHTTP(w, req)
	return w
}

// metrics returns the /metrics text.
func (f *fixture) metrics() string {
	f.t.Helper()
	w := f.do("GET", "/metrics", "")
	if w.Code != 200 {
		f.t.Fatalf("/metrics: %d %s", w.Code, w.Body)
	}
	return w.Body.String()
}

// checkJSONError asserts an {"error": ...} body with a message containing
// want.
func checkJSONError(t *testing.T, w *httptest.ResponseRecorder, code int, want string) {
	t.Helper()
	if w.Code != code {
		t.Fatalf("status %d, want %d; body %s", w.Code, code, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var e Error
	dec := json.NewDecoder(bytes.NewReader(w.Body.Bytes()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		t.Fatalf("error body %q: %v", w.Body, err)
	}
	if e.Error == "" || !strings.Contains(e.Error, want) {
		t.Errorf("error %q, want it to contain %q", e.Error, want)
	}
}

// decodeStrict decodes body into v, refusing unknown fields.
func decodeStrict(t *testing.T, body []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decode %q: %v", body, err)
	}
}

// syncBuffer is a log sink safe for concurrent handlers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fakeStore is a Store without Stats, with an injectable error.
type fakeStore struct {
	devs map[string]engine.DeviceState
	err  error
}

func (s *fakeStore) Device(id string) (engine.DeviceState, error) {
	if s.err != nil {
		return engine.DeviceState{ID: id}, s.err
	}
	d, ok := s.devs[id]
	if !ok {
		return engine.DeviceState{ID: id}, engine.ErrNotFound
	}
	return d, nil
}

func (s *fakeStore) Devices(ids []string, dst []engine.DeviceState) []engine.DeviceState {
	for _, id := range ids {
		d, _ := s.Device(id)
		dst = append(dst, d)
	}
	return dst
}

func (s *fakeStore) Counts() engine.Counts {
	var c engine.Counts
	for _, d := range s.devs {
		c.Total++
		if d.Status == engine.StatusOnline {
			c.Online++
		}
	}
	c.Offline = c.Total - c.Online
	return c
}

var _ http.Handler = (*route)(nil)
