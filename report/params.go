package report

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/presence-dev/presence/internal/wire"
)

// maxSpan bounds a duration parameter (and a relative time): 100 years.
const maxSpan = 100 * 365 * 24 * time.Hour

// minYear and maxYear bound absolute times: PostgreSQL's timestamptz and
// the API's four-digit years both fit.
const minYear, maxYear = 1, 9999

// ParseTime reads a time parameter: "now"; an RFC 3339 time with optional
// fraction ("2025-12-14T10:30:45Z", "2025-12-14T10:30:45.123456+00:00", the
// API's own format); or a time relative to now, "-" and a duration
// ("-1h", "-90m", "-7d", "-1d12h", "now-15m"). A space before the offset is
// read as '+', since an unencoded '+' in a query string arrives as a space.
func ParseTime(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, errors.New("empty time")
	}
	if len(s) > 64 {
		return time.Time{}, errors.New("time too long")
	}
	rel := s
	if rest, ok := strings.CutPrefix(s, "now"); ok {
		if rest == "" {
			return now, nil
		}
		rel = rest
	}
	if rel[0] == '-' {
		d, err := ParseDuration(rel[1:])
		if err != nil {
			return time.Time{}, fmt.Errorf("relative time %q: %v", s, err)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil && strings.IndexByte(s, ' ') > 0 {
		t, err = time.Parse(time.RFC3339Nano, strings.Replace(s, " ", "+", 1))
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("time %q: want RFC 3339 (2025-12-14T10:30:45Z), now, or relative (-1h, -7d)", s)
	}
	if y := t.UTC().Year(); y < minYear || y > maxYear {
		return time.Time{}, fmt.Errorf("time %q: year out of range", s)
	}
	return t.UTC(), nil
}

// ParseDuration reads a non-negative duration: Go syntax ("90s", "10m",
// "1h30m", "1.5h") with a leading number of days allowed ("7d", "1d12h"),
// at most 100 years.
func ParseDuration(s string) (time.Duration, error) {
	if s == "" {
		return 0, errors.New("empty duration")
	}
	if len(s) > 64 {
		return 0, errors.New("duration too long")
	}
	var days time.Duration
	if i := strings.IndexByte(s, 'd'); i >= 0 {
		n, err := strconv.ParseUint(s[:i], 10, 32)
		if err != nil || i == 0 || s[0] == '+' {
			return 0, fmt.Errorf("duration %q: days must be a whole number (7d, 1d12h)", s)
		}
		if n > uint64(maxSpan/(24*time.Hour)) {
			return 0, fmt.Errorf("duration %q: longer than 100 years", s)
		}
		days = time.Duration(n) * 24 * time.Hour
		s = s[i+1:]
		if s == "" {
			return days, nil
		}
		if s[0] == '-' || s[0] == '+' {
			return 0, fmt.Errorf("duration %q: sign after the days", s)
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("duration %q: want 90s, 10m, 1h30m or 7d", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("duration %q: negative", s)
	}
	if d > maxSpan || days+d > maxSpan {
		return 0, fmt.Errorf("duration %q: longer than 100 years", s)
	}
	return days + d, nil
}

// ParseLimit reads a limit in [1, max]; an empty s is def.
func ParseLimit(s string, def, max int) (int, error) {
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("limit %q: want a whole number from 1 to %d", wire.Truncate(s, 32), max)
	}
	if n > max {
		return 0, fmt.Errorf("limit %d is above the maximum %d", n, max)
	}
	return n, nil
}
