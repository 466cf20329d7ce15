// Package dashboard is the admin dashboard of presenced: one page of plain
// HTML, CSS and JavaScript embedded in the binary with go:embed. No build
// step, no framework, nothing loaded from another origin: it works on an
// isolated network, and its Content-Security-Policy forbids anything else.
// The page reads the API like any other client.
//
//	dashboard.Mount(apiServer) // GET /{$} and GET /ui/, public
//
// Mount serves the page at "/" exactly and its assets under Prefix with
// HandlePublic (they hold no data; the page asks for the API token
// itself); every other path keeps the API's JSON 404 and 405. Handler
// serves the same on its own, for another mux. What the page shows, and
// from which endpoints: docs/API.md.
//
// TestDashboardInChromium drives headless Chromium (skipped without it)
// against a real engine, API and report, fails on any JavaScript exception
// or CSP violation, and saves testdata/screenshot.png.
package dashboard
