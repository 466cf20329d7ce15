package engine

import (
	"encoding/binary"
	"math/bits"
	"unsafe"
)

// idByte marks the bytes allowed in a device id: printable ASCII
// (0x21..0x7E) except the MQTT topic separators and wildcards '/', '+', '#'.
var idByte = func() (t [256]bool) {
	for c := 0x21; c <= 0x7E; c++ {
		t[c] = true
	}
	t['/'], t['+'], t['#'] = false, false, false
	return t
}()

// ValidID reports whether id is a valid device id: 1..MaxIDLen bytes of
// printable ASCII without spaces, NUL, '/', '+' or '#'. The seed's integer ids
// ("123") are valid; so is any single MQTT topic segment that is not a
// wildcard.
func ValidID(id string) bool {
	if len(id) == 0 || len(id) > MaxIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if !idByte[id[i]] {
			return false
		}
	}
	return true
}

// idBuf makes the id strings of the transitions handed to the Sink without
// an allocation each: a mass expiry delivers millions. Each string points
// at bytes that never change: an id of up to 8 bytes at its record's
// idWord (set once when the device is added; records are never moved or
// reused for another device, and packID's little-endian word holds the id
// in order), a longer one into the shard's arena (bytes below its length
// never change; an arena that grows is copied and the old array left as
// it was). One string kept keeps its page of records, or the arena it
// points into, alive (see Sink). On a big-endian machine the short ids
// are cut from a buffer of idBufSize bytes instead, allocated afresh when
// full and never written again where cut.
type idBuf struct{ b []byte }

const idBufSize = 32 << 10

var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// str is the id of the record whose idWord is word.
func (x *idBuf) str(word *uint64, arena []byte) string {
	w := *word
	if w&longID != 0 {
		off, n := uint32(w), uint32(w>>32)&0xff
		return unsafe.String(&arena[off], n)
	}
	n := (bits.Len64(w) + 7) / 8
	if littleEndian {
		return unsafe.String((*byte)(unsafe.Pointer(word)), n)
	}
	if len(x.b)+8 > cap(x.b) {
		x.b = make([]byte, 0, idBufSize)
	}
	i := len(x.b)
	x.b = binary.LittleEndian.AppendUint64(x.b, w)[:i+n] // the bytes past n are the next id's
	return unsafe.String(&x.b[i], n)
}
