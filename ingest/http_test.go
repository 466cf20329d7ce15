package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/presence-dev/presence/engine"
)

// postTouches serves one POST /v1/touches with body.
func postTouches(in *Ingester, body string) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	in.TouchesHandler().ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/v1/touches", strings.NewReader(body)))
	return w
}

func decodeTouchResponse(t *testing.T, w *httptest.ResponseRecorder) TouchResponse {
	t.Helper()
	var resp TouchResponse
	if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil || resp.Rejected == nil {
		t.Fatalf("response %d %q: %v (rejected must be present)", w.Code, w.Body, err)
	}
	return resp
}

// HTTP touches are messages heard now: stamped with the receive time,
// handed over with their timeout (0 keeps the device's), the invalid ones
// refused and counted by reason, as MQTT messages are.
func TestHTTPTouches(t *testing.T) {
	h := &fakeHandler{}
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	in := newUnstarted(t, h, func(c *Config) { c.Clock = func() time.Time { return now }; c.BatchDelay = 0 })
	long := strings.Repeat("z", 1000)
	w := postTouches(in, `{"ids":["a","b","","_presence_probe_x"],"touches":[{"id":"c","timeout_seconds":120},{"id":"d","timeout_seconds":604800},`+
		`{"id":"e","timeout_seconds":0.5},{"id":"f","timeout_seconds":604801},{"id":"g/x"},{"id":"h","timeout_seconds":-3},`+
		`{"id":"i","timeout_seconds":1.5},{"id":"`+long+`"}]}`)
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, %q", w.Code, w.Body)
	}
	resp := decodeTouchResponse(t, w)
	want := []RejectedTouch{{"", "invalid_id"}, {"_presence_probe_x", "invalid_id"}, {"e", "invalid_timeout"}, {"f", "invalid_timeout"},
		{"g/x", "invalid_id"}, {"h", "invalid_timeout"}, {"i", "invalid_timeout"}, {long[:maxEchoedID] + "...", "invalid_id"}}
	if resp.Accepted != 4 || fmt.Sprint(resp.Rejected) != fmt.Sprint(want) {
		t.Fatalf("response %+v, want 4 accepted and rejected %v", resp, want)
	}
	waitFor(t, "the touches handed over", func() bool { return len(h.snapshot()) == 4 })
	got := map[string]event{}
	for _, e := range h.snapshot() {
		got[e.ID] = e
	}
	for id, tmo := range map[string]time.Duration{"a": 0, "b": 0, "c": 2 * time.Minute, "d": 7 * 24 * time.Hour} {
		if e, ok := got[id]; !ok || !e.At.Equal(now) || e.Timeout != tmo || e.Offline {
			t.Errorf("%s: %+v, want a touch at %v with timeout %v", id, e, now, tmo)
		}
	}
	st := in.Stats()
	if st.Received != 12 || st.ReceivedHTTP != 12 || st.Dropped["invalid_id"] != 4 || st.Dropped["invalid_timeout"] != 4 || st.Touches != 4 || st.Batches != 1 {
		t.Errorf("stats %+v", st)
	}
}

// A request that is not a TouchRequest is refused whole, with a JSON
// error, and counted; nothing of it is queued.
func TestHTTPTouchesRefused(t *testing.T) {
	h := &fakeHandler{}
	in := newUnstarted(t, h, nil)
	many := `{"ids":[` + strings.Repeat(`"x",`, MaxHTTPTouches) + `"x"]}`
	for _, c := range []struct {
		body, want string
		code       int
	}{
		{``, "invalid body", 400},
		{`[]`, "invalid body", 400},
		{`{"ids":"a"}`, "invalid body", 400},
		{`{"ids":["a"],"extra":1}`, `unknown field "extra"`, 400},
		{`{"IDS":["a"]}`, `unknown field "IDS"`, 400},
		{`{"touches":[{"ID":"a"}]}`, `unknown field "ID"`, 400},
		{`{"touches":[{"id":"a","timeout_seconds":"60"}]}`, "invalid body", 400},
		{`{"ids":["a"]} {"ids":["b"]}`, "data after the JSON object", 400},
		{`{"ids":["a"]`, "invalid body", 400},
		{many, "too many touches", 413},
		{`{"ids":["` + strings.Repeat("a", MaxHTTPBodyBytes) + `"]}`, "body too large", 413},
	} {
		w := postTouches(in, c.body)
		var e struct{ Error string }
		if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || w.Code != c.code || !strings.Contains(e.Error, c.want) {
			t.Errorf("body %.40q: %d %.200s, want %d with %q", c.body, w.Code, w.Body, c.code, c.want)
		}
	}
	if st := in.Stats(); st.Received != 0 || len(h.snapshot()) != 0 {
		t.Errorf("refused requests queued messages: %+v", st)
	}
	if n := in.m.httpRejected[requestInvalidBody].Get(); n != 9 {
		t.Errorf("invalid_body requests counted %d, want 9", n)
	}
}

// The answer says what the Handler took: touches it refused are not
// accepted. Outside Start to Close nothing is taken (503, Retry-After),
// and Close waits for a request handing touches over.
func TestHTTPTouchesHandedOverWhileRunning(t *testing.T) {
	h := &fakeHandler{reject: "r"}
	entered := make(chan struct{}, 16)
	cfg := DefaultConfig()
	cfg.BatchSize = 2
	in, err := New(cfg, enteringHandler{h, entered})
	if err != nil {
		t.Fatal(err)
	}
	if w := postTouches(in, `{"ids":["a"]}`); w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" ||
		!strings.Contains(w.Body.String(), "not started") {
		t.Fatalf("before Start: %d %s", w.Code, w.Body)
	}
	in.mu.Lock()
	in.startWorkersLocked()
	in.mu.Unlock()
	w := postTouches(in, `{"ids":["a","r","b","c","d"]}`)
	if resp := decodeTouchResponse(t, w); w.Code != http.StatusOK || resp.Accepted != 4 || len(resp.Rejected) != 0 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	if got := fmt.Sprint(h.batchSizes()); got != "[2 2 1]" {
		t.Errorf("batches %s, want BatchSize (2) at most", got)
	}
	if st := in.Stats(); st.Touches != 5 || st.Rejected != 1 {
		t.Errorf("stats %+v", st)
	}

	// A request in the middle of handing over holds Close back.
	h.gate = make(chan struct{})
	done := make(chan *httptest.ResponseRecorder)
	for len(entered) > 0 {
		<-entered
	}
	go func() { done <- postTouches(in, `{"ids":["e"]}`) }()
	<-entered // the request is in the handler
	closed := make(chan struct{})
	go func() { in.Close(context.Background()); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned while a request was handing touches over")
	case <-time.After(50 * time.Millisecond):
	}
	close(h.gate)
	<-closed
	if w := <-done; w.Code != http.StatusOK {
		t.Fatalf("the request Close waited for: %d %s", w.Code, w.Body)
	}
	if w := postTouches(in, `{"ids":["late"]}`); w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), "closed") {
		t.Errorf("after Close: %d %s", w.Code, w.Body)
	}
	if err := in.SetStatus("a", engine.StatusOffline, time.Now(), engine.CauseAPI); !errors.Is(err, ErrClosed) {
		t.Errorf("SetStatus after Close: %v", err)
	}
}

// enteringHandler signals each TouchBatch call as it begins.
type enteringHandler struct {
	*fakeHandler
	entered chan struct{}
}

func (h enteringHandler) TouchBatch(b []engine.Touch) int {
	h.entered <- struct{}{}
	return h.fakeHandler.TouchBatch(b)
}
