package daemon

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The pprof endpoint: off by default, on its own listener when asked,
// behind the API token when one is set.
func TestPprofEndpoint(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the daemon")
	}
	c := DefaultConfig()
	c.EmbeddedMQTTAddr = "127.0.0.1:0"
	c.API.Addr = "127.0.0.1:0"
	c.API.Token = "pprof-test-token-0123456789"
	c.PprofAddr = "127.0.0.1:0"
	r := startDaemon(t, c)
	addr := r.d.PprofAddr()
	if addr == "" || addr == r.d.HTTPAddr() {
		t.Fatalf("pprof on %q, API on %q: want a listener of its own", addr, r.d.HTTPAddr())
	}
	get := func(path, token string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+addr+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/debug/pprof/heap?debug=1", ""); code != http.StatusUnauthorized || !strings.Contains(body, "bearer") {
		t.Fatalf("without the token: %d %.100s", code, body)
	}
	if code, body := get("/debug/pprof/heap?debug=1", c.API.Token); code != http.StatusOK || !strings.Contains(body, "heap profile") {
		t.Fatalf("heap profile: %d %.100s", code, body)
	}
	if code, _ := get("/debug/pprof/goroutine?debug=1", c.API.Token); code != http.StatusOK {
		t.Fatalf("goroutines: %d", code)
	}
	// Off by default: the daemon has no pprof listener.
	if DefaultConfig().PprofAddr != "" {
		t.Fatal("pprof on by default")
	}
}
