package ingest

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/presence-dev/presence/engine"
)

// ErrInvalidPattern is wrapped by every *PatternError.
var ErrInvalidPattern = errors.New("ingest: invalid topic pattern")

// PatternError says why a topic pattern was rejected.
type PatternError struct {
	Pattern string
	Reason  string
}

func (e *PatternError) Error() string {
	return fmt.Sprintf("ingest: invalid topic pattern %q: %s", e.Pattern, e.Reason)
}

// Unwrap returns ErrInvalidPattern.
func (e *PatternError) Unwrap() error { return ErrInvalidPattern }

// IDPlaceholder is the segment of a topic pattern that holds the device id.
const IDPlaceholder = "{id}"

type segKind uint8

const (
	segLiteral segKind = iota // must equal lit
	segAny                    // MQTT "+": any one level
	segID                     // {id}: any one level, captured
)

type segment struct {
	kind segKind
	lit  string
}

// Pattern is a compiled topic pattern such as "devices/{id}/telemetry".
//
// A pattern is a list of levels separated by '/'. Exactly one level is
// "{id}" (the device id); the others are literal, "+" (any one level) or,
// as the last level only, "#" (any number of further levels, including
// none, as in MQTT). The MQTT subscription filter is the pattern with
// "{id}" replaced by "+". A Pattern is immutable and safe for concurrent use.
type Pattern struct {
	text   string
	filter string
	segs   []segment // without a trailing "#"
	multi  bool      // the pattern ends with "#"
	// dollarSafe is false when the first level is a wildcard or {id}: such a
	// level never matches a topic starting with '$' (MQTT 4.7.2).
	dollarSafe bool
}

// CompilePattern parses and validates a topic pattern.
// Errors are *PatternError and wrap ErrInvalidPattern.
func CompilePattern(s string) (*Pattern, error) {
	bad := func(format string, args ...any) (*Pattern, error) {
		return nil, &PatternError{Pattern: s, Reason: fmt.Sprintf(format, args...)}
	}
	switch {
	case s == "":
		return bad("empty")
	case len(s) > 65535:
		return bad("longer than 65535 bytes")
	case !utf8.ValidString(s):
		return bad("not valid UTF-8")
	case strings.IndexByte(s, 0) >= 0:
		return bad("contains a NUL byte")
	case strings.HasPrefix(s, "$share/"):
		return bad("starts with $share/: set Config.ShareGroup instead")
	}
	levels := strings.Split(s, "/")
	p := &Pattern{text: s, segs: make([]segment, 0, len(levels))}
	filter := make([]string, len(levels))
	ids := 0
	for i, l := range levels {
		filter[i] = l
		switch {
		case l == IDPlaceholder:
			ids++
			if ids > 1 {
				return bad("more than one %s segment", IDPlaceholder)
			}
			filter[i] = "+"
			p.segs = append(p.segs, segment{kind: segID})
		case l == "+":
			p.segs = append(p.segs, segment{kind: segAny})
		case l == "#":
			if i != len(levels)-1 {
				return bad("'#' must be the last segment")
			}
			p.multi = true
		case strings.Contains(l, IDPlaceholder):
			return bad("%s must be a whole segment, got %q", IDPlaceholder, l)
		case strings.ContainsAny(l, "+#"):
			return bad("wildcards '+' and '#' must be whole segments, got %q", l)
		case len(l) >= 2 && l[0] == '{' && l[len(l)-1] == '}':
			return bad("unknown placeholder %q (only %s is supported)", l, IDPlaceholder)
		default:
			p.segs = append(p.segs, segment{kind: segLiteral, lit: l})
		}
	}
	if ids == 0 {
		return bad("no %s segment", IDPlaceholder)
	}
	p.dollarSafe = p.segs[0].kind == segLiteral
	p.filter = strings.Join(filter, "/")
	return p, nil
}

// String returns the pattern as written.
func (p *Pattern) String() string { return p.text }

// Filter returns the MQTT subscription filter: the pattern with {id}
// replaced by "+".
func (p *Pattern) Filter() string { return p.filter }

// Topic returns a topic the pattern matches whose {id} level is id: "+"
// levels are "_", a final "#" stands for no level.
func (p *Pattern) Topic(id string) string {
	levels := make([]string, len(p.segs))
	for i, s := range p.segs {
		switch s.kind {
		case segLiteral:
			levels[i] = s.lit
		case segAny:
			levels[i] = "_"
		case segID:
			levels[i] = id
		}
	}
	return strings.Join(levels, "/")
}

// Match reports whether topic matches the pattern and returns the {id}
// level. The id is a substring of topic (no allocation) and is not
// validated here; it may be empty.
func (p *Pattern) Match(topic string) (id string, ok bool) {
	if !p.dollarSafe && len(topic) > 0 && topic[0] == '$' {
		return "", false
	}
	rest, done := topic, false
	for i := range p.segs {
		if done {
			return "", false // the topic has fewer levels than the pattern
		}
		level := rest
		if j := strings.IndexByte(rest, '/'); j >= 0 {
			level, rest = rest[:j], rest[j+1:]
		} else {
			done = true
		}
		switch s := &p.segs[i]; s.kind {
		case segLiteral:
			if level != s.lit {
				return "", false
			}
		case segID:
			id = level
		}
	}
	if done || p.multi {
		return id, true
	}
	return "", false
}

// idByte[c] says whether byte c may appear in a device id: printable ASCII
// (0x21..0x7E) except the MQTT separators and wildcards '/', '+', '#'.
var idByte = func() (t [256]bool) {
	for c := 0x21; c <= 0x7e; c++ {
		t[c] = c != '/' && c != '+' && c != '#'
	}
	return t
}()

// ValidID reports whether id is a valid device id: 1 to engine.MaxIDLen
// bytes of printable ASCII without '/', '+' or '#'. It is the same rule as
// the engine's; ingest applies it before anything is queued.
func ValidID(id string) bool {
	if len(id) == 0 || len(id) > engine.MaxIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if !idByte[id[i]] {
			return false
		}
	}
	return true
}
