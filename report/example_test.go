package report_test

import (
	"fmt"
	"time"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/report"
)

// A window that starts inside an online period and ends inside an offline
// one, with the current time after its end.
func ExampleUptimeOf() {
	t := func(hhmm string) time.Time {
		v, _ := time.Parse(time.RFC3339, "2025-12-14T"+hhmm+":00Z")
		return v
	}
	history := []report.Change{
		{Status: engine.StatusOnline, At: t("08:00"), Cause: "telemetry"}, // before the window: the status at from
		{Status: engine.StatusOffline, At: t("10:15"), Cause: "timeout"},
		{Status: engine.StatusOnline, At: t("10:45"), Cause: "telemetry"},
		{Status: engine.StatusOffline, At: t("11:30"), Cause: "last_will"},
	}
	u := report.UptimeOf(history, t("10:00"), t("12:00"), t("13:00"))
	f, _ := u.Fraction()
	fmt.Println("online", u.Online, "offline", u.Offline, "unknown", u.Unknown)
	fmt.Printf("fraction %.4f, %d changes, %v at from, %v at to\n", f, u.Changes, u.Initial, u.Final)
	// Output:
	// online 1h0m0s offline 1h0m0s unknown 0s
	// fraction 0.5000, 3 changes, online at from, offline at to
}

// Time parameters: absolute, relative, and the '+' a query string turns
// into a space.
func ExampleParseTime() {
	now := time.Date(2025, 12, 14, 10, 30, 0, 0, time.UTC)
	for _, s := range []string{"-1h", "-7d", "now", "2025-12-14T10:30:45.123456+00:00", "2025-12-14T11:00:00 01:00"} {
		t, err := report.ParseTime(s, now)
		fmt.Println(s, "=>", t.Format(time.RFC3339Nano), err)
	}
	// Output:
	// -1h => 2025-12-14T09:30:00Z <nil>
	// -7d => 2025-12-07T10:30:00Z <nil>
	// now => 2025-12-14T10:30:00Z <nil>
	// 2025-12-14T10:30:45.123456+00:00 => 2025-12-14T10:30:45.123456Z <nil>
	// 2025-12-14T11:00:00 01:00 => 2025-12-14T10:00:00Z <nil>
}
