package dashboard

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed assets
var assetFS embed.FS

// Prefix is the path of the dashboard's assets; the page itself is at "/".
const Prefix = "/ui/"

// Mounter is where Mount puts the dashboard: *api.Server.
type Mounter interface {
	HandlePublic(pattern string, h http.Handler)
}

// Mount adds the dashboard to m: the page at "GET /{$}" (exactly "/") and
// its assets under "GET /ui/". Both are public: they hold no data and no
// secret; the page asks for the API token itself. Other paths keep the
// API's JSON 404 and 405 answers.
func Mount(m Mounter) {
	h := Handler()
	m.HandlePublic("GET /{$}", h)
	m.HandlePublic("GET "+Prefix, h)
}

// asset is one embedded file, ready to serve.
type asset struct {
	body  []byte
	ctype string
	etag  string
}

// Handler serves the dashboard on its own: "/" is the page, "/ui/<file>"
// its assets; anything else is 404. Every answer carries a strict Content
// Security Policy (nothing is loaded from outside the server) and an ETag;
// browsers revalidate (Cache-Control: no-cache), so an upgrade shows at
// once.
func Handler() http.Handler {
	files := map[string]*asset{}
	err := fs.WalkDir(assetFS, "assets", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := assetFS.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		ctype := mime.TypeByExtension(path.Ext(p))
		if ctype == "" {
			ctype = http.DetectContentType(b)
		}
		files[strings.TrimPrefix(p, "assets/")] = &asset{body: b, ctype: ctype, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		return nil
	})
	if err != nil {
		panic("dashboard: embedded assets: " + err.Error()) // a build defect
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := ""
		switch p := r.URL.Path; {
		case p == "/":
			name = "index.html"
		case p == Prefix:
			http.Redirect(w, r, "../", http.StatusFound) // relative links need the page at "/"
			return
		case strings.HasPrefix(p, Prefix):
			name = strings.TrimPrefix(p, Prefix)
		}
		a := files[name]
		if a == nil || name != path.Clean(name) {
			notFound(w)
			return
		}
		h := w.Header()
		setSecurityHeaders(h)
		h.Set("Content-Type", a.ctype)
		h.Set("Cache-Control", "no-cache")
		h.Set("ETag", a.etag)
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(a.body))
	})
}

// csp allows the page its own scripts, styles and API calls, and nothing
// else: no inline script, no other origin, no framing.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

func setSecurityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", csp)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
}

func notFound(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusNotFound)
	w.Write([]byte(`{"error":"no such dashboard file"}` + "\n")) //nolint:errcheck // client gone
}
