// Package netaddr holds small checks on network addresses shared by the
// components that listen.
package netaddr

import "net"

// Loopback reports whether addr, host:port, names this machine only:
// localhost or a loopback IP (127.0.0.0/8, ::1). A wildcard or empty host,
// another host name or a malformed address is not loopback.
func Loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
