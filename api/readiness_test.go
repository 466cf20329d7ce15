package api

import (
	"errors"
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
)

// secretReadyErr is a readiness error whose text holds what must never
// reach an anonymous client: URLs with passwords, addresses.
var secretReadyErr = errors.Join(
	NotReady("recovery", fmt.Errorf("rebuilding state from Redis: dial redis://presence:hunter2-secret@10.0.0.7:6379: connection refused")),
	NotReady("ingest", errors.New("MQTT connection 0 (mqtt://user:pw-secret@broker.internal:1883) not connected")),
)

// secretParts are pieces of secretReadyErr that an anonymous /readyz must
// not show.
var secretParts = []string{"hunter2", "pw-secret", "redis://", "mqtt://", "10.0.0.7", "broker.internal", "refused", "connection"}

// readiness decodes a /readyz answer strictly.
func readiness(t *testing.T, w *httptest.ResponseRecorder) Readiness {
	t.Helper()
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if cc := w.Header().Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q", cc)
	}
	var r Readiness
	decodeStrict(t, w.Body.Bytes(), &r)
	return r
}

// An anonymous /readyz names the failing checks and nothing else; a
// request with the API token reads the error; the log always has it.
func TestReadyzHidesDetails(t *testing.T) {
	const token = "s3cret-token-0123456789abcdef"
	f := newFixture(t, func(c *Config) {
		c.Token = token
		c.Ready = func() error { return secretReadyErr }
	})
	wantReasons := []string{"recovery", "ingest"}
	anonymous := func(name string, hdr ...string) {
		t.Helper()
		for _, method := range []string{"GET", "HEAD"} {
			w := f.do(method, "/readyz", "", hdr...)
			if w.Code != 503 {
				t.Fatalf("%s %s: %d %s, want 503", name, method, w.Code, w.Body)
			}
			if method == "HEAD" {
				continue
			}
			for _, p := range secretParts {
				if strings.Contains(w.Body.String(), p) {
					t.Errorf("%s: body %s shows %q", name, w.Body, p)
				}
			}
			r := readiness(t, w)
			if r.Status != "not ready" || !slices.Equal(r.Reasons, wantReasons) || r.Error != "not ready: recovery, ingest" {
				t.Errorf("%s: %+v", name, r)
			}
		}
	}
	anonymous("no token")
	anonymous("wrong token", "Authorization", "Bearer nope")
	anonymous("token prefix", "Authorization", "Bearer "+token[:10])
	anonymous("basic", "Authorization", "Basic "+token)
	anonymous("no scheme", "Authorization", token)

	// Two headers, one right: not a credential.
	req := httptest.NewRequest("GET", "/readyz", nil)
	req.Header.Add("Authorization", "Bearer "+token)
	req.Header.Add("Authorization", "Bearer "+token)
	w := httptest.NewRecorder()
	f.srv.Handler().ServeHTTP(w, req)
	if strings.Contains(w.Body.String(), "hunter2") || w.Code != 503 {
		t.Errorf("two Authorization headers: %d %s", w.Code, w.Body)
	}

	for _, auth := range []string{"Bearer " + token, "bearer  " + token} {
		w := f.do("GET", "/readyz", "", "Authorization", auth)
		if w.Code != 503 {
			t.Fatalf("%q: %d, want 503", auth, w.Code)
		}
		r := readiness(t, w)
		if want := "not ready: " + secretReadyErr.Error(); r.Status != "not ready" || !slices.Equal(r.Reasons, wantReasons) || r.Error != want {
			t.Errorf("%q: %+v, want the error %q", auth, r, want)
		}
	}

	// Logged once per interval (the fixture's default 10 s), with the details.
	log := f.log.String()
	if n := strings.Count(log, "api: not ready"); n != 1 {
		t.Errorf("%d log lines, want 1:\n%s", n, log)
	}
	if !strings.Contains(log, "hunter2-secret@10.0.0.7") || !strings.Contains(log, "reasons=recovery,ingest") {
		t.Errorf("log lacks the details:\n%s", log)
	}
	// A wrong token on /readyz is no refused request: the probe answers.
	if m := f.metrics(); !strings.Contains(m, `presence_api_requests_rejected_total{reason="unauthorized"} 0`) {
		t.Errorf("readyz counted as unauthorized:\n%s", grep(m, "rejected"))
	}
}

// Without Config.Token nobody reads the details over HTTP: the log has
// them.
func TestReadyzWithoutToken(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.LogInterval = 0
		c.Ready = func() error { return secretReadyErr }
	})
	for _, auth := range []string{"", "Bearer ", "Bearer x", "Bearer " + strings.Repeat("0", 64)} {
		var hdr []string
		if auth != "" {
			hdr = []string{"Authorization", auth}
		}
		w := f.do("GET", "/readyz", "", hdr...)
		if w.Code != 503 || strings.Contains(w.Body.String(), "hunter2") {
			t.Errorf("%q: %d %s", auth, w.Code, w.Body)
		}
	}
	if n := strings.Count(f.log.String(), "hunter2-secret"); n != 4 {
		t.Errorf("LogInterval 0: %d log lines with the details, want 4", n)
	}
}

func TestReadyReasons(t *testing.T) {
	secret := errors.New("redis://u:secret@host")
	check := func(err error, want ...string) {
		t.Helper()
		if got := readyReasons(nil, err); !slices.Equal(got, want) {
			t.Errorf("readyReasons(%v) = %q, want %q", err, got, want)
		}
	}
	check(secret, "unspecified")
	check(NotReady("ingest", secret), "ingest")
	check(NotReady("ingest", nil), "ingest")
	check(fmt.Errorf("ready: %w", NotReady("recovery", secret)), "recovery")
	check(fmt.Errorf("ready: %w", secret), "unspecified")
	check(errors.Join(NotReady("a", secret), NotReady("b", secret), NotReady("a", secret)), "a", "b")
	check(errors.Join(secret, NotReady("b", secret), secret), "unspecified", "b")
	check(errors.Join(errors.Join(NotReady("x", secret)), fmt.Errorf("%w and %w", NotReady("y", secret), NotReady("z", secret))), "x", "y", "z")
	check(NotReady("outer", NotReady("inner", secret)), "outer")
	// A name that could carry anything is not shown.
	for _, bad := range []string{"", "Ingest", "redis://u:secret@host", "a b", "a.b", strings.Repeat("x", 33), "ingest\n"} {
		check(NotReady(bad, secret), "unspecified")
	}
	check(NotReady(strings.Repeat("x", 32), secret), strings.Repeat("x", 32))
	if got, want := NotReady("ingest", secret).Error(), "ingest: redis://u:secret@host"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(NotReady("ingest", secret), secret) {
		t.Error("NotReady does not unwrap")
	}
}
