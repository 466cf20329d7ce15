package events

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

func sseHubForTest(t *testing.T, mod func(*SSEConfig)) (*Hub, *httptest.Server) {
	t.Helper()
	cfg := bareConfig()
	cfg.SSE.Enabled = true
	cfg.SSE.Heartbeat = 50 * time.Millisecond
	if mod != nil {
		mod(&cfg.SSE)
	}
	h, err := New(cfg, Deps{Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h.SSEHandler())
	srv.Config.WriteTimeout = 200 * time.Millisecond // a stream must outlive it
	srv.Start()
	t.Cleanup(srv.Close)
	return h, srv
}

// stream is a client reading one event stream.
type stream struct {
	events   chan Event
	comments chan string
	cancel   context.CancelFunc
	done     chan struct{}
}

func openStream(t *testing.T, base, query string) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/events"+query, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("%s: %d %s", query, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	s := &stream{events: make(chan Event, 10000), comments: make(chan string, 1000), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "data: "):
				s.events <- decode(t, []byte(line[len("data: "):]))
			case strings.HasPrefix(line, ":"):
				select {
				case s.comments <- line:
				default:
				}
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-s.done })
	return s
}

func (s *stream) next(t *testing.T, n int) []Event {
	t.Helper()
	var out []Event
	timeout := time.After(10 * time.Second)
	for len(out) < n {
		select {
		case e := <-s.events:
			out = append(out, e)
		case <-timeout:
			t.Fatalf("got %d of %d events: %+v", len(out), n, out)
		}
	}
	return out
}

func (s *stream) none(t *testing.T) {
	t.Helper()
	select {
	case e := <-s.events:
		t.Fatalf("unexpected event %+v", e)
	case <-time.After(150 * time.Millisecond):
	}
}

func TestSSEFilters(t *testing.T) {
	h, srv := sseHubForTest(t, nil)
	runHub(t, h)
	all := openStream(t, srv.URL, "")
	ab := openStream(t, srv.URL, "?id=a,b")
	off := openStream(t, srv.URL, "?status=offline")
	aOn := openStream(t, srv.URL, "?id=a&status=online")
	inc := openStream(t, srv.URL, "?type=mass_offline&type=mass_offline_recovered")
	alerts := openStream(t, srv.URL, "?type=offline_alert&id=b")
	testenv.Eventually(t, 5*time.Second, func() error {
		if n := sseClients(h); n != 6 {
			return fmt.Errorf("%d clients registered", n)
		}
		return nil
	})

	ts := []engine.Transition{
		tr("a", engine.StatusUnknown, engine.StatusOnline, t0, engine.CauseTelemetry),
		tr("b", engine.StatusUnknown, engine.StatusOnline, t0, engine.CauseTelemetry),
		tr("c", engine.StatusUnknown, engine.StatusOnline, t0, engine.CauseTelemetry),
		tr("a", engine.StatusOnline, engine.StatusOffline, t0.Add(time.Minute), engine.CauseTimeout),
		tr("c", engine.StatusOnline, engine.StatusOffline, t0.Add(time.Minute), engine.CauseLastWill),
	}
	h.HandleTransitions(ts)
	h.pubMu.Lock()
	h.publish([]rec{
		{typ: TypeOfflineAlert, id: "b", at: t0.UnixMicro(), since: t0.UnixMicro() - 9e8, cause: engine.CauseTimeout},
		{typ: TypeMassOffline, at: t0.UnixMicro(), inc: &incident{id: "i1", count: 5, fleet: 10, share: 0.5, window: time.Second}},
	})
	h.pubMu.Unlock()

	ids := func(es []Event) string {
		var b strings.Builder
		for _, e := range es {
			fmt.Fprintf(&b, "%s:%s:%s ", e.Type, e.ID, e.Status)
		}
		return strings.TrimSpace(b.String())
	}
	check := func(name string, s *stream, want string) {
		t.Helper()
		n := len(strings.Fields(want))
		if got := ids(s.next(t, n)); got != want {
			t.Errorf("%s: got %q, want %q", name, got, want)
		}
		s.none(t)
	}
	check("all", all, "status:a:online status:b:online status:c:online status:a:offline status:c:offline offline_alert:b:offline mass_offline::")
	check("id=a,b", ab, "status:a:online status:b:online status:a:offline offline_alert:b:offline")
	check("status=offline", off, "status:a:offline status:c:offline offline_alert:b:offline")
	check("id=a&status=online", aOn, "status:a:online")
	check("type=mass_*", inc, "mass_offline::")
	check("type=offline_alert&id=b", alerts, "offline_alert:b:offline")

	// Heartbeats keep an idle stream alive, past the server's WriteTimeout.
	time.Sleep(300 * time.Millisecond)
	for range 2 {
		select {
		case c := <-all.comments:
			_ = c
		case <-time.After(time.Second):
			t.Fatal("no heartbeat")
		}
	}
	h.HandleTransitions(ts[:1])
	if e := all.next(t, 1); e[0].ID != "a" {
		t.Fatalf("after idle: %+v", e)
	}
}

func TestSSEBadRequests(t *testing.T) {
	h, srv := sseHubForTest(t, func(c *SSEConfig) { c.MaxFilterIDs = 3 })
	runHub(t, h)
	for _, q := range []string{
		"?id=a/b", "?id=", "?id=a,b,c,d", "?status=gone", "?type=nope", "?statuss=offline",
	} {
		resp, err := http.Get(srv.URL + "/v1/events" + q)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.HasPrefix(string(body), `{"error":`) {
			t.Errorf("%s: %d %s", q, resp.StatusCode, body)
		}
	}
	resp, err := http.Post(srv.URL+"/v1/events", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", resp.StatusCode)
	}
}

// TestSSESlowClientDropped: a client whose buffer fills is disconnected and
// counted; the broadcaster never waits for it, and other clients go on.
func TestSSESlowClientDropped(t *testing.T) {
	h, _ := sseHubForTest(t, func(c *SSEConfig) { c.ClientBuffer = 4 })
	slow, err := h.sse.register(filter{}, h.sse.cfg.ClientBuffer) // never read
	if err != nil {
		t.Fatal(err)
	}
	fast, _ := h.sse.register(filter{}, h.sse.cfg.ClientBuffer)
	batch := make([]rec, 3)
	for i := range batch {
		batch[i] = statusRec(&engine.Transition{ID: fmt.Sprint("d", i), To: engine.StatusOnline, At: t0})
	}
	for range 2 {
		_ = h.sse.send(context.Background(), batch)
		for range len(batch) {
			<-fast.ch
		}
	}
	select {
	case <-slow.kicked:
	default:
		t.Fatal("slow client not disconnected")
	}
	if _, ok := h.sse.clients[fast]; !ok {
		t.Fatal("fast client disconnected")
	}
	if n := h.sse.slow.Get(); n != 1 {
		t.Fatalf("slow disconnects counted: %d", n)
	}
}

// TestSSEStalledReaderOverHTTP: a real client that stops reading is
// disconnected once the socket buffers and its event buffer are full,
// while another client keeps receiving.
func TestSSEStalledReaderOverHTTP(t *testing.T) {
	h, srv := sseHubForTest(t, func(c *SSEConfig) {
		c.ClientBuffer, c.WriteTimeout = 16, 100*time.Millisecond
		c.Delivery.QueueCapacity = 1 << 20
	})
	runHub(t, h)
	u, _ := url.Parse(srv.URL)
	// The stalled client: sends the request, then never reads.
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /v1/events HTTP/1.1\r\nHost: %s\r\n\r\n", u.Host)
	live := openStream(t, srv.URL, "?id=probe")
	testenv.Eventually(t, 5*time.Second, func() error {
		if n := sseClients(h); n != 2 {
			return fmt.Errorf("%d clients", n)
		}
		return nil
	})
	batch := make([]engine.Transition, 1000)
	for i := range batch {
		batch[i] = tr(fmt.Sprintf("device-with-a-longish-id-%06d", i), engine.StatusOffline, engine.StatusOnline, t0, engine.CauseTelemetry)
	}
	testenv.Eventually(t, 20*time.Second, func() error {
		h.HandleTransitions(batch)
		if h.sse.slow.Get() == 0 {
			return fmt.Errorf("stalled client still connected")
		}
		return nil
	})
	h.HandleTransitions([]engine.Transition{tr("probe", engine.StatusOffline, engine.StatusOnline, t0, engine.CauseTelemetry)})
	if e := live.next(t, 1); e[0].ID != "probe" {
		t.Fatalf("live client got %+v", e)
	}
}

// TestSSEEndsWithRequestAndClose: a stream ends when its client goes away
// (the handler unregisters) and when the hub closes.
func TestSSEEndsWithRequestAndClose(t *testing.T) {
	h, srv := sseHubForTest(t, nil)
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	a := openStream(t, srv.URL, "")
	b := openStream(t, srv.URL, "")
	testenv.Eventually(t, 5*time.Second, func() error {
		if n := sseClients(h); n != 2 {
			return fmt.Errorf("%d clients", n)
		}
		return nil
	})
	a.cancel()
	<-a.done
	testenv.Eventually(t, 5*time.Second, func() error {
		if n := sseClients(h); n != 1 {
			return fmt.Errorf("%d clients after one left", n)
		}
		return nil
	})
	if err := h.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-b.done:
	case <-time.After(5 * time.Second):
		t.Fatal("stream still open after Close")
	}
	resp, err := http.Get(srv.URL + "/v1/events")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("after Close: %d", resp.StatusCode)
	}
}

func sseClients(h *Hub) int {
	h.sse.mu.RLock()
	defer h.sse.mu.RUnlock()
	return len(h.sse.clients)
}

// The events another node sends, back to back in one frame, are split and
// each matched with a stream's filter as the node's own would be.
func TestStreamFilterOnEncoded(t *testing.T) {
	msg := []byte(`data: {"type":"status","id":"a","status":"offline","previous":"online","at":"2026-01-01T00:00:00.000000+00:00","cause":"timeout"}` + "\n\n" +
		`data: {"type":"mass_offline","incident":"i1","count":5}` + "\n\n" +
		`data: not json` + "\n\n" +
		`data: {"type":"a_type_of_a_newer_version","id":"c"}` + "\n\n" +
		`data: {"type":"status","id":"b","status":"online","previous":"offline","at":"2026-01-01T00:00:00.000000+00:00","cause":"telemetry"}` + "\n\n")
	var all []Encoded
	SplitEncoded(msg, func(e Encoded) { all = append(all, e) })
	if len(all) != 4 || !strings.HasPrefix(string(all[0].Msg), `data: {"type":"status","id":"a"`) || !strings.HasSuffix(string(all[3].Msg), "\n\n") {
		t.Fatalf("split into %d: %+v", len(all), all)
	}
	for q, want := range map[string][]bool{
		"":                   {true, true, true, true},
		"id=a":               {true, false, false, false},
		"status=online":      {false, false, false, true},
		"type=mass_offline":  {false, true, false, false},
		"type=status&id=a,b": {true, false, false, true},
	} {
		v, _ := url.ParseQuery(q)
		f, err := NewStreamFilter(v, 10)
		if err != nil {
			t.Fatal(err)
		}
		for i := range all {
			if got := f.Match(&all[i]); got != want[i] {
				t.Errorf("%q on event %d: %v, want %v", q, i, got, want[i])
			}
		}
	}
	if _, err := NewStreamFilter(url.Values{"nope": {"1"}}, 10); err == nil {
		t.Error("an unknown parameter was taken")
	}
}

// SplitEncoded never panics, and hands out only whole events of its input,
// in order, each ending with the blank line.
func FuzzSplitEncoded(f *testing.F) {
	f.Add([]byte(`data: {"type":"status","id":"a","status":"online"}` + "\n\n"))
	f.Add([]byte(`data: {"type":"mass_offline"}` + "\n\n" + `data: {}` + "\n\ndata: x\n\n"))
	f.Add([]byte("\n\n\n\ndata: \n\n"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		rest := msg
		SplitEncoded(msg, func(e Encoded) {
			i := bytes.Index(rest, e.Msg)
			if i < 0 || !bytes.HasSuffix(e.Msg, []byte("\n\n")) || !bytes.HasPrefix(e.Msg, []byte("data: ")) {
				t.Fatalf("event %q is not a whole event of the rest of the input", e.Msg)
			}
			rest = rest[i+len(e.Msg):]
			f := StreamFilter{}
			_ = f.Match(&e)
		})
	})
}
