package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/presence-dev/presence/engine"
)

// Wire format of the data connection (PROTOCOL.md has the full picture).
//
//	frame   = length:u32be type:u8 body   (length counts type and body)
//	hello   = magic "presence" version:u8 nameLen:uvarint name toLen:uvarint to proofLen:uvarint proof
//	welcome = proofLen:uvarint proof
//	batch   = base:varint count:uvarint msg*
//	msg     = flags:u8 idLen:u8 id [dt:varint] [timeout:uvarint]   (a touch, a status, a device control)
//	state   = count:uvarint rec*
//	rec     = flags:u8 idLen:u8 id [lastSeen:varint] [since-lastSeen:varint] timeout:uvarint(ns)
//	end     = count:uvarint
//	ack     = count:uvarint errLen:uvarint err
//
// The proofs are the MACs of secure.go (empty without cluster keys).
//
// Times are unix nanoseconds; a batch message's time is a zig-zag delta
// from the batch's base (the first message's time), 1-4 bytes for messages
// a few milliseconds apart. A timeout travels in milliseconds when it is a
// whole number of them (2-3 bytes), else in nanoseconds.

// Frame types.
const (
	frameHello byte = 1 // first frame of every connection, client to server
	frameBatch byte = 2 // forwarded touches and offline marks
	frameState byte = 3 // handoff: device records
	frameEnd   byte = 4 // handoff: no more records; the server answers ack
	frameAck   byte = 5 // server to client: handoff applied (or why not)
	// server to client, answering the hello: the server's proof; the
	// client writes nothing more before it checked it
	frameWelcome byte = 6
	frameQuery   byte = 7 // c->s: a query (query.go)
	frameReply   byte = 8 // s->c: its answer
)

// ProtocolVersion is the data protocol spoken (hello) and advertised in the
// node metadata. A node accepts only its own version. Version 2 added the
// addressee and the proofs to the hello, and the welcome frame; version 3
// the explicit status message (msgAPI), which version 2 refuses; version 4
// the device controls (msgOverride, msgRemove) and a record's timeout
// source.
const ProtocolVersion = 4

const helloMagic = "presence"

// frameHeaderLen is the length prefix plus the type byte.
const frameHeaderLen = 5

// Message flags in a batch.
const (
	msgOffline   = 1 << 0 // MarkOffline, else a touch
	msgTimeoutMs = 1 << 1 // a timeout follows, in milliseconds
	msgTimeoutNs = 1 << 2 // a timeout follows, in nanoseconds
	msgZeroTime  = 1 << 3 // the time is the zero time.Time: no dt field
	msgHop       = 1 << 4 // already re-forwarded once: never forward again
	// msgAPI: an explicit status given through the API (engine.CauseAPI):
	// offline with msgOffline, online without.
	msgAPI = 1 << 5
	// msgOverride: the device's own timeout (engine.SetTimeout) is the
	// timeout that follows; without one, it is cleared (ClearTimeout).
	msgOverride = 1 << 6
	// msgRemove: the device is decommissioned (engine.Decommission).
	msgRemove = 1 << 7
	msgKnown  = msgOffline | msgTimeoutMs | msgTimeoutNs | msgZeroTime | msgHop | msgAPI | msgOverride | msgRemove
	// msgControl: a device control rather than a touch or a status.
	msgControl = msgOverride | msgRemove
)

// Record flags in a state frame: the low two bits are the engine.Status,
// bits 4-5 the engine.TimeoutSource (0: not said), bit 6 Flapping.
const (
	recStatusMask    = 3
	recZeroLastSeen  = 1 << 2
	recZeroSince     = 1 << 3
	recSourceShift   = 4
	recSourceMask    = 3 << recSourceShift
	recFlapping      = 1 << 6 // DeviceState.Flapping (lookups)
	recKnown         = recStatusMask | recZeroLastSeen | recZeroSince | recSourceMask | recFlapping
	maxWireIDLen     = 255 // an id length is one byte
	minMsgWireLen    = 2   // flags and id length
	minRecordWireLen = 3   // flags, id length, timeout
)

// Errors of the wire protocol. Decoding errors wrap ErrBadFrame.
var (
	ErrBadFrame      = errors.New("cluster: malformed frame")
	ErrFrameTooLarge = errors.New("cluster: frame too large")
)

// msg is one forwarded touch or offline mark.
type msg struct {
	id      string
	at      int64 // unix ns; meaningless with msgZeroTime
	timeout time.Duration
	flags   uint8
}

func touchMsg(t *engine.Touch) msg {
	m := msg{id: t.ID, timeout: t.Timeout}
	if t.At.IsZero() {
		m.flags = msgZeroTime
	} else {
		m.at = t.At.UnixNano()
	}
	return m
}

func offlineMsg(id string, at time.Time) msg {
	m := msg{id: id, flags: msgOffline}
	if at.IsZero() {
		m.flags |= msgZeroTime
	} else {
		m.at = at.UnixNano()
	}
	return m
}

// statusMsg is an explicit status given through the API.
func statusMsg(id string, s engine.Status, at time.Time) msg {
	m := offlineMsg(id, at)
	m.flags |= msgAPI
	if s == engine.StatusOnline {
		m.flags &^= msgOffline
	}
	return m
}

// overrideMsg sets device id's own timeout to d, or clears it when d is 0.
func overrideMsg(id string, d time.Duration) msg {
	return msg{id: id, timeout: d, flags: msgOverride | msgZeroTime}
}

// removeMsg decommissions device id at at.
func removeMsg(id string, at time.Time) msg {
	m := offlineMsg(id, at)
	m.flags = m.flags&msgZeroTime | msgRemove
	return m
}

// status is the status of an msgAPI message.
func (m *msg) status() engine.Status {
	if m.flags&msgOffline != 0 {
		return engine.StatusOffline
	}
	return engine.StatusOnline
}

func (m *msg) time() time.Time {
	if m.flags&msgZeroTime != 0 {
		return time.Time{}
	}
	return time.Unix(0, m.at)
}

// beginFrame appends a frame header with a placeholder length.
func beginFrame(buf []byte, typ byte) ([]byte, int) {
	start := len(buf)
	return append(buf, 0, 0, 0, 0, typ), start
}

// endFrame fills in the length of the frame that begins at start.
func endFrame(buf []byte, start int) []byte {
	binary.BigEndian.PutUint32(buf[start:], uint32(len(buf)-start-4))
	return buf
}

// maxProofLen bounds a proof in a hello or welcome (an HMAC-SHA256 is 32).
const maxProofLen = 64

// appendHello appends the hello of node from to node to, with from's proof.
func appendHello(buf []byte, from, to string, proof []byte) []byte {
	buf, start := beginFrame(buf, frameHello)
	buf = append(buf, helloMagic...)
	buf = append(buf, ProtocolVersion)
	for _, f := range []string{from, to, string(proof)} {
		buf = binary.AppendUvarint(buf, uint64(len(f)))
		buf = append(buf, f...)
	}
	return endFrame(buf, start)
}

// helloMaxLen is the largest hello frame (length field) for names of at
// most maxName bytes.
func helloMaxLen(maxName int) int {
	return 1 + len(helloMagic) + 1 + 3*binary.MaxVarintLen64 + 2*maxName + maxProofLen
}

type hello struct {
	from, to string
	proof    []byte
}

// decodeHello parses a hello body; names must be 1..maxName bytes.
func decodeHello(body []byte, maxName int) (hello, error) {
	if len(body) < len(helloMagic)+1 || string(body[:len(helloMagic)]) != helloMagic {
		return hello{}, fmt.Errorf("%w: not a presence hello", ErrBadFrame)
	}
	if v := body[len(helloMagic)]; v != ProtocolVersion {
		return hello{}, fmt.Errorf("%w: protocol version %d, want %d", ErrBadFrame, v, ProtocolVersion)
	}
	d := decoder{b: body[len(helloMagic)+1:]}
	var h hello
	h.from = d.str(d.uvarint())
	h.to = d.str(d.uvarint())
	h.proof = []byte(d.str(d.uvarint()))
	switch {
	case d.err != nil || len(d.b) != 0:
		return hello{}, fmt.Errorf("%w: hello", ErrBadFrame)
	case len(h.from) == 0 || len(h.from) > maxName || len(h.to) == 0 || len(h.to) > maxName:
		return hello{}, fmt.Errorf("%w: hello: node names must be 1..%d bytes", ErrBadFrame, maxName)
	case len(h.proof) > maxProofLen:
		return hello{}, fmt.Errorf("%w: hello: proof of %d bytes", ErrBadFrame, len(h.proof))
	}
	return h, nil
}

func appendWelcome(buf []byte, proof []byte) []byte {
	buf, start := beginFrame(buf, frameWelcome)
	buf = binary.AppendUvarint(buf, uint64(len(proof)))
	buf = append(buf, proof...)
	return endFrame(buf, start)
}

func decodeWelcome(body []byte) ([]byte, error) {
	d := decoder{b: body}
	proof := d.str(d.uvarint())
	if d.err != nil || len(d.b) != 0 || len(proof) > maxProofLen {
		return nil, fmt.Errorf("%w: welcome", ErrBadFrame)
	}
	return []byte(proof), nil
}

// appendBatch appends one batch frame holding msgs. Ids must be 1..255
// bytes (the router forwards only valid engine ids, at most 128).
func appendBatch(buf []byte, msgs []msg) []byte {
	buf, start := beginFrame(buf, frameBatch)
	var base int64
	for i := range msgs {
		if msgs[i].flags&msgZeroTime == 0 {
			base = msgs[i].at
			break
		}
	}
	buf = binary.AppendVarint(buf, base)
	buf = binary.AppendUvarint(buf, uint64(len(msgs)))
	for i := range msgs {
		m := &msgs[i]
		flags := m.flags &^ (msgTimeoutMs | msgTimeoutNs)
		if m.timeout != 0 {
			if m.timeout%time.Millisecond == 0 {
				flags |= msgTimeoutMs
			} else {
				flags |= msgTimeoutNs
			}
		}
		buf = append(buf, flags, byte(len(m.id)))
		buf = append(buf, m.id...)
		if flags&msgZeroTime == 0 {
			buf = binary.AppendVarint(buf, m.at-base)
		}
		switch {
		case flags&msgTimeoutMs != 0:
			buf = binary.AppendUvarint(buf, uint64(m.timeout/time.Millisecond))
		case flags&msgTimeoutNs != 0:
			buf = binary.AppendUvarint(buf, uint64(m.timeout))
		}
	}
	return endFrame(buf, start)
}

// decodeBatch appends the messages of a batch body, at most maxMsgs, to
// dst. The ids are substrings of one string copied from body (one
// allocation per frame): whoever keeps one beyond the frame clones it.
func decodeBatch(body []byte, dst []msg, maxMsgs int) ([]msg, error) {
	d := decoder{b: body}
	base := d.varint()
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.b)/minMsgWireLen) {
		return dst, fmt.Errorf("%w: batch header", ErrBadFrame)
	}
	if n > uint64(maxMsgs) {
		return dst, fmt.Errorf("%w: %d messages in a batch, at most %d", ErrBadFrame, n, maxMsgs)
	}
	d.s = string(d.b)
	d.off = len(body) - len(d.b)
	d.base = len(body)
	for range n {
		var m msg
		m.flags = d.byte()
		if m.flags&^msgKnown != 0 || m.flags&(msgTimeoutMs|msgTimeoutNs) == msgTimeoutMs|msgTimeoutNs ||
			m.flags&msgControl != 0 && (m.flags&msgControl == msgControl || m.flags&(msgOffline|msgAPI) != 0) {
			return dst, fmt.Errorf("%w: message flags %#x", ErrBadFrame, m.flags)
		}
		m.id = d.str(uint64(d.byte()))
		if m.flags&msgZeroTime == 0 {
			var ok bool
			if m.at, ok = addInt64(base, d.varint()); !ok {
				return dst, fmt.Errorf("%w: message time overflows", ErrBadFrame)
			}
		}
		switch {
		case m.flags&msgTimeoutMs != 0:
			ms := d.uvarint()
			if ms > 1<<43 { // keeps ms*1e6 within int64
				return dst, fmt.Errorf("%w: timeout", ErrBadFrame)
			}
			m.timeout = time.Duration(ms) * time.Millisecond
		case m.flags&msgTimeoutNs != 0:
			ns := d.uvarint()
			if ns > 1<<62 {
				return dst, fmt.Errorf("%w: timeout", ErrBadFrame)
			}
			m.timeout = time.Duration(ns)
		}
		m.flags &^= msgTimeoutMs | msgTimeoutNs
		if d.err != nil {
			return dst, fmt.Errorf("%w: message", ErrBadFrame)
		}
		dst = append(dst, m)
	}
	if len(d.b) != 0 {
		return dst, fmt.Errorf("%w: %d trailing bytes", ErrBadFrame, len(d.b))
	}
	return dst, nil
}

// appendState appends one state frame holding recs (handoff).
func appendState(buf []byte, recs []engine.DeviceState) []byte {
	buf, start := beginFrame(buf, frameState)
	buf = binary.AppendUvarint(buf, uint64(len(recs)))
	for i := range recs {
		r := &recs[i]
		flags := byte(r.Status)&recStatusMask | byte(r.TimeoutSource)<<recSourceShift&recSourceMask
		if r.Flapping {
			flags |= recFlapping
		}
		if r.LastSeen.IsZero() {
			flags |= recZeroLastSeen
		}
		if r.Since.IsZero() {
			flags |= recZeroSince
		}
		buf = append(buf, flags, byte(len(r.ID)))
		buf = append(buf, r.ID...)
		var last int64
		if flags&recZeroLastSeen == 0 {
			last = r.LastSeen.UnixNano()
			buf = binary.AppendVarint(buf, last)
		}
		if flags&recZeroSince == 0 {
			buf = binary.AppendVarint(buf, r.Since.UnixNano()-last)
		}
		buf = binary.AppendUvarint(buf, uint64(max(r.Timeout, 0)))
	}
	return endFrame(buf, start)
}

// decodeState appends the records of a state body, at most maxRecs, to dst.
// The ids are substrings of one copy of body, as in decodeBatch.
func decodeState(body []byte, dst []engine.DeviceState, maxRecs int) ([]engine.DeviceState, error) {
	d := decoder{b: body}
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.b)/minRecordWireLen) {
		return dst, fmt.Errorf("%w: state header", ErrBadFrame)
	}
	if n > uint64(maxRecs) {
		return dst, fmt.Errorf("%w: %d records in a state frame, at most %d", ErrBadFrame, n, maxRecs)
	}
	d.s = string(d.b)
	d.off = len(body) - len(d.b)
	d.base = len(body)
	for range n {
		flags := d.byte()
		if flags&^recKnown != 0 || engine.Status(flags&recStatusMask) > engine.StatusOffline {
			return dst, fmt.Errorf("%w: record flags %#x", ErrBadFrame, flags)
		}
		r := engine.DeviceState{Status: engine.Status(flags & recStatusMask),
			TimeoutSource: engine.TimeoutSource(flags & recSourceMask >> recSourceShift), Flapping: flags&recFlapping != 0}
		r.ID = d.str(uint64(d.byte()))
		var last int64
		if flags&recZeroLastSeen == 0 {
			last = d.varint()
			r.LastSeen = time.Unix(0, last)
		}
		if flags&recZeroSince == 0 {
			since, ok := addInt64(last, d.varint())
			if !ok {
				return dst, fmt.Errorf("%w: record time overflows", ErrBadFrame)
			}
			r.Since = time.Unix(0, since)
		}
		tmo := d.uvarint()
		if tmo > 1<<62 {
			return dst, fmt.Errorf("%w: timeout", ErrBadFrame)
		}
		r.Timeout = time.Duration(tmo)
		if d.err != nil {
			return dst, fmt.Errorf("%w: record", ErrBadFrame)
		}
		dst = append(dst, r)
	}
	if len(d.b) != 0 {
		return dst, fmt.Errorf("%w: %d trailing bytes", ErrBadFrame, len(d.b))
	}
	return dst, nil
}

// addInt64 returns a+b and false if that overflows.
func addInt64(a, b int64) (int64, bool) {
	s := a + b
	return s, (b >= 0) == (s >= a)
}

func appendEnd(buf []byte, count int) []byte {
	buf, start := beginFrame(buf, frameEnd)
	buf = binary.AppendUvarint(buf, uint64(count))
	return endFrame(buf, start)
}

func decodeCount(body []byte) (int, error) {
	d := decoder{b: body}
	n := d.uvarint()
	if d.err != nil || len(d.b) != 0 || n > 1<<40 {
		return 0, fmt.Errorf("%w: count", ErrBadFrame)
	}
	return int(n), nil
}

// appendAck answers a handoff: how many records were received and the
// error of applying them ("" when none).
func appendAck(buf []byte, count int, errText string) []byte {
	buf, start := beginFrame(buf, frameAck)
	buf = binary.AppendUvarint(buf, uint64(count))
	if len(errText) > 1024 {
		errText = errText[:1024]
	}
	buf = binary.AppendUvarint(buf, uint64(len(errText)))
	buf = append(buf, errText...)
	return endFrame(buf, start)
}

func decodeAck(body []byte) (count int, errText string, err error) {
	d := decoder{b: body}
	n := d.uvarint()
	errText = d.str(d.uvarint())
	if d.err != nil || len(d.b) != 0 || n > 1<<40 {
		return 0, "", fmt.Errorf("%w: ack", ErrBadFrame)
	}
	return int(n), errText, nil
}

// readFrame reads one frame into buf (grown as needed) and returns its type
// and body, which alias buf. A length over maxSize is ErrFrameTooLarge; the
// connection must then be dropped.
func readFrame(r io.Reader, buf []byte, maxSize int) (typ byte, body, newBuf []byte, err error) {
	var hdr [frameHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, buf, err
	}
	n := int(binary.BigEndian.Uint32(hdr[:4]))
	if n < 1 {
		return 0, nil, buf, fmt.Errorf("%w: empty frame", ErrBadFrame)
	}
	if n > maxSize {
		return 0, nil, buf, fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, n, maxSize)
	}
	if cap(buf) < n-1 {
		buf = make([]byte, n-1)
	}
	body = buf[:n-1]
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, buf, err
	}
	return hdr[4], body, buf, nil
}

// decoder reads fields off b; the first failure sticks in err and every
// later read returns zero values. With s set (a copy of the bytes from
// offset off on), str returns substrings of s instead of allocating.
type decoder struct {
	b    []byte
	err  error
	s    string
	off  int // offset in the body where s begins
	base int // length of the whole body
}

var errShort = errors.New("short")

func (d *decoder) fail() { d.err, d.b = errShort, nil }

func (d *decoder) byte() byte {
	if d.err != nil || len(d.b) < 1 {
		d.fail()
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) str(n uint64) string {
	if d.err != nil || n > uint64(len(d.b)) {
		d.fail()
		return ""
	}
	var s string
	if d.s != "" {
		at := d.base - len(d.b) - d.off // position of d.b[0] in s
		s = d.s[at : at+int(n)]
	} else {
		s = string(d.b[:n])
	}
	d.b = d.b[n:]
	return s
}
