// Package report answers the questions an operator asks of presence beyond
// "is it online now": what did a device do (history), how available was it
// (uptime, per device and for the fleet), and which devices have been
// offline longest. The history comes from the PostgreSQL table that
// writeback.History fills with every transition; the device list comes from
// the live engine. Report starts no goroutine and keeps no state besides a
// semaphore.
//
// # Mounting
//
//	rcfg := report.DefaultConfig()
//	rcfg.Table = historyTable   // the writeback.HistoryConfig.Table in use
//	rcfg.Now = engineClock      // optional; nil is time.Now
//	rep, err := report.New(pool, eng, rcfg) // pool may be nil: no history
//	rep.Mount(apiServer)                     // behind the API token
//
// # Endpoints
//
// Every answer is JSON, never cached, with times in the API's format
// ("2025-12-14T10:30:45.123456+00:00", api.TimeLayout). Every error is
// {"error": "..."}: 400 for a bad parameter (unknown or repeated parameters
// are errors too, so a typo never silently changes the answer), 503 when
// presenced runs without a history database (history endpoints only), 504
// when a query takes longer than Config.QueryTimeout.
//
// Time parameters (from, to) accept RFC 3339 with an optional fraction
// ("2025-12-14T10:30:45Z", "2025-12-14T10:30:45.123456+00:00"), "now", or a
// time relative to now: "-1h", "-90m", "-7d", "-1d12h", "now-15m". An
// unencoded '+' before the offset arrives as a space and is read as '+'.
// Durations are Go durations with optional leading days ("90s", "10m",
// "7d", "1d12h"), at most 100 years. Windows are half-open, [from, to), and
// from must be before to.
//
// GET /v1/devices/{id}/history?from=&to=&limit= lists a device's status
// changes, newest first:
//
//	GET /v1/devices/42/history?from=-24h&limit=2
//	200 {"id":"42","from":"2025-12-13T10:30:45.000000+00:00","to":null,
//	     "changes":[{"status":"offline","at":"2025-12-14T09:12:03.000000+00:00","cause":"timeout"},
//	                {"status":"online","at":"2025-12-14T08:00:00.125000+00:00","cause":"telemetry"}],
//	     "truncated":true}
//
// from and to are unbounded when absent (null in the answer); limit defaults
// to 100 (Config.DefaultHistoryLimit), at most 10,000. truncated says more
// changes exist in the window: ask again with to set to the oldest "at".
// A device without history (or a table not yet created) has no changes.
// cause is telemetry, timeout, last_will, restart or handoff.
//
// GET /v1/devices/{id}/uptime?from=&to= is how a device spent a window:
//
//	GET /v1/devices/42/uptime?from=2025-12-14T00:00:00Z&to=2025-12-15T00:00:00Z
//	200 {"id":"42","from":"2025-12-14T00:00:00.000000+00:00","to":"2025-12-14T10:30:45.000000+00:00",
//	     "window_seconds":37845,"online_seconds":33120,"offline_seconds":4725,"unknown_seconds":0,
//	     "fraction":0.87515,"changes":3,"status_at_from":"online","status_at_to":"online"}
//
// to defaults to now and from to 24 h before to (Config.DefaultWindow). The
// rules, exact to the microsecond:
//   - the status at from is the one set by the device's last change at or
//     before from, however old (a window starting inside an online or an
//     offline period counts that period from from);
//   - a device with no change before from is "unknown" until its first
//     change: not online, and reported as unknown_seconds;
//   - the status of the last change extends to the end of the window;
//   - the window ends at min(to, now): the future is not counted (above, to
//     was clamped to now), so fraction = online_seconds / window_seconds is
//     the availability so far; null for an empty window (from after now).
//
// GET /v1/uptime?from=&to= is the fleet's availability in the window, in one
// SQL statement (LEAD over changed_at per device turns changes into
// periods, clipped to the window):
//
//	GET /v1/uptime?from=-24h
//	200 {"from":"...","to":"...","window_seconds":86400,"devices":10000,
//	     "mean_fraction":0.9731,"online_seconds":840803412.5,"known_seconds":862201004,
//	     "availability":0.97518}
//
// devices counts the devices with a known status at some point in the
// window (any change before to). mean_fraction is the mean of their
// per-device uptime fraction (unknown time counts as not online, as above:
// a device added at mid-window counts at most 0.5). availability is
// online_seconds / known_seconds, the share of device-time online while the
// status was known: it does not penalize devices added during the window.
// The statement reads every history row before to (the status at from may
// come from an arbitrarily old change), so its cost grows with the table;
// QueryTimeout bounds it and at most Config.MaxConcurrentScans fleet
// requests run at once. Measured on these 2-core machines (PostgreSQL 15,
// 100,000 devices with 10 changes each, 0.8 M rows before to): 2.0 s; a
// per-device uptime on the same table: under 1 ms. With the default 10 s
// QueryTimeout that is a few million rows: raise it, or prune the table,
// for longer histories (a daily per-device rollup would be the next step).
//
// GET /v1/devices?status=&longer_than=&offline_longer_than=&limit= lists
// devices of the live engine, longest in their current status first (since
// ascending): the operations view of what has been down longest.
//
//	GET /v1/devices?status=offline&offline_longer_than=10m&limit=2
//	200 {"devices":[{"id":"17","status":"offline","last_seen":"2025-12-14T07:01:00.000000+00:00",
//	                 "since":"2025-12-14T07:02:00.000000+00:00","timeout_seconds":60,"for_seconds":12525},
//	                {...}],
//	     "matched":31,"as_of":"2025-12-14T10:30:45.000000+00:00"}
//
// status is online, offline or all (default); longer_than keeps devices in
// their status for longer than a duration; offline_longer_than=D is short
// for status=offline&longer_than=D. limit defaults to 100, at most 10,000.
// matched counts all matching devices. Devices are those of this node's
// engine. The scan is one pass over the engine (Range, no lock held while
// filtering) keeping only the best limit devices in a heap: memory is
// O(limit) whatever the fleet (the engine copies each id out, about 16 MB
// of short-lived garbage per million devices); a million devices take about
// 0.12 s of one core on these 2-core machines (BenchmarkLongestEngine1M).
//
// # Authentication
//
// Mount uses Handle of the api.Server: the endpoints need the API's bearer
// token when one is configured, and get its request metrics and panic
// recovery.
package report
