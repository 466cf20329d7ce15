package wire

import "strings"

// RedisMatch is the MATCH pattern (SCAN, KEYS) of every key that starts
// with prefix: prefix with the glob characters escaped, then "*".
func RedisMatch(prefix string) string {
	var b strings.Builder
	for _, c := range prefix {
		switch c {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	b.WriteByte('*')
	return b.String()
}
