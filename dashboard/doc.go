// Package dashboard is the admin dashboard of presenced: one page of plain
// HTML, CSS and JavaScript embedded in the binary with go:embed. No build
// step, no framework, nothing loaded from another origin: it works on an
// isolated network, and its Content-Security-Policy forbids anything else.
//
// # Mounting
//
//	dashboard.Mount(apiServer) // GET /{$} and GET /ui/, public
//
// The page is at "/" exactly and its assets under "/ui/" (Prefix), mounted
// with HandlePublic: they hold no data. Every other path keeps the API's
// JSON 404 and 405. All links are relative, so the dashboard also works
// behind a proxy that serves presenced under a path prefix. Handler serves
// the same on its own, for another mux.
//
// # What the page shows, and from where
//
//   - Fleet counts (devices, online, offline): GET /v1/stats every 2 s.
//   - Messages/s and transitions/s, and two charts of the last 5 minutes:
//     derived from the engine counters of /v1/stats (touches; online +
//     offline transitions) between polls, kept in a 150-sample ring buffer
//     in the page and drawn as inline SVG. The history starts when the page
//     opens.
//   - Fleet availability over 24 h: GET /v1/uptime?from=-24h every minute.
//   - Device search: GET /v1/devices/{id} (status, last seen, since,
//     timeout), GET /v1/devices/{id}/history and /uptime over the chosen
//     window (1 h, 24 h, 7 d, 30 d): the uptime, a timeline bar (green
//     online, red offline, grey unknown) and the list of changes. Refreshed
//     every 2 s, and at once when a live transition of that device arrives.
//     The URL keeps the device (#device=<id>) for sharing.
//   - Live transitions: GET /v1/events (server-sent events of the events
//     package: {"type":"status","id","status","previous","at","cause"} per
//     transition, and the alerts offline_alert, mass_offline and
//     mass_offline_recovered, each shown in its own words; unknown types are
//     listed raw). The newest 100 are kept. When the
//     server has no /v1/events the panel says so and retries every minute;
//     a dropped stream reconnects with backoff (1 s to 30 s) and sends
//     Last-Event-ID.
//   - Offline longest: GET /v1/devices?status=offline&offline_longer_than=...&limit=20
//     every 5 s, with a threshold selector.
//
// History, uptime and the fleet figure need the report package's endpoints
// and a history database; without them the page says "no history
// database" and shows the rest.
//
// # API token
//
// When presenced has an API token (PRESENCE_API_TOKEN), the page shows a
// banner on the first 401; paste the token in the header field. It is kept
// in sessionStorage (this tab only, gone when the tab closes) and sent as
// "Authorization: Bearer <token>" with every request. EventSource cannot
// send headers, so the page reads the event stream with fetch and parses
// the text/event-stream format itself: live transitions work with a token
// too, and no token ever appears in a URL or a log.
//
// # Testing
//
// TestDashboardInChromium drives headless Chromium (/usr/bin/chromium;
// skipped without it) with chromedp against a real engine, API server,
// report (with PostgreSQL history when reachable) and a stand-in event
// stream: it pastes the token, searches a device, watches it turn online,
// then offline after its timeout (device panel, live transitions, history
// with causes, timeline), sees a mass_offline incident in the live list, fails on any JavaScript exception or CSP
// violation, and saves a screenshot (testdata/screenshot.png). It takes
// about 5 s.
package dashboard
