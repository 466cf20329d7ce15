package engine

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
