package events

import (
	"strconv"
	"time"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/wire"
)

// Type is the kind of an event; its String is the JSON "type" field.
type Type uint8

// Event types. See the package documentation for each one's JSON.
const (
	// TypeStatus: one device changed status (one engine.Transition).
	TypeStatus Type = iota + 1
	// TypeOfflineAlert: a device has been offline for AlertConfig.OfflineAfter.
	TypeOfflineAlert
	// TypeMassOffline: many devices went offline together (an incident).
	TypeMassOffline
	// TypeMassOfflineRecovered: most devices of an incident are back.
	TypeMassOfflineRecovered
	// TypeRemoved: a device was decommissioned (engine.Decommission): the
	// engine and the stores forgot it.
	TypeRemoved
	// TypeFlapping: a device changed status more than FlapConfig.Changes
	// times within FlapConfig.Window.
	TypeFlapping
	// TypeFlappingStopped: a flapping device has been stable for
	// FlapConfig.Window.
	TypeFlappingStopped
	numTypes = iota
)

var typeNames = [...]string{"", "status", "offline_alert", "mass_offline", "mass_offline_recovered", "removed",
	"flapping", "flapping_stopped"}

func (t Type) String() string {
	if int(t) < len(typeNames) && t != 0 {
		return typeNames[t]
	}
	return "unknown"
}

// ParseType is the inverse of Type.String.
func ParseType(s string) (Type, bool) {
	for i := 1; i < len(typeNames); i++ {
		if typeNames[i] == s {
			return Type(i), true
		}
	}
	return 0, false
}

// TimeLayout is the layout of every time in an event: UTC, microseconds,
// explicit "+00:00" offset, like the Redis last-seen contract. Python reads
// it with datetime.fromisoformat, Go with time.Parse(time.RFC3339, ...).
const TimeLayout = wire.TimeLayout

// Event is one published event as consumers decode it: every destination
// carries this JSON (the stream carries the same fields as entry fields).
// Which fields are present depends on Type; see the package documentation.
// Times decode from the TimeLayout strings with encoding/json.
type Event struct {
	Type      string    `json:"type"`
	ID        string    `json:"id,omitempty"`
	Status    string    `json:"status,omitempty"`
	Previous  string    `json:"previous,omitempty"`
	At        time.Time `json:"at"`
	Cause     string    `json:"cause,omitempty"`
	Coalesced bool      `json:"coalesced,omitempty"`

	// offline_alert (when the offline period began), flapping (the first
	// change counted), flapping_stopped (when the flapping began)
	Since          time.Time `json:"since,omitzero"`
	OfflineSeconds float64   `json:"offline_seconds,omitempty"`

	// mass_offline, mass_offline_recovered
	Incident        string    `json:"incident,omitempty"`
	Started         time.Time `json:"started,omitzero"`
	Count           int       `json:"count,omitempty"`
	Fleet           int       `json:"fleet,omitempty"`
	Share           float64   `json:"share,omitempty"`
	WindowSeconds   float64   `json:"window_seconds,omitempty"`
	Recovered       int       `json:"recovered,omitempty"`
	StillOffline    int       `json:"still_offline,omitempty"`
	DurationSeconds float64   `json:"duration_seconds,omitempty"`
}

// incident is an immutable snapshot of a mass-offline incident carried by
// the two incident events.
type incident struct {
	id           string
	started      int64 // unix µs
	window       time.Duration
	count        int // mass_offline: devices at the trigger; recovered: all members
	fleet        int
	share        float64 // count/fleet at the trigger; recovered/count at recovery
	recovered    int
	stillOffline int
}

// rec is one queued event, compact (48 bytes): destination queues hold
// these, and each destination encodes them when it sends. The id string is
// shared with the engine's transition, not copied.
type rec struct {
	id        string
	at        int64     // unix µs
	since     int64     // offline_alert: unix µs the offline period began
	inc       *incident // incident events
	typ       Type
	status    engine.Status
	prev      engine.Status
	cause     engine.Cause
	coalesced bool
}

// statusRec is the event of one transition: status, or removed for a
// transition to StatusUnknown.
func statusRec(t *engine.Transition) rec {
	typ := TypeStatus
	if t.To == engine.StatusUnknown {
		typ = TypeRemoved
	}
	return rec{id: t.ID, at: t.At.UnixMicro(), typ: typ, status: t.To, prev: t.From, cause: t.Cause, coalesced: t.Coalesced}
}

// field is one key/value of an event, in JSON order. Values are either
// strings (quoted in JSON) or numbers/booleans (raw).
type field struct {
	key string
	val []byte
	raw bool // a JSON number or boolean, not a string
}

// fields appends the event's fields to dst, using buf for value bytes. The
// same list makes the JSON object and the stream entry, so the two never
// disagree.
func (r *rec) fields(dst []field, buf []byte) ([]field, []byte) {
	// Values are appended to buf, which may be reallocated: record offsets
	// first, slice at the end.
	type span struct {
		key        string
		start, end int
		raw        bool
	}
	var spans [12]span
	n := 0
	add := func(key string, raw bool, appendVal func([]byte) []byte) {
		start := len(buf)
		buf = appendVal(buf)
		spans[n] = span{key, start, len(buf), raw}
		n++
	}
	str := func(s string) func([]byte) []byte { return func(b []byte) []byte { return append(b, s...) } }
	tm := func(us int64) func([]byte) []byte {
		return func(b []byte) []byte { return wire.AppendTime(b, time.UnixMicro(us)) }
	}
	num := func(v int) func([]byte) []byte {
		return func(b []byte) []byte { return strconv.AppendInt(b, int64(v), 10) }
	}
	flt := func(v float64) func([]byte) []byte {
		return func(b []byte) []byte { return strconv.AppendFloat(b, v, 'f', -1, 64) }
	}

	add("type", false, str(r.typ.String()))
	switch r.typ {
	case TypeStatus:
		add("id", false, str(r.id))
		add("status", false, str(r.status.String()))
		add("previous", false, str(r.prev.String()))
		add("at", false, tm(r.at))
		add("cause", false, str(r.cause.String()))
		if r.coalesced {
			add("coalesced", true, str("true"))
		}
	case TypeRemoved:
		add("id", false, str(r.id))
		add("previous", false, str(r.prev.String()))
		add("at", false, tm(r.at))
		add("cause", false, str(r.cause.String()))
	case TypeFlapping, TypeFlappingStopped:
		add("id", false, str(r.id))
		add("status", false, str(r.status.String()))
		add("at", false, tm(r.at))
		add("since", false, tm(r.since))
		if r.typ == TypeFlappingStopped {
			add("duration_seconds", true, flt(roundTo(float64(r.at-r.since)/1e6, 6)))
		}
	case TypeOfflineAlert:
		add("id", false, str(r.id))
		add("status", false, str(engine.StatusOffline.String()))
		add("at", false, tm(r.at))
		add("cause", false, str(r.cause.String()))
		add("since", false, tm(r.since))
		add("offline_seconds", true, flt(roundTo(float64(r.at-r.since)/1e6, 6)))
	case TypeMassOffline:
		in := r.inc
		add("incident", false, str(in.id))
		add("at", false, tm(r.at))
		add("count", true, num(in.count))
		add("fleet", true, num(in.fleet))
		add("share", true, flt(roundTo(in.share, 6)))
		add("window_seconds", true, flt(in.window.Seconds()))
	case TypeMassOfflineRecovered:
		in := r.inc
		add("incident", false, str(in.id))
		add("at", false, tm(r.at))
		add("started", false, tm(in.started))
		add("count", true, num(in.count))
		add("recovered", true, num(in.recovered))
		add("still_offline", true, num(in.stillOffline))
		add("fleet", true, num(in.fleet))
		add("share", true, flt(roundTo(in.share, 6)))
		add("duration_seconds", true, flt(roundTo(float64(r.at-in.started)/1e6, 6)))
	}
	for _, s := range spans[:n] {
		dst = append(dst, field{key: s.key, val: buf[s.start:s.end:s.end], raw: s.raw})
	}
	return dst, buf
}

func roundTo(v float64, digits int) float64 {
	p := 1.0
	for range digits {
		p *= 10
	}
	if v < 0 {
		return -float64(int64(-v*p+0.5)) / p
	}
	return float64(int64(v*p+0.5)) / p
}

// encoder turns recs into JSON, reusing its buffers. Not safe for
// concurrent use: each destination worker has its own.
type encoder struct {
	fs  []field
	buf []byte
}

// appendJSON appends r as one JSON object to dst.
func (e *encoder) appendJSON(dst []byte, r *rec) []byte {
	e.fs, e.buf = r.fields(e.fs[:0], e.buf[:0])
	dst = append(dst, '{')
	for i, f := range e.fs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, '"')
		dst = append(dst, f.key...)
		dst = append(dst, '"', ':')
		if f.raw {
			dst = append(dst, f.val...)
		} else {
			dst = wire.AppendJSONString(dst, f.val)
		}
	}
	return append(dst, '}')
}
