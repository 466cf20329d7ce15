package ingest

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// FuzzParseTopic checks Parse against the strings.Split reference: never a
// panic, the same match decision, and a well-formed Message.
func FuzzParseTopic(f *testing.F) {
	for _, s := range []struct{ topic, payload string }{
		{"devices/d1/telemetry", "{}"},
		{"devices/d1/status", "offline"},
		{"devices/d1/status", " Online\n"},
		{"devices/d1/status", "gone"},
		{"devices//telemetry", ""},
		{"devices/a b/telemetry", ""},
		{"devices/caf\u00e9/telemetry", ""},
		{"devices/d1/telemetry/extra", ""},
		{"devices/d1", ""},
		{"slow/d1/telemetry", "x"},
		{"site/paris/devices/d7/telemetry", "x"},
		{"site/paris/devices/d7/x/y", "x"},
		{"/", ""},
		{"", ""},
		{"$SYS/broker/uptime", "1"},
		{"devices/" + strings.Repeat("x", 300) + "/telemetry", ""},
		{"devices/\x00/telemetry", ""},
	} {
		f.Add(s.topic, []byte(s.payload))
	}
	p, err := NewParser([]Topic{
		{Pattern: "devices/{id}/telemetry"},
		{Pattern: "devices/{id}/status", Kind: KindStatus},
		{Pattern: "slow/{id}/telemetry"},
		{Pattern: "site/+/devices/{id}/#"},
	}, 256, 64)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, topic string, payload []byte) {
		m, err := p.Parse(topic, payload)
		// Reference: first pattern that splitMatch accepts.
		refIdx, refID := -1, ""
		for i, tp := range p.topics {
			if id, ok := splitMatch(tp.String(), topic); ok {
				refIdx, refID = i, id
				break
			}
		}
		switch {
		case len(topic) > 256:
			if err != ErrTopicTooLong {
				t.Fatalf("long topic: err %v", err)
			}
			return
		case refIdx < 0:
			if err != ErrNoMatch {
				t.Fatalf("reference finds no match for %q, Parse gave %+v, %v", topic, m, err)
			}
			return
		case !ValidID(refID):
			if err != ErrInvalidID {
				t.Fatalf("invalid id %q in %q: Parse gave %+v, %v", refID, topic, m, err)
			}
			return
		case len(payload) > 64:
			if err != ErrPayloadTooLarge {
				t.Fatalf("large payload: err %v", err)
			}
			return
		}
		if err == ErrBadStatus && p.topics[refIdx].kind == KindStatus {
			return
		}
		if err != nil {
			t.Fatalf("Parse(%q, %q): %v; reference matched pattern %d id %q", topic, payload, err, refIdx, refID)
		}
		if m.ID != refID || m.Pattern != refIdx || m.Kind != p.topics[refIdx].kind {
			t.Fatalf("Parse(%q) = %+v; reference: pattern %d id %q", topic, m, refIdx, refID)
		}
		if !strings.Contains(topic, m.ID) {
			t.Fatalf("id %q is not part of topic %q", m.ID, topic)
		}
		if m.Offline && !bytes.EqualFold(bytes.TrimSpace(payload), []byte("offline")) {
			t.Fatalf("offline from payload %q", payload)
		}
	})
}

// FuzzCompilePattern checks that any accepted pattern has a valid MQTT
// filter, and matches a topic built from it with the id it was built with.
func FuzzCompilePattern(f *testing.F) {
	for _, s := range []string{
		"devices/{id}/telemetry", "{id}", "a/+/{id}/#", "a//{id}/", "{id}/{id}",
		"a/{id}x", "#/{id}", "a/{x}/{id}", "$share/g/{id}", "$aws/{id}", "",
	} {
		f.Add(s, "dev-1")
	}
	f.Fuzz(func(t *testing.T, pattern, id string) {
		p, err := CompilePattern(pattern)
		if err != nil {
			if p != nil {
				t.Fatal("non-nil pattern with an error")
			}
			return
		}
		filter := p.Filter()
		if strings.Count(pattern, IDPlaceholder) < 1 || strings.Contains(filter, IDPlaceholder) {
			t.Fatalf("pattern %q: filter %q", pattern, filter)
		}
		for i, l := range strings.Split(filter, "/") {
			if strings.ContainsAny(l, "+#") && l != "+" && l != "#" {
				t.Fatalf("pattern %q: filter %q has a bad level %q", pattern, filter, l)
			}
			if l == "#" && i != strings.Count(filter, "/") {
				t.Fatalf("pattern %q: '#' not last in %q", pattern, filter)
			}
		}
		if !ValidID(id) || (strings.HasPrefix(pattern, IDPlaceholder) && id[0] == '$') {
			return
		}
		// Build a topic: {id} -> id, '+' -> "x", '#' -> "y/z".
		levels := strings.Split(pattern, "/")
		for i, l := range levels {
			switch l {
			case IDPlaceholder:
				levels[i] = id
			case "+":
				levels[i] = "x"
			case "#":
				levels[i] = "y/z"
			}
		}
		topic := strings.Join(levels, "/")
		got, ok := p.Match(topic)
		if !ok || got != id {
			t.Fatalf("pattern %q: Match(%q) = %q, %v; want %q", pattern, topic, got, ok, id)
		}
	})
}

// FuzzTouches: any body gets a JSON answer with a known status and never
// a panic; an accepted request accounts for each of its touches exactly
// once (queued or rejected), as encoding/json reads them.
func FuzzTouches(f *testing.F) {
	for _, s := range []string{
		`{"ids":["a","b"]}`,
		`{"touches":[{"id":"c","timeout_seconds":60},{"id":"d"}]}`,
		`{"ids":["a"],"touches":[{"id":"x/y","timeout_seconds":0.1}]}`,
		`{"IDS":["a"]}`, `{"ids":["a"]} x`, `{"ids":[1]}`, `{}`, `null`, `{"touches":[{"id":"\u00e9\ud800"}]}`,
	} {
		f.Add([]byte(s))
	}
	in := newUnstarted(f, &fakeHandler{}, func(c *Config) { c.BatchDelay = 0; c.QueueSize = 1 << 16 })
	f.Fuzz(func(t *testing.T, body []byte) {
		w := postTouches(in, string(body))
		switch w.Code {
		case http.StatusOK, http.StatusServiceUnavailable:
			resp := decodeTouchResponse(t, w)
			var req TouchRequest
			if err := json.Unmarshal(body, &req); err != nil {
				t.Fatalf("accepted a body encoding/json refuses (%v): %q", err, body)
			}
			if n := len(req.IDs) + len(req.Touches); resp.Accepted+len(resp.Rejected) != n {
				t.Fatalf("%d touches, answered %d accepted + %d rejected: %q", n, resp.Accepted, len(resp.Rejected), body)
			}
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			var e struct{ Error string }
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == "" {
				t.Fatalf("%d without a JSON error: %q", w.Code, w.Body)
			}
		default:
			t.Fatalf("status %d for %q", w.Code, body)
		}
	})
}
