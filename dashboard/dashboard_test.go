package dashboard_test

import (
	"bufio"
	"bytes"
	"encoding/json"
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

func newServer(t testing.TB, token string) *api.Server {
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

// served maps each path the dashboard answers 200 to the file it serves,
// read from the source tree (what go:embed copied).
func served(t testing.TB) map[string][]byte {
	t.Helper()
	m := map[string][]byte{}
	err := fs.WalkDir(os.DirFS("assets"), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile("assets/" + p)
		m[dashboard.Prefix+p] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	m["/"] = m[dashboard.Prefix+"index.html"]
	return m
}

var pathSeeds = []string{
	"/", "/ui/app.js", "/ui/index.html", "/ui/", "/ui", "/UI/app.js", "/ui/app.js/", "/ui//app.js", "/ui/./app.js",
	"/ui/../ui/app.js", "/ui/..", "/ui/.", "/ui/../dashboard.go", "/ui/%2e%2e/dashboard.go", "/ui/..%2fdashboard.go",
	"/ui/%2Fetc%2Fpasswd", "/ui/app.js%00", "/ui/app.js\x00", "/ui/\\..\\dashboard.go", "/ui/%5c..%5cdashboard.go",
	"/ui/assets/app.js", "/assets/app.js", "/dashboard.go", "//ui/app.js", "/ui/%61pp.js", "ui/app.js", "", "/ui/app.js?x=1",
	"/ui/app%2ejs", "/ui/\u0430pp.js", "/ui/app.js#x",
}

// FuzzHandlerPath: whatever the (decoded) path, the Handler serves one of
// the embedded files, byte for byte, at its own path only ("/" or
// "/ui/<name>"), redirects "/ui/", and answers any other path, any "..",
// backslash, NUL or percent sign, 404 in JSON. A Range header may make a
// 200 a 206 or 416; nothing else.
func FuzzHandlerPath(f *testing.F) {
	for _, p := range pathSeeds {
		f.Add(p, "")
	}
	f.Add("/ui/app.js", "bytes=0-9")
	f.Add("/ui/app.js", "bytes=99999999-")
	f.Add("/ui/../dashboard.go", "bytes=0-9")
	files := served(f)
	h := dashboard.Handler()
	f.Fuzz(func(t *testing.T, p, rng string) {
		req := httptest.NewRequest("GET", "/", nil)
		req.URL.Path, req.URL.RawPath = p, ""
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		want, ok := files[p]
		if (strings.Contains(p, "..") || strings.ContainsAny(p, "\\\x00%")) && w.Code != 404 {
			t.Fatalf("%q: %d, want 404", p, w.Code)
		}
		switch w.Code {
		case 200:
			if !ok || !bytes.Equal(w.Body.Bytes(), want) {
				t.Fatalf("%q: 200 with %d bytes, not its embedded file", p, w.Body.Len())
			}
			if w.Header().Get("Content-Security-Policy") == "" || w.Header().Get("ETag") == "" {
				t.Fatalf("%q: 200 without CSP or ETag", p)
			}
		case 206:
			ct := w.Header().Get("Content-Type")
			if !ok || rng == "" || (!strings.HasPrefix(ct, "multipart/") && !bytes.Contains(want, w.Body.Bytes())) {
				t.Fatalf("%q, Range %q: 206 %q, not part of its embedded file", p, rng, w.Body)
			}
		case 416:
			if !ok || rng == "" {
				t.Fatalf("%q, Range %q: 416", p, rng)
			}
		case 302:
			if p != dashboard.Prefix || w.Header().Get("Location") != "/" {
				t.Fatalf("%q: 302 to %q", p, w.Header().Get("Location"))
			}
		case 404:
			if ok || p == dashboard.Prefix || !json.Valid(w.Body.Bytes()) {
				t.Fatalf("%q: 404 %q", p, w.Body)
			}
		default:
			t.Fatalf("%q, Range %q: status %d", p, rng, w.Code)
		}
	})
}

// FuzzRequestTarget: through the API's mux, any request line the HTTP
// parser accepts gets a known status, and a 200 is an embedded file at its
// own path or one of the API's open routes: nothing else is ever served.
func FuzzRequestTarget(f *testing.F) {
	for _, p := range pathSeeds {
		f.Add(p)
	}
	files := served(f)
	srv := newServer(f, "tok")
	open := map[string]bool{"/healthz": true, "/readyz": true, "/metrics": true}
	f.Fuzz(func(t *testing.T, target string) {
		raw := "GET " + target + " HTTP/1.1\r\nHost: x\r\n\r\n"
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
		if err != nil {
			return
		}
		w := httptest.NewRecorder()
		srv.Handler().ServeHTTP(w, req)
		switch w.Code {
		case 200:
			want, ok := files[req.URL.Path]
			if !open[req.URL.Path] && (!ok || !bytes.Equal(w.Body.Bytes(), want)) {
				t.Fatalf("%q (path %q): 200 with %d bytes, not its embedded file", target, req.URL.Path, w.Body.Len())
			}
		case 302:
			if req.URL.Path != dashboard.Prefix {
				t.Fatalf("%q: 302", target)
			}
		case 301, 307, 308: // the mux's path cleaning
		case 400, 401, 404, 405:
			if !json.Valid(w.Body.Bytes()) {
				t.Fatalf("%q: %d with non-JSON body %q", target, w.Code, w.Body)
			}
		default:
			t.Fatalf("%q: status %d", target, w.Code)
		}
	})
}
