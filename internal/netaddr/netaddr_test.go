package netaddr

import "testing"

func TestLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:8080":   true,
		"127.1.2.3:1":      true,
		"[::1]:7946":       true,
		"localhost:7946":   true,
		":8080":            false,
		"0.0.0.0:8080":     false,
		"[::]:8080":        false,
		"10.0.0.1:7946":    false,
		"example.com:7946": false,
		"127.0.0.1":        false, // no port: malformed
		"":                 false,
	} {
		if got := Loopback(addr); got != want {
			t.Errorf("Loopback(%q) = %v, want %v", addr, got, want)
		}
	}
}
