package ingest

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/presence-dev/presence/engine"
)

// Kind says what a topic pattern's messages mean.
type Kind uint8

const (
	// KindTelemetry: any message marks the device active (the zero value).
	KindTelemetry Kind = iota
	// KindStatus: the payload is "online" or "offline" (surrounding
	// whitespace ignored, any case); "offline" is an explicit transition,
	// typically a device's MQTT Last Will, and "online" acts as telemetry.
	KindStatus
)

func (k Kind) String() string {
	switch k {
	case KindTelemetry:
		return "telemetry"
	case KindStatus:
		return "status"
	default:
		return "Kind(" + strconv.Itoa(int(k)) + ")"
	}
}

// Topic is one subscribed topic pattern.
type Topic struct {
	// Pattern such as "devices/{id}/telemetry"; see Pattern for the syntax.
	Pattern string
	Kind    Kind
	// Timeout, when non-zero, is the offline timeout of every device heard
	// on this pattern (carried in engine.Touch.Timeout): e.g. 15s for fast
	// sensors and 10m for low-power devices on their own topics. Zero keeps
	// the device's current timeout (the engine's default for a new device).
	// Must be 0 or within [engine.MinTimeout, engine.MaxTimeout].
	Timeout time.Duration
}

// Spec is the topic as ParseTopicSpec reads it: "PATTERN", or
// "PATTERN=TIMEOUT" with a timeout of its own.
func (t Topic) Spec() string {
	if t.Timeout == 0 {
		return t.Pattern
	}
	return t.Pattern + "=" + t.Timeout.String()
}

// DefaultTopics returns the default patterns: telemetry on
// "devices/{id}/telemetry" and status on "devices/{id}/status".
func DefaultTopics() []Topic {
	return []Topic{
		{Pattern: "devices/{id}/telemetry", Kind: KindTelemetry},
		{Pattern: "devices/{id}/status", Kind: KindStatus},
	}
}

// ParseTopicSpec parses a topic from a flag or environment value:
// "PATTERN" or "PATTERN=TIMEOUT", where TIMEOUT is a Go duration ("90s",
// "10m") or whole seconds ("90"). The text after the last '=' is the
// timeout, so a pattern that itself contains '=' needs an explicit "=0".
func ParseTopicSpec(kind Kind, spec string) (Topic, error) {
	t := Topic{Pattern: strings.TrimSpace(spec), Kind: kind}
	if i := strings.LastIndexByte(t.Pattern, '='); i >= 0 {
		v := strings.TrimSpace(t.Pattern[i+1:])
		t.Pattern = strings.TrimSpace(t.Pattern[:i])
		d, err := parseTimeout(v)
		if err != nil {
			return Topic{}, fmt.Errorf("ingest: topic spec %q: timeout %q: want a duration like 90s or whole seconds", spec, v)
		}
		t.Timeout = d
	}
	if err := t.validate(); err != nil {
		return Topic{}, err
	}
	return t, nil
}

func parseTimeout(v string) (time.Duration, error) {
	if n, err := strconv.ParseUint(v, 10, 32); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	return time.ParseDuration(v)
}

func (t Topic) validate() error {
	if t.Kind != KindTelemetry && t.Kind != KindStatus {
		return fmt.Errorf("ingest: topic %q: unknown kind %v", t.Pattern, t.Kind)
	}
	if t.Timeout != 0 && (t.Timeout < engine.MinTimeout || t.Timeout > engine.MaxTimeout) {
		return fmt.Errorf("ingest: topic %q: timeout %v outside [%v, %v] (0 keeps the device's timeout)",
			t.Pattern, t.Timeout, engine.MinTimeout, engine.MaxTimeout)
	}
	_, err := CompilePattern(t.Pattern)
	return err
}

// Errors returned by Parser.Parse, one per drop reason. DropReason maps
// them to the reason label used in metrics.
var (
	ErrTopicTooLong    = errors.New("ingest: topic too long")
	ErrNoMatch         = errors.New("ingest: topic matches no pattern")
	ErrInvalidID       = fmt.Errorf("ingest: device id in topic: %w", engine.ErrInvalidID)
	ErrPayloadTooLarge = errors.New("ingest: payload too large")
	ErrBadStatus       = errors.New("ingest: status payload is neither online nor offline")
	// ErrQueueFull is never returned by Parse; it names the drop of a valid
	// message whose shard queue was full.
	ErrQueueFull = errors.New("ingest: shard queue full")
	// ErrClosed: the Ingester is closed (also the drop reason of a message
	// that arrives while it closes).
	ErrClosed = errors.New("ingest: closed")
	// ErrInvalidTimeout is never returned by Parse: an HTTP touch
	// (POST /v1/touches) asked for a timeout outside the engine's range.
	ErrInvalidTimeout = fmt.Errorf("ingest: timeout_seconds: %w", engine.ErrInvalidTimeout)
	// ErrProbe: the topic is a subscription probe (its id starts with
	// ProbePrefix), not a device's message. It is not a drop.
	ErrProbe = errors.New("ingest: subscription probe, not a device message")
)

// reason is a drop reason; its names are the "reason" metric label values.
type reason uint8

const (
	reasonNone reason = iota
	reasonTopicTooLong
	reasonNoMatch
	reasonInvalidID
	reasonPayloadTooLarge
	reasonBadStatus
	reasonQueueFull
	reasonClosed
	reasonInvalidTimeout
	numReasons
)

var reasonInfo = [numReasons]struct {
	name string
	err  error
}{
	reasonNone:            {"", nil},
	reasonTopicTooLong:    {"topic_too_long", ErrTopicTooLong},
	reasonNoMatch:         {"no_match", ErrNoMatch},
	reasonInvalidID:       {"invalid_id", ErrInvalidID},
	reasonPayloadTooLarge: {"payload_too_large", ErrPayloadTooLarge},
	reasonBadStatus:       {"bad_status", ErrBadStatus},
	reasonQueueFull:       {"queue_full", ErrQueueFull},
	reasonClosed:          {"closed", ErrClosed},
	reasonInvalidTimeout:  {"invalid_timeout", ErrInvalidTimeout},
}

func (r reason) String() string { return reasonInfo[r].name }

// DropReason returns the metric label of a drop error ("topic_too_long",
// "no_match", "invalid_id", "payload_too_large", "bad_status",
// "queue_full", "closed"), or "" for an error that is none of them.
func DropReason(err error) string {
	for r := reasonNone + 1; r < numReasons; r++ {
		if errors.Is(err, reasonInfo[r].err) {
			return reasonInfo[r].name
		}
	}
	return ""
}

// Message is what one MQTT message means for presence.
type Message struct {
	// ID is the device id: a substring of the topic (it keeps the topic's
	// memory alive while held; copy it to keep it long).
	ID string
	// Offline is set for a status "offline" message; every other message
	// (telemetry, status "online") is activity.
	Offline bool
	Kind    Kind
	// Timeout is the matched pattern's Topic.Timeout (0: keep the device's).
	Timeout time.Duration
	// Pattern is the index of the matched pattern in the Parser's topics.
	Pattern int
	// probe: a level of the topic starts with ProbePrefix (ID is that
	// level); the Ingester's prober takes it (Parse reports ErrProbe).
	probe bool
}

type compiledTopic struct {
	*Pattern
	kind    Kind
	timeout time.Duration
}

// Parser turns (topic, payload) into a Message. It is the subscription-level
// parser of the Ingester, exported so that other paths (a cluster node that
// receives forwarded raw messages, tests) apply the same rules. It is
// immutable and safe for concurrent use; Parse does not allocate.
type Parser struct {
	topics        []compiledTopic
	maxTopicLen   int
	maxPayloadLen int
}

// NewParser compiles topics (tried in order: the first matching pattern
// wins, so list specific patterns before general ones). Topics longer than
// maxTopicLen bytes and payloads longer than maxPayloadLen bytes are
// rejected.
func NewParser(topics []Topic, maxTopicLen, maxPayloadLen int) (*Parser, error) {
	if len(topics) == 0 {
		return nil, errors.New("ingest: no topic patterns")
	}
	if maxTopicLen < 1 || maxPayloadLen < 0 {
		return nil, fmt.Errorf("ingest: bad limits: max topic %d bytes, max payload %d bytes", maxTopicLen, maxPayloadLen)
	}
	p := &Parser{maxTopicLen: maxTopicLen, maxPayloadLen: maxPayloadLen}
	seen := make(map[string]bool, len(topics))
	for _, t := range topics {
		if err := t.validate(); err != nil {
			return nil, err
		}
		if seen[t.Pattern] {
			return nil, fmt.Errorf("ingest: topic pattern %q listed twice", t.Pattern)
		}
		seen[t.Pattern] = true
		pat, _ := CompilePattern(t.Pattern) // validated above
		p.topics = append(p.topics, compiledTopic{Pattern: pat, kind: t.Kind, timeout: t.Timeout})
	}
	return p, nil
}

// Filters returns the distinct MQTT subscription filters of the patterns,
// in pattern order.
func (p *Parser) Filters() []string {
	var out []string
	for _, t := range p.topics {
		if !contains(out, t.filter) {
			out = append(out, t.filter)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Parse checks a message and says what it means. Errors are the ErrX
// drop sentinels above (ErrTopicTooLong, ErrNoMatch, ErrInvalidID,
// ErrPayloadTooLarge, ErrBadStatus), or ErrProbe.
func (p *Parser) Parse(topic string, payload []byte) (Message, error) {
	m, r := p.parse(topic, payload)
	if m.probe {
		return Message{}, ErrProbe
	}
	return m, reasonInfo[r].err
}

func (p *Parser) parse(topic string, payload []byte) (Message, reason) {
	if len(topic) > p.maxTopicLen {
		return Message{}, reasonTopicTooLong
	}
	if level, ok := probeLevel(topic); ok {
		return Message{ID: level, Pattern: -1, probe: true}, reasonNone
	}
	for i := range p.topics {
		t := &p.topics[i]
		id, ok := t.Match(topic)
		if !ok {
			continue
		}
		if !ValidID(id) {
			return Message{}, reasonInvalidID
		}
		if len(payload) > p.maxPayloadLen {
			return Message{}, reasonPayloadTooLarge
		}
		m := Message{ID: id, Kind: t.kind, Timeout: t.timeout, Pattern: i}
		if t.kind == KindStatus {
			offline, ok := parseStatus(payload)
			if !ok {
				return Message{}, reasonBadStatus
			}
			m.Offline = offline
		}
		return m, reasonNone
	}
	return Message{}, reasonNoMatch
}

// probeLevel returns the first level of topic that starts with
// ProbePrefix: such a topic is a probe whatever pattern would match it.
func probeLevel(topic string) (string, bool) {
	for from := 0; ; {
		i := strings.Index(topic[from:], ProbePrefix)
		if i < 0 {
			return "", false
		}
		i += from
		if i == 0 || topic[i-1] == '/' {
			level := topic[i:]
			if j := strings.IndexByte(level, '/'); j >= 0 {
				level = level[:j]
			}
			return level, true
		}
		from = i + 1
	}
}

// parseStatus reads a status payload: "online" or "offline", surrounding
// whitespace ignored, any case.
func parseStatus(b []byte) (offline, ok bool) {
	b = bytes.TrimSpace(b)
	switch {
	case len(b) == len("online") && bytes.EqualFold(b, []byte("online")):
		return false, true
	case len(b) == len("offline") && bytes.EqualFold(b, []byte("offline")):
		return true, true
	}
	return false, false
}
