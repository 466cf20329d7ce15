package daemon

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// post sends body to path with the token (if any) and returns the status
// and the answer.
func (r *running) post(t *testing.T, path, token, body string) (int, string) {
	t.Helper()
	return r.send(t, http.MethodPost, path, token, body)
}

// do sends a request without a token and with a JSON body (if any).
func (r *running) do(t *testing.T, method, path, body string) (int, string) {
	t.Helper()
	return r.send(t, method, path, "", body)
}

func (r *running) send(t *testing.T, method, path, token, body string) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+r.d.HTTPAddr()+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// POST /v1/touches reaches Redis, Postgres and history as an MQTT message
// does: the device online with the timeout given, refused touches
// counted in the ingest metrics; the token is required when set.
func TestHTTPTouchesEndToEnd(t *testing.T) {
	s := newStack(t, 301, 302)
	c := s.config()
	c.API.Token = "touch-secret"
	r := startDaemon(t, c)
	if code, body := r.post(t, "/v1/touches", "", `{"ids":["301"]}`); code != http.StatusUnauthorized {
		t.Fatalf("without the token: %d %s", code, body)
	}
	code, body := r.post(t, "/v1/touches", c.API.Token, `{"ids":["301","bad/id"],"touches":[{"id":"302","timeout_seconds":600}]}`)
	if code != http.StatusOK || body != `{"accepted":2,"rejected":[{"id":"bad/id","reason":"invalid_id"}]}` {
		t.Fatalf("%d %s", code, body)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		for _, id := range []int{301, 302} {
			if st, _, err := s.redisState(id); err != nil || st != "online" {
				return fmt.Errorf("redis %d: %q %v", id, st, err)
			}
			if st, _, err := s.pgState(id); err != nil || st != "online" {
				return fmt.Errorf("postgres %d: %q %v", id, st, err)
			}
		}
		return nil
	})
	d, err := r.d.Engine().Device("302")
	if err != nil || d.Timeout != 10*time.Minute {
		t.Fatalf("302: %+v %v, want the 600 s timeout", d, err)
	}
	// 301 keeps the default timeout (2 s) and goes offline; 302 does not.
	testenv.Eventually(t, 10*time.Second, func() error {
		if st, _, err := s.redisState(301); err != nil || st != "offline" {
			return fmt.Errorf("301: %q %v", st, err)
		}
		return nil
	})
	if st, _, _ := s.redisState(302); st != "online" {
		t.Fatalf("302 %q, want online for 10 minutes", st)
	}
	// An explicit status through the API: offline at once, cause api, in
	// Redis and in the history.
	if code, body := r.post(t, "/v1/devices/302/status", c.API.Token, `{"status":"offline"}`); code != http.StatusOK || !strings.Contains(body, `"status":"offline"`) {
		t.Fatalf("status: %d %s", code, body)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if st, _, err := s.redisState(302); err != nil || st != "offline" {
			return fmt.Errorf("302 in redis: %q %v", st, err)
		}
		if h := s.historyOf(302); len(h) != 2 || h[1].status != "offline" || h[1].cause != "api" {
			return fmt.Errorf("302 history %+v", h)
		}
		return nil
	})
	m, err := testenv.ScrapeMetrics("http://" + r.d.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if m[`presence_transitions_total{to="offline",cause="api"}`] != 1 {
		t.Errorf("api transitions counted %v", m[`presence_transitions_total{to="offline",cause="api"}`])
	}
	if m[`presence_ingest_messages_received_total{conn="http"}`] != 3 || m[`presence_ingest_messages_dropped_total{reason="invalid_id"}`] != 1 {
		t.Errorf("ingest metrics: received http %v, invalid_id %v", m[`presence_ingest_messages_received_total{conn="http"}`],
			m[`presence_ingest_messages_dropped_total{reason="invalid_id"}`])
	}
}

// Beyond loopback without a token the API serves reads but refuses
// writes.
func TestWritesRefusedOnOpenListener(t *testing.T) {
	s := newStack(t)
	c := s.config()
	c.API.Addr = "0.0.0.0:0"
	r := startDaemon(t, c)
	for _, path := range []string{"/v1/touches", "/v1/devices/1/status"} {
		code, body := r.post(t, path, "", `{"ids":["1"]}`)
		if code != http.StatusForbidden || !strings.Contains(body, "-api-token") {
			t.Fatalf("%s: %d %s", path, code, body)
		}
	}
	if err := r.get("/v1/stats", nil); err != nil {
		t.Fatal(err)
	}
	if n := r.d.Engine().Counts().Total; n != 0 {
		t.Fatalf("%d devices after a refused write", n)
	}
}
