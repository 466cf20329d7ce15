package wire

import (
	"fmt"
	"time"
)

// TimeLayout is every time presence writes: UTC, always six digits of
// microseconds, explicit "+00:00" offset, e.g.
// "2025-12-14T10:30:45.123456+00:00". It is Python's datetime.isoformat() of
// an aware UTC datetime (except that Python drops the fraction when it is
// zero; datetime.fromisoformat accepts both), the format of the seed's
// device:lastseen:{id} keys, a contract with existing consumers. Go reads it
// with time.Parse(time.RFC3339, s).
const TimeLayout = "2006-01-02T15:04:05.000000+00:00"

// AppendTime appends t in TimeLayout (converted to UTC, truncated to the
// microsecond). It is t.UTC().AppendFormat(dst, TimeLayout) without its
// layout interpretation: a 10,000-device batchGet formats 20,000 times.
func AppendTime(dst []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return t.AppendFormat(dst, TimeLayout)
	}
	hour, minute, sec := t.Clock()
	dst = appendDigits(dst, year, 4)
	dst = append(dst, '-')
	dst = appendDigits(dst, int(month), 2)
	dst = append(dst, '-')
	dst = appendDigits(dst, day, 2)
	dst = append(dst, 'T')
	dst = appendDigits(dst, hour, 2)
	dst = append(dst, ':')
	dst = appendDigits(dst, minute, 2)
	dst = append(dst, ':')
	dst = appendDigits(dst, sec, 2)
	dst = append(dst, '.')
	dst = appendDigits(dst, t.Nanosecond()/1000, 6)
	return append(dst, "+00:00"...)
}

// FormatTime is AppendTime as a string.
func FormatTime(t time.Time) string { return string(AppendTime(make([]byte, 0, len(TimeLayout)), t)) }

// ParseTime reads a time in TimeLayout, and the other ISO 8601 forms the
// seed may have stored (no fraction, any offset, "Z"). The result is in UTC.
func ParseTime(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("bad time %q (want e.g. 2025-12-14T10:30:45.123456+00:00): %w", s, err)
	}
	return t.UTC(), nil
}

// appendDigits appends v, 0 <= v < 10^n, as exactly n decimal digits.
func appendDigits(b []byte, v, n int) []byte {
	b = append(b, "000000"[:n]...)
	for i := len(b) - 1; v > 0; i-- {
		b[i] = byte('0' + v%10)
		v /= 10
	}
	return b
}
