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
		name, redirect := assetName(r.URL.Path)
		if redirect {
			http.Redirect(w, r, "../", http.StatusFound) // relative links need the page at "/"
			return
		}
		a := files[name] // only embedded files: the map is the allow-list
		if a == nil {
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

// assetName maps a request path to the name of the embedded asset it
// asks for: "/" is "index.html", "/ui/<name>" is name. redirect is for
// "/ui/" itself. name is "" for any other path, and for any name fs.ValidPath
// refuses ("..", ".", empty or trailing elements) or holding a backslash:
// such a name is never an embedded file's.
func assetName(p string) (name string, redirect bool) {
	switch {
	case p == "/":
		return "index.html", false
	case p == Prefix:
		return "", true
	case strings.HasPrefix(p, Prefix):
		name = p[len(Prefix):]
		if fs.ValidPath(name) && !strings.ContainsRune(name, '\\') {
			return name, false
		}
	}
	return "", false
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
