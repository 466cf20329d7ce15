package wire

import (
	"net/http"
	"strconv"
	"unicode/utf8"
)

const hexDigits = "0123456789abcdef"

// AppendJSONString appends s as a JSON string. Any input is accepted:
// control characters are escaped, invalid UTF-8 becomes U+FFFD (as
// encoding/json does), and U+2028/U+2029 are escaped for JavaScript
// consumers. Valid device ids (printable ASCII) only ever need '"' and '\'
// escaped.
func AppendJSONString[S string | []byte](b []byte, s S) []byte {
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
		// At most utf8.UTFMax bytes: the conversion of a []byte stays on
		// the stack, and is free for a string.
		r, size := utf8.DecodeRuneInString(string(s[i:min(i+utf8.UTFMax, len(s))]))
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

// AppendError appends the error object of every JSON error answer,
// {"error":"msg"}, and a newline.
func AppendError(b []byte, msg string) []byte {
	b = append(b, `{"error":`...)
	b = AppendJSONString(b, msg)
	return append(b, "}\n"...)
}

// WriteJSON writes body, a complete JSON document, with code. Answers
// describe live state, so none may be cached.
func WriteJSON(w http.ResponseWriter, code int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	w.Write(body) //nolint:errcheck // the client went away; nothing to do
}

// WriteError writes {"error": msg} with code, as WriteJSON.
func WriteError(w http.ResponseWriter, code int, msg string) {
	WriteJSON(w, code, AppendError(make([]byte, 0, 32+len(msg)), msg))
}

// Quote quotes s for an error message or a log line, cut to its first max
// bytes (and "..."): ids and parameters come from clients.
func Quote(s string, max int) string {
	if len(s) > max {
		return strconv.Quote(s[:max]) + "..."
	}
	return strconv.Quote(s)
}

// Truncate cuts s to its first max bytes (and "..."), to bound client input
// repeated in a log line or an error.
func Truncate(s string, max int) string {
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
