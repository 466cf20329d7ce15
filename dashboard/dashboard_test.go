package dashboard_test

import (
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/presence-dev/presence/api"
	"github.com/presence-dev/presence/dashboard"
	"github.com/presence-dev/presence/engine"
)

func newServer(t *testing.T, token string) *api.Server {
	t.Helper()
	e, err := engine.New(engine.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	cfg := api.DefaultConfig()
	cfg.Token = token
	srv, err := api.New(cfg, e)
	if err != nil {
		t.Fatal(err)
	}
	dashboard.Mount(srv)
	return srv
}

func do(srv *api.Server, method, path string, hdr ...string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	srv.Handler().ServeHTTP(rec, req)
	return rec
}

// The page and its assets are public (even with a token) and locked down
// by CSP; the rest of the URL space keeps the API's JSON errors.
func TestMount(t *testing.T) {
	srv := newServer(t, "tok")
	check := func(method, path string, code int, ctype string) *httptest.ResponseRecorder {
		t.Helper()
		rec := do(srv, method, path)
		if rec.Code != code || !strings.HasPrefix(rec.Header().Get("Content-Type"), ctype) {
			t.Errorf("%s %s: %d %q, want %d %q", method, path, rec.Code, rec.Header().Get("Content-Type"), code, ctype)
		}
		return rec
	}
	page := check("GET", "/", 200, "text/html")
	if csp := page.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "connect-src 'self'") {
		t.Errorf("CSP %q", csp)
	}
	if !strings.Contains(page.Body.String(), `src="ui/app.js"`) {
		t.Error("page does not load ui/app.js")
	}
	check("HEAD", "/", 200, "text/html")
	check("GET", "/ui/app.js", 200, "text/javascript")
	check("GET", "/ui/style.css", 200, "text/css")
	check("GET", "/ui/index.html", 200, "text/html")
	check("GET", "/ui/nope.js", 404, "application/json")
	check("GET", "/ui/", 302, "")
	check("GET", "/nope", 404, "application/json")     // the API's 404
	check("GET", "/v1/nope", 404, "application/json")  // not swallowed by the dashboard
	check("POST", "/", 405, "application/json")        // the API's 405
	check("GET", "/v1/stats", 401, "application/json") // the API stays protected
	check("GET", "/healthz", 200, "application/json")  // untouched

	// Revalidation: the ETag answers 304.
	etag := page.Header().Get("ETag")
	if etag == "" || page.Header().Get("Cache-Control") != "no-cache" {
		t.Fatalf("ETag %q, Cache-Control %q", etag, page.Header().Get("Cache-Control"))
	}
	if rec := do(srv, "GET", "/", "If-None-Match", etag); rec.Code != http.StatusNotModified {
		t.Errorf("If-None-Match: %d", rec.Code)
	}
}

// The dashboard must work on an isolated network: no asset names another
// origin (the SVG namespace is a name, not a fetch).
func TestNoExternalResources(t *testing.T) {
	url := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}`)
	err := fs.WalkDir(os.DirFS("assets"), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile("assets/" + p)
		if err != nil {
			return err
		}
		for _, m := range url.FindAllString(string(b), -1) {
			if m != "http://www.w3.org" {
				t.Errorf("%s references %s", p, m)
			}
		}
		if strings.Contains(string(b), "@import") {
			t.Errorf("%s imports a stylesheet", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
