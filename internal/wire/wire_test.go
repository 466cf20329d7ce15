package wire

import (
	"encoding/json"
	"math/rand/v2"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

var t0 = time.Date(2025, 12, 14, 10, 30, 45, 123456789, time.UTC)

func TestAppendTime(t *testing.T) {
	check := func(in time.Time, want string) {
		t.Helper()
		if got := string(AppendTime(nil, in)); got != want {
			t.Errorf("AppendTime(%v) = %s, want %s", in, got, want)
		}
		if got := FormatTime(in); got != want {
			t.Errorf("FormatTime(%v) = %s, want %s", in, got, want)
		}
	}
	check(t0, "2025-12-14T10:30:45.123456+00:00")
	check(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), "2025-01-02T03:04:05.000000+00:00")
	check(time.Date(2025, 1, 2, 5, 4, 5, 999, time.FixedZone("CEST", 2*3600)), "2025-01-02T03:04:05.000000+00:00")

	// The fast formatter agrees with time.Format, edge years included.
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 10000 {
		ts := time.Unix(r.Int64N(400*365*86400)-200*365*86400, r.Int64N(1e9))
		switch i {
		case 0:
			ts = time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)
		case 1:
			ts = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
		case 2:
			ts = time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC)
		case 3:
			ts = time.Date(1, 1, 1, 0, 0, 0, 1000, time.UTC)
		}
		if got, want := string(AppendTime(nil, ts)), ts.UTC().Format(TimeLayout); got != want {
			t.Fatalf("AppendTime(%v) = %s, want %s", ts, got, want)
		}
	}
}

// What is written reads back, with Go's RFC 3339 parser and ParseTime, to
// the same microsecond; ParseTime also takes the seed's other forms.
func TestParseTime(t *testing.T) {
	for _, ts := range []time.Time{t0, time.Date(2025, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600))} {
		s := FormatTime(ts)
		if len(s) != len("2025-12-14T10:30:45.123456+00:00") {
			t.Fatalf("%q: not fixed width", s)
		}
		for _, parse := range []func(string) (time.Time, error){ParseTime, func(s string) (time.Time, error) { return time.Parse(time.RFC3339, s) }} {
			back, err := parse(s)
			if err != nil || !back.Equal(ts.Truncate(time.Microsecond)) {
				t.Fatalf("parse back %q: %v %v", s, back, err)
			}
		}
	}
	for in, want := range map[string]time.Time{
		"2025-12-14T10:30:45+00:00":        time.Date(2025, 12, 14, 10, 30, 45, 0, time.UTC),
		"2025-12-14T10:30:45.5Z":           time.Date(2025, 12, 14, 10, 30, 45, 5e8, time.UTC),
		"2025-12-14T12:30:45.123456+02:00": time.Date(2025, 12, 14, 10, 30, 45, 123456000, time.UTC),
	} {
		got, err := ParseTime(in)
		if err != nil || !got.Equal(want) || got.Location() != time.UTC {
			t.Errorf("ParseTime(%q) = %v, %v; want %v in UTC", in, got, err, want)
		}
	}
	if _, err := ParseTime("yesterday"); err == nil || !strings.Contains(err.Error(), "yesterday") {
		t.Errorf("ParseTime(yesterday): %v", err)
	}
}

func TestFormatTimeRoundTrip(t *testing.T) {
	check := func(in time.Time, want string) {
		t.Helper()
		if got := FormatTime(in); got != want {
			t.Fatalf("FormatTime(%v) = %q, want %q", in, got, want)
		}
		back, err := ParseTime(want)
		if err != nil || !back.Equal(in.Truncate(time.Microsecond)) {
			t.Fatalf("ParseTime(%q) = %v, %v; want %v", want, back, err, in.Truncate(time.Microsecond))
		}
	}
	check(t0, "2025-12-14T10:30:45.123456+00:00")
	check(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), "2025-01-02T03:04:05.000000+00:00")
	check(time.Date(2025, 1, 2, 3, 4, 5, 999, time.UTC), "2025-01-02T03:04:05.000000+00:00")
	check(time.Date(2025, 6, 1, 12, 0, 0, 1000, time.FixedZone("CEST", 2*3600)), "2025-06-01T10:00:00.000001+00:00")
	check(time.Date(999, 12, 31, 23, 59, 59, 999999000, time.UTC), "0999-12-31T23:59:59.999999+00:00")
}

func TestParseTimeRejects(t *testing.T) {
	for _, bad := range []string{"", "yesterday", "2025-12-14", "2025-12-14T10:30:45"} {
		if _, err := ParseTime(bad); err == nil {
			t.Errorf("ParseTime(%q) succeeded", bad)
		}
	}
}

func FuzzParseTime(f *testing.F) {
	f.Add("2025-12-14T10:30:45.123456+00:00")
	f.Add("2025-12-14T10:30:45Z")
	f.Add("0001-01-01T00:00:00.000000+00:00")
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseTime(s)
		if err != nil {
			return
		}
		// Whatever parses formats to the canonical form, which parses back
		// to the same instant (at microsecond precision).
		canon := FormatTime(got)
		back, err := ParseTime(canon)
		if got.Year() < 0 || got.Year() > 9999 {
			return // Python cannot hold it either
		}
		if err != nil || !back.Equal(got.Truncate(time.Microsecond)) {
			t.Fatalf("%q -> %v -> %q -> %v, %v", s, got, canon, back, err)
		}
	})
}

func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{
		"", "abc", `a"b\c`, "\x00\x01\x1f\x7f", "tab\there\nnl\rcr", "é日本", "\u2028\u2029",
		"bad\xffutf8\xc3", "<script>&", strings.Repeat("x", 300),
	} {
		checkJSONString(t, s)
	}
}

// checkJSONString: the output is valid JSON that reads back as
// encoding/json reads s (U+FFFD for bad bytes), the same from a string and
// from bytes.
func checkJSONString(t *testing.T, s string) {
	t.Helper()
	got := AppendJSONString(nil, s)
	if b := AppendJSONString(nil, []byte(s)); string(b) != string(got) {
		t.Fatalf("%q: string %s, bytes %s", s, got, b)
	}
	if !json.Valid(got) {
		t.Fatalf("%q -> invalid JSON %s", s, got)
	}
	var back, wantBack string
	if err := json.Unmarshal(got, &back); err != nil {
		t.Fatal(err)
	}
	want, _ := json.Marshal(s)
	json.Unmarshal(want, &wantBack)
	if back != wantBack {
		t.Fatalf("%q -> %s reads back %q, want %q", s, got, back, wantBack)
	}
}

func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "1001", `q"\`, "\xff", "\u2028", "é\x00"} {
		f.Add(s)
	}
	f.Fuzz(checkJSONString)
}

func TestWriteError(t *testing.T) {
	w := httptest.NewRecorder()
	WriteError(w, 404, `no device "x"`)
	if w.Code != 404 || w.Body.String() != `{"error":"no device \"x\""}`+"\n" ||
		w.Header().Get("Content-Type") != "application/json" || w.Header().Get("Cache-Control") != "no-store" {
		t.Fatalf("%d %q %v", w.Code, w.Body.String(), w.Header())
	}
}

func TestQuote(t *testing.T) {
	if got := Quote("abc", 64); got != `"abc"` {
		t.Error(got)
	}
	if got := Quote(strings.Repeat("x", 70), 64); got != `"`+strings.Repeat("x", 64)+`"...` {
		t.Error(got)
	}
}

func TestLabel(t *testing.T) {
	check := func(value, want string) {
		t.Helper()
		if got := Label("route", value); got != want {
			t.Errorf("Label(%q) = %s, want %s", value, got, want)
		}
	}
	check("GET /v1/devices/{id}", `route="GET /v1/devices/{id}"`)
	check(`a"b\c`+"\nd", `route="a\"b\\c\nd"`)
	check("é", `route="é"`) // UTF-8 stays as it is
	check("", `route=""`)
}

// Whatever a value holds, the metric name stays one the metrics package
// accepts.
func FuzzLabel(f *testing.F) {
	for _, s := range []string{"x", `"`, `\`, "\n", `\"`, "webhook_0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		defer func() {
			if p := recover(); p != nil {
				t.Fatalf("value %q: %v", v, p)
			}
		}()
		metrics.NewSet().NewCounter("x_total{" + Label("l", v) + "}")
	})
}
