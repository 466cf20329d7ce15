package loadgen

import (
	"math"
	"time"
)

// Kind says what a device does in one of its slots.
type Kind uint8

const (
	// KindTelemetry: publish a telemetry message.
	KindTelemetry Kind = iota
	// KindSilent: the device is silent and publishes nothing.
	KindSilent
	// KindGoOffline: the first slot the device is silent in; it publishes
	// nothing but an "offline" status when announcing.
	KindGoOffline
	// KindReturn: the first slot after the silent window; the device publishes
	// telemetry, preceded by an "online" status when announcing.
	KindReturn
)

func (k Kind) String() string {
	switch k {
	case KindTelemetry:
		return "telemetry"
	case KindSilent:
		return "silent"
	case KindGoOffline:
		return "go-offline"
	case KindReturn:
		return "return"
	}
	return "invalid"
}

// Schedule is the clock-free plan of a run: which device publishes in which
// slot, when the slot is due, and what the device does in it. Slot k (counted
// from 0 at the start) is due at k/rate and belongs to device k mod devices;
// k / devices is that device's sequence number. Device i is served by
// connection i mod conns.
type Schedule struct {
	devices, conns uint64
	nsPerSlot      float64
	silent         uint64 // number of silencers
	silentAfter    time.Duration
	silentEnd      time.Duration // end of the silent window; MaxInt64 if they never return
}

// NewSchedule derives the schedule of a valid Config.
func NewSchedule(cfg Config) Schedule {
	end := time.Duration(math.MaxInt64)
	if cfg.ReturnAfter > 0 {
		end = cfg.SilentAfter + cfg.ReturnAfter
	}
	return Schedule{
		devices:     uint64(cfg.Devices),
		conns:       uint64(cfg.Conns),
		nsPerSlot:   float64(time.Second) / cfg.Rate,
		silent:      uint64(cfg.SilentDevices()),
		silentAfter: cfg.SilentAfter,
		silentEnd:   end,
	}
}

// At is when slot k is due, measured from the start of the run.
func (s *Schedule) At(k uint64) time.Duration {
	return time.Duration(float64(k) * s.nsPerSlot)
}

// Device is the index (0-based) of the device slot k belongs to.
func (s *Schedule) Device(k uint64) uint64 { return k % s.devices }

// Seq is the sequence number of slot k for its device: 0 for its first slot.
func (s *Schedule) Seq(k uint64) uint64 { return k / s.devices }

// Conn is the connection that serves device d.
func (s *Schedule) Conn(d uint64) int { return int(d % s.conns) }

// connDevices is how many devices connection c serves.
func (s *Schedule) connDevices(c uint64) uint64 {
	n := s.devices / s.conns
	if c < s.devices%s.conns {
		n++
	}
	return n
}

// Silencer reports whether device d belongs to the silent fraction. The
// silencers are spread evenly over the connections and, within a connection,
// over the phases of the period: devices are laid out connection by
// connection in phase order and every (devices/silent)-th position is picked,
// which selects exactly round(fraction*devices) of them.
func (s *Schedule) Silencer(d uint64) bool {
	if s.silent == 0 {
		return false
	}
	c, r := d%s.conns, d/s.conns
	q, m := s.devices/s.conns, s.devices%s.conns
	j := c*q + min(c, m) + r // position in connection-major order
	return (j+1)*s.silent/s.devices > j*s.silent/s.devices
}

// SilentAt is how many devices are inside the silent window at t. Each
// silencer actually stops at its first slot at or after the window start, so
// this is exact to within one period.
func (s *Schedule) SilentAt(t time.Duration) int {
	if s.silent == 0 || t < s.silentAfter || t >= s.silentEnd {
		return 0
	}
	return int(s.silent)
}

// Kind is what the device of slot k does in it.
func (s *Schedule) Kind(k uint64) Kind {
	if !s.Silencer(s.Device(k)) {
		return KindTelemetry
	}
	t := s.At(k)
	if t < s.silentAfter {
		return KindTelemetry
	}
	hasPrev := k >= s.devices
	var prev time.Duration
	if hasPrev {
		prev = s.At(k - s.devices)
	}
	if t < s.silentEnd {
		if hasPrev && prev < s.silentAfter {
			return KindGoOffline
		}
		return KindSilent
	}
	if hasPrev && prev >= s.silentAfter && prev < s.silentEnd {
		return KindReturn
	}
	return KindTelemetry
}

// Cursor walks the slots of one connection in due order.
type Cursor struct {
	s    *Schedule
	conn uint64
	n    uint64 // devices of this connection
	q    uint64 // position in this connection's sequence
	k    uint64 // current slot
}

// Cursor returns a cursor at the first slot of connection c.
func (s *Schedule) Cursor(c int) *Cursor {
	cur := &Cursor{s: s, conn: uint64(c), n: s.connDevices(uint64(c))}
	cur.k = cur.slot()
	return cur
}

// Slot is the current slot; its due time is Schedule.At(Slot()).
func (c *Cursor) Slot() uint64 { return c.k }

// Next moves to the connection's next slot.
func (c *Cursor) Next() {
	c.q++
	c.k = c.slot()
}

// slot maps position q to the global slot: cycle q/n, device conn+(q%n)*conns.
func (c *Cursor) slot() uint64 {
	return (c.q/c.n)*c.s.devices + c.conn + (c.q%c.n)*c.s.conns
}
