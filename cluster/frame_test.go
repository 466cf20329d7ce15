package cluster

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/presence-dev/presence/engine"
)

// splitFrame checks the header of one encoded frame and returns its type
// and body.
func splitFrame(t testing.TB, b []byte) (byte, []byte) {
	t.Helper()
	typ, body, _, err := readFrame(bytes.NewReader(b), nil, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(body)+frameHeaderLen != len(b) {
		t.Fatalf("frame of %d bytes, body %d", len(b), len(body))
	}
	return typ, body
}

func TestBatchRoundTrip(t *testing.T) {
	now := time.Now().UnixNano()
	cases := map[string][]msg{
		"empty": {},
		"one":   {{id: "sensor-1", at: now}},
		"mixed": {
			{id: "a", at: now},
			{id: "b", at: now - 5*int64(time.Millisecond), flags: msgOffline},
			{id: "c", at: now + 3, timeout: 90 * time.Second},
			{id: "d", at: now, timeout: 1500*time.Millisecond + 7}, // not whole ms
			{id: "e", flags: msgZeroTime},
			{id: "f", at: now, flags: msgHop | msgOffline},
			{id: "h", at: now, flags: msgAPI | msgOffline},
			{id: "i", at: now, flags: msgAPI | msgHop},
			{id: "j", timeout: time.Hour, flags: msgOverride | msgZeroTime},
			{id: "k", flags: msgOverride | msgZeroTime | msgHop}, // a clear
			{id: "l", at: now, flags: msgRemove},
			{id: string(bytes.Repeat([]byte{'x'}, 128)), at: 0},
			{id: "g", at: -1},
		},
		"zero time first": {{id: "z", flags: msgZeroTime}, {id: "y", at: now}},
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			typ, body := splitFrame(t, appendBatch(nil, in))
			if typ != frameBatch {
				t.Fatalf("type %d", typ)
			}
			out, err := decodeBatch(body, nil, 1<<16)
			if err != nil {
				t.Fatal(err)
			}
			if len(in) == 0 && len(out) == 0 {
				return
			}
			if !reflect.DeepEqual(in, out) {
				t.Fatalf("round trip:\n in  %+v\n out %+v", in, out)
			}
		})
	}
}

func TestTouchMsg(t *testing.T) {
	at := time.Date(2025, 12, 14, 10, 30, 45, 123456789, time.UTC)
	m := touchMsg(&engine.Touch{ID: "x", At: at, Timeout: time.Minute})
	if !m.time().Equal(at) || m.timeout != time.Minute || m.flags != 0 {
		t.Fatalf("touchMsg: %+v", m)
	}
	m = offlineMsg("x", time.Time{})
	if !m.time().IsZero() || m.flags != msgOffline|msgZeroTime {
		t.Fatalf("offlineMsg: %+v", m)
	}
	for _, s := range []engine.Status{engine.StatusOnline, engine.StatusOffline} {
		if m = statusMsg("x", s, at); !m.time().Equal(at) || m.flags&msgAPI == 0 || m.status() != s {
			t.Fatalf("statusMsg %v: %+v", s, m)
		}
	}
}

func TestStateRoundTrip(t *testing.T) {
	at := time.Unix(1_765_000_000, 123456789)
	in := []engine.DeviceState{
		{ID: "a", Status: engine.StatusOnline, LastSeen: at, Since: at.Add(-time.Hour), Timeout: time.Minute, TimeoutSource: engine.TimeoutDevice},
		{ID: "b", Status: engine.StatusOffline, LastSeen: at, Since: at.Add(time.Minute), TimeoutSource: engine.TimeoutPattern, Flapping: true},
		{ID: "c", Status: engine.StatusUnknown},
	}
	typ, body := splitFrame(t, appendState(nil, in))
	if typ != frameState {
		t.Fatalf("type %d", typ)
	}
	out, err := decodeState(body, nil, 1<<16)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(in) {
		t.Fatalf("%d records, want %d", len(out), len(in))
	}
	for i := range in {
		a, b := in[i], out[i]
		if a.ID != b.ID || a.Status != b.Status || !a.LastSeen.Equal(b.LastSeen) ||
			!a.Since.Equal(b.Since) || a.Timeout != b.Timeout || a.LastSeen.IsZero() != b.LastSeen.IsZero() ||
			a.TimeoutSource != b.TimeoutSource || a.Flapping != b.Flapping {
			t.Errorf("record %d: in %+v out %+v", i, a, b)
		}
	}
}

func TestControlFrames(t *testing.T) {
	typ, body := splitFrame(t, appendHello(nil, "node-a", "node-b", []byte("proof")))
	if h, err := decodeHello(body, maxNodeName); typ != frameHello || err != nil || h.from != "node-a" ||
		h.to != "node-b" || string(h.proof) != "proof" {
		t.Fatalf("hello: %d %+v %v", typ, h, err)
	}
	typ, body = splitFrame(t, appendWelcome(nil, []byte("proof")))
	if p, err := decodeWelcome(body); typ != frameWelcome || err != nil || string(p) != "proof" {
		t.Fatalf("welcome: %d %q %v", typ, p, err)
	}
	typ, body = splitFrame(t, appendEnd(nil, 12345))
	if n, err := decodeCount(body); typ != frameEnd || err != nil || n != 12345 {
		t.Fatalf("end: %d %d %v", typ, n, err)
	}
	typ, body = splitFrame(t, appendAck(nil, 7, "boom"))
	if n, txt, err := decodeAck(body); typ != frameAck || err != nil || n != 7 || txt != "boom" {
		t.Fatalf("ack: %d %d %q %v", typ, n, txt, err)
	}
	bad := appendHello(nil, "x", "y", nil)
	bad[frameHeaderLen+len(helloMagic)] = ProtocolVersion + 1
	if _, err := decodeHello(bad[frameHeaderLen:], maxNodeName); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("other version accepted: %v", err)
	}
	for _, h := range [][]byte{
		appendHello(nil, "", "y", nil),
		appendHello(nil, "x", "", nil),
		appendHello(nil, strings.Repeat("x", maxNodeName+1), "y", nil),
		appendHello(nil, "x", "y", make([]byte, maxProofLen+1)),
	} {
		if _, err := decodeHello(h[frameHeaderLen:], maxNodeName); !errors.Is(err, ErrBadFrame) {
			t.Fatalf("hello %q accepted: %v", h, err)
		}
	}
	if n := len(appendHello(nil, strings.Repeat("x", maxNodeName), strings.Repeat("y", maxNodeName),
		make([]byte, maxProofLen))); n-4 > helloMaxLen(maxNodeName) {
		t.Fatalf("the largest hello is %d bytes, helloMaxLen %d", n-4, helloMaxLen(maxNodeName))
	}
}

func TestReadFrameLimits(t *testing.T) {
	big := appendBatch(nil, []msg{{id: "sensor-1"}})
	if _, _, _, err := readFrame(bytes.NewReader(big), nil, 4); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("too large: %v", err)
	}
	if _, _, _, err := readFrame(bytes.NewReader([]byte{0, 0, 0, 0, 1}), nil, 100); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("empty: %v", err)
	}
	if _, _, _, err := readFrame(bytes.NewReader(big[:len(big)-1]), nil, 100); err == nil {
		t.Fatal("truncated frame accepted")
	}
}

// Bytes per forwarded message for a typical batch: 512 touches of ids like
// "sensor-000123" received within a few milliseconds.
func TestBatchSize(t *testing.T) {
	msgs := make([]msg, 512)
	now := time.Now().UnixNano()
	for i := range msgs {
		msgs[i] = msg{id: "sensor-" + string(rune('a'+i%26)) + "00123", at: now + int64(i)*9731}
	}
	b := appendBatch(nil, msgs)
	per := float64(len(b)) / float64(len(msgs))
	t.Logf("%d bytes for %d messages: %.1f bytes/msg (id 13 bytes)", len(b), len(msgs), per)
	if per > 13+8 {
		t.Fatalf("%.1f bytes per message", per)
	}
}

func FuzzDecodeFrames(f *testing.F) {
	now := time.Now().UnixNano()
	f.Add(appendBatch(nil, []msg{{id: "a", at: now}, {id: "b", flags: msgOffline | msgZeroTime, timeout: time.Second}}))
	f.Add(appendState(nil, []engine.DeviceState{{ID: "a", Status: engine.StatusOnline, LastSeen: time.Now()}}))
	f.Add(appendBatch(nil, []msg{overrideMsg("a", time.Hour), overrideMsg("b", 0), removeMsg("c", time.Now())}))
	f.Add(appendState(nil, []engine.DeviceState{{ID: "a", Status: engine.StatusOffline, Timeout: time.Hour,
		TimeoutSource: engine.TimeoutDevice, Flapping: true}}))
	f.Add(appendHello(nil, "n", "m", []byte("p")))
	f.Add(appendWelcome(nil, []byte("p")))
	f.Add(appendAck(nil, 3, "x"))
	f.Add(appendEnd(nil, 3))
	f.Add([]byte{0, 0, 0, 2, frameBatch, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		var buf []byte
		for {
			typ, body, nb, err := readFrame(r, buf, 1<<16)
			if err != nil {
				return
			}
			buf = nb
			_, _ = decodeHello(body, maxNodeName)
			_, _ = decodeWelcome(body)
			_, _ = decodeCount(body)
			_, _, _ = decodeAck(body)
			if msgs, err := decodeBatch(body, nil, 1<<16); err == nil && typ == frameBatch {
				// What decodes re-encodes to a frame that decodes the same.
				_, again := splitFrame(t, appendBatch(nil, msgs))
				msgs2, err := decodeBatch(again, nil, len(msgs))
				if err != nil || len(msgs2) != len(msgs) {
					t.Fatalf("re-encode: %v, %d vs %d", err, len(msgs2), len(msgs))
				}
			}
			_, _ = decodeState(body, nil, 1<<16)
		}
	})
}

// A device control is never also a status, nor both controls at once.
func TestBatchRefusesMixedControls(t *testing.T) {
	for _, flags := range []uint8{msgOverride | msgRemove, msgRemove | msgOffline, msgOverride | msgAPI} {
		_, body := splitFrame(t, appendBatch(nil, []msg{{id: "x", flags: flags | msgZeroTime}}))
		if _, err := decodeBatch(body, nil, 16); !errors.Is(err, ErrBadFrame) {
			t.Errorf("flags %#x: %v, want ErrBadFrame", flags, err)
		}
	}
}
