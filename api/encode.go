package api

import (
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/presence-dev/presence/engine"
)

// appendDevice appends st as a Device object. st.Status is online or
// offline.
func appendDevice(b []byte, st *engine.DeviceState) []byte {
	b = append(b, `{"id":`...)
	b = appendJSONString(b, st.ID)
	b = append(b, `,"status":"`...)
	b = append(b, st.Status.String()...)
	b = append(b, `","last_seen":`...)
	b = appendTime(b, st.LastSeen)
	b = append(b, `,"since":`...)
	b = appendTime(b, st.Since)
	b = append(b, `,"timeout_seconds":`...)
	b = strconv.AppendFloat(b, st.Timeout.Seconds(), 'f', -1, 64)
	return append(b, '}')
}

// appendTime appends t in TimeLayout, quoted, or null for the zero time.
func appendTime(b []byte, t time.Time) []byte {
	if t.IsZero() {
		return append(b, "null"...)
	}
	b = append(b, '"')
	b = appendTimestamp(b, t)
	return append(b, '"')
}

// appendTimestamp is t.UTC().AppendFormat(b, TimeLayout), five times faster:
// a 10k-device batch formats 20k times.
func appendTimestamp(b []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return t.AppendFormat(b, TimeLayout)
	}
	hour, min, sec := t.Clock()
	b = appendDigits(b, year, 4)
	b = append(b, '-')
	b = appendDigits(b, int(month), 2)
	b = append(b, '-')
	b = appendDigits(b, day, 2)
	b = append(b, 'T')
	b = appendDigits(b, hour, 2)
	b = append(b, ':')
	b = appendDigits(b, min, 2)
	b = append(b, ':')
	b = appendDigits(b, sec, 2)
	b = append(b, '.')
	b = appendDigits(b, t.Nanosecond()/1000, 6)
	return append(b, "+00:00"...)
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

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string. Any input is accepted: control
// characters are escaped, invalid UTF-8 becomes U+FFFD (as encoding/json
// does), and U+2028/U+2029 are escaped for JavaScript consumers.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// appendError appends an Error object.
func appendError(b []byte, msg string) []byte {
	b = append(b, `{"error":`...)
	b = appendJSONString(b, msg)
	return append(b, "}\n"...)
}

// WriteJSON writes body, a complete JSON document, with code and the API's
// headers. API answers describe live state, so none may be cached. Handlers
// mounted with Server.Handle (the report endpoints) answer through it too.
func WriteJSON(w http.ResponseWriter, code int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	w.Write(body) //nolint:errcheck // the client went away; nothing to do
}

// WriteError writes {"error": msg} (an Error) with code, as WriteJSON.
func WriteError(w http.ResponseWriter, code int, msg string) {
	WriteJSON(w, code, appendError(make([]byte, 0, 32+len(msg)), msg))
}

// quoteID quotes an id for an error message, bounded: ids come from
// clients.
func quoteID(id string) string {
	const max = 64
	if len(id) > max {
		return strconv.Quote(id[:max]) + "..."
	}
	return strconv.Quote(id)
}
