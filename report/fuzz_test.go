package report

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/presence-dev/presence/api"
)

func FuzzParseTime(f *testing.F) {
	for _, s := range []string{"now", "-1h", "now-15m", "-7d", "-1d12h", "2025-12-14T10:30:45Z",
		"2025-12-14T10:30:45.123456+00:00", "2025-12-14T10:30:45 01:00", "9999-12-31T23:59:59-01:00",
		"-", "now-", "--1h", "-106752d", "0000-01-01T00:00:00Z", ""} {
		f.Add(s)
	}
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		tm, err := ParseTime(s, now)
		if err != nil {
			if tm != (time.Time{}) {
				t.Fatalf("%q: error %v with a time %v", s, err, tm)
			}
			return
		}
		if y := tm.Year(); y < minYear-1 || y > maxYear {
			t.Fatalf("%q: year %d", s, y)
		}
		if tm.After(now) && (strings.HasPrefix(s, "-") || strings.HasPrefix(s, "now")) {
			t.Fatalf("%q: relative time %v after now", s, tm)
		}
		// What the API prints, it reads back.
		back, err := ParseTime(tm.Format(time.RFC3339Nano), now)
		if err != nil || !back.Equal(tm) {
			t.Fatalf("%q: %v does not read back: %v, %v", s, tm, back, err)
		}
	})
}

func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"10m", "1h30m", "7d", "1d12h", "1.5h", "0", "-1m", "d", "1d-1h", "36500d", "36501d", "+1m", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDuration(s)
		if err != nil {
			return
		}
		if d < 0 || d > maxSpan {
			t.Fatalf("%q: %v out of range", s, d)
		}
		if back, err := ParseDuration(d.String()); err != nil || back != d {
			t.Fatalf("%q: %v does not read back: %v, %v", s, d, back, err)
		}
	})
}

func FuzzParseLimit(f *testing.F) {
	for _, s := range []string{"", "1", "100", "10000", "10001", "0", "-1", "1e3", "99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseLimit(s, 100, 10000)
		if err == nil && (n < 1 || n > 10000) {
			t.Fatalf("%q: %d", s, n)
		}
		if s == "" && n != 100 {
			t.Fatalf("default %d", n)
		}
	})
}

// Any query string on any endpoint is answered with JSON: 200, 400, or 503
// (no database here), never a 500 or a panic.
func FuzzQuery(f *testing.F) {
	for _, s := range []string{"status=offline&offline_longer_than=10m&limit=5", "from=-1h&to=now", "limit=1&limit=2",
		"from=2025-01-01T00:00:00Z", "%zz", "a=b", "offline_longer_than=7d&status=all", ""} {
		f.Add(s)
	}
	r := newLiveReport(f, fakeLive(nil), at(100))
	srv, err := api.New(api.DefaultConfig(), emptyStore{})
	if err != nil {
		f.Fatal(err)
	}
	r.Mount(srv)
	f.Fuzz(func(t *testing.T, q string) {
		for _, path := range []string{"/v1/devices", "/v1/devices/x/history", "/v1/devices/x/uptime", "/v1/uptime"} {
			req := httptest.NewRequest(http.MethodGet, path, nil)
			req.URL.RawQuery = q
			rec := httptest.NewRecorder()
			srv.Handler().ServeHTTP(rec, req)
			switch rec.Code {
			case 200, 400, 503:
			default:
				t.Fatalf("%s?%s: %d %s", path, q, rec.Code, rec.Body)
			}
			if !json.Valid(rec.Body.Bytes()) {
				t.Fatalf("%s?%s: not JSON: %s", path, q, rec.Body)
			}
		}
	})
}
