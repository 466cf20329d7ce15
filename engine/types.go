package engine

import (
	"errors"
	"time"
)

// Errors returned by the engine. Callers compare with errors.Is.
var (
	// ErrInvalidID: the id is empty, longer than MaxIDLen, or holds a byte
	// that is not printable ASCII or is one of '/', '+', '#'. Such an id is
	// never stored.
	ErrInvalidID = errors.New("engine: invalid device id")
	// ErrNotFound: the device has never been seen by this engine.
	ErrNotFound = errors.New("engine: device not found")
	// ErrInvalidTimeout: a per-device timeout outside [MinTimeout, MaxTimeout].
	ErrInvalidTimeout = errors.New("engine: timeout out of range")
	// ErrInvalidStatus: SetStatus with a status other than online or
	// offline.
	ErrInvalidStatus = errors.New("engine: status must be online or offline")
	// ErrFull: a shard holds MaxDevicesPerShard devices; raise Config.Shards.
	ErrFull = errors.New("engine: shard full")
	// ErrTooManyTrackers: more than MaxTrackers dirty trackers were requested.
	ErrTooManyTrackers = errors.New("engine: too many dirty trackers")
)

// Limits of the engine.
const (
	MaxIDLen   = 128
	MinTimeout = time.Second
	MaxTimeout = 7 * 24 * time.Hour
	// MaxTrackers is how many independent dirty trackers (write-behind sinks)
	// one engine serves: the daemon has two (Redis, PostgreSQL). Each takes
	// three bits of a device's record (listed, last-seen changed, new: see
	// DeviceState.StatusOnly and New), which has one byte for them.
	MaxTrackers = 2
	// MaxDevicesPerShard bounds one shard: its index packs a slot number in
	// 24 bits. With the default 256 shards that is over 4 billion devices.
	MaxDevicesPerShard = 1<<24 - 1
)

// Status is a device's presence status.
type Status uint8

const (
	// StatusUnknown: never seen (the zero value; a device is never stored so).
	StatusUnknown Status = iota
	StatusOnline
	StatusOffline
)

func (s Status) String() string {
	switch s {
	case StatusOnline:
		return "online"
	case StatusOffline:
		return "offline"
	default:
		return "unknown"
	}
}

// ParseStatus is the inverse of Status.String for what the stores hold:
// "online" and "offline"; anything else is StatusUnknown.
func ParseStatus(s string) Status {
	switch s {
	case "online":
		return StatusOnline
	case "offline":
		return StatusOffline
	}
	return StatusUnknown
}

// Cause says why a transition happened.
type Cause uint8

const (
	// CauseTelemetry: a message from the device (or an explicit "online").
	CauseTelemetry Cause = iota + 1
	// CauseTimeout: no message for the device's timeout.
	CauseTimeout
	// CauseLastWill: an explicit "offline" status message (the MQTT Last Will).
	CauseLastWill
	// CauseRestart: restart recovery found the deadline passed while down.
	CauseRestart
	// CauseHandoff: a cluster node took the device over and found its
	// deadline passed.
	CauseHandoff
	// CauseAPI: an explicit status given through the API
	// (POST /v1/devices/{id}/status).
	CauseAPI
)

func (c Cause) String() string {
	switch c {
	case CauseTelemetry:
		return "telemetry"
	case CauseTimeout:
		return "timeout"
	case CauseLastWill:
		return "last_will"
	case CauseRestart:
		return "restart"
	case CauseHandoff:
		return "handoff"
	case CauseAPI:
		return "api"
	default:
		return "unknown"
	}
}

// Transition is one status change of one device.
type Transition struct {
	ID   string
	From Status // StatusUnknown for the first message of a new device
	// To is StatusUnknown when the device was decommissioned (Decommission,
	// cause api): the engine forgot it, and From is what it was.
	To Status
	// At is when the change became true: the message time for an online
	// transition, the deadline (last seen + timeout) for a timeout, the status
	// message time for a Last Will.
	At time.Time
	// PrevSince is when the From status began, so that At - PrevSince is
	// how long it lasted (the flapping detector's measure). Zero when not
	// known: a new device, a coalesced catch-up, and a timeout (whose
	// online period lasted at least the device's timeout).
	PrevSince time.Time
	Cause     Cause
	// Coalesced is set when the consumer fell behind and this transition
	// stands for one or more changes that were folded together (see Sink).
	Coalesced bool
}

// Sink receives transitions. The consumer implements it; the engine calls it
// from one goroutine at a time (the one running Deliver), in order for each
// device, with batches of at most Config.BatchSize. The slice is reused after
// the call returns: copy what you keep. The IDs are not allocated one by
// one: each points into the engine's own memory (a device's record or its
// shard's id arena, neither ever written again), so keeping one keeps that
// memory alive; a sink that keeps ids after the engine is gone should keep
// strings.Clone(t.ID).
//
// A slow sink never blocks touches. Transitions wait in a bounded per-shard
// queue (Config.QueueCapacity in all); a transition that finds its queue full,
// and every later one of the same device until the consumer catches up, is
// coalesced: the engine remembers only that the device's reported status is
// stale (one bit and one small map entry per device). When the sink catches
// up it receives one transition from the status it was last told to the
// current one, with Coalesced set, the latest cause and time; intermediate
// flaps are counted in Stats.Collapsed, never silently dropped. Memory stays
// bounded by the device count whatever the transition rate.
type Sink interface {
	HandleTransitions(batch []Transition)
}

// SinkFunc adapts a function to Sink.
type SinkFunc func(batch []Transition)

// HandleTransitions calls f(batch).
func (f SinkFunc) HandleTransitions(batch []Transition) { f(batch) }

// DeviceState is a device's state as the engine knows it.
type DeviceState struct {
	ID       string
	Status   Status // StatusUnknown when the device is not known
	LastSeen time.Time
	// Since is when the current status began (for an offline device: the
	// deadline or the Last Will time).
	Since   time.Time
	Timeout time.Duration
	// TimeoutSource says where Timeout comes from. The engine always sets
	// it; given to Restore or Adopt, zero means TimeoutPattern for a
	// non-zero Timeout and TimeoutDefault otherwise.
	TimeoutSource TimeoutSource
	// Flapping is not the engine's to say (it leaves it false): the
	// daemon sets it, from the events hub's flapping detector, for the API
	// and the cluster's lookups.
	Flapping bool
	// Removed: the device was decommissioned (Decommission). Only a
	// Tracker's Drain returns such a state, with only ID set, so that a
	// write-behind sink deletes what it stores of the device.
	Removed bool
	// StatusOnly is set by a Tracker's Drain when only the status (and
	// Since) changed since the Tracker last listed the device: LastSeen is
	// the one its sink wrote then, so an offline transition rewrites one
	// value (a timeout, a Last Will, an operator's offline). False
	// otherwise, and always after MarkDirty: write everything.
	StatusOnly bool
	// New is set by a Tracker's Drain when the device is new to this
	// engine since the Tracker last listed it: its first message, its
	// return after a decommission or a handover, a device adopted from
	// another owner (Adopt), and after MarkDirty. A sink that keeps an
	// index of the devices it stores (the Redis sink's device index) adds
	// it with the same write.
	New bool
}

// TimeoutSource is where a device's timeout comes from.
type TimeoutSource uint8

const (
	// TimeoutDefault: Config.DefaultTimeout.
	TimeoutDefault TimeoutSource = iota + 1
	// TimeoutPattern: the Timeout of a Touch (ingest's per-topic timeouts).
	TimeoutPattern
	// TimeoutDevice: the device's own override (SetTimeout), which a
	// Touch's Timeout does not change.
	TimeoutDevice
)

func (s TimeoutSource) String() string {
	switch s {
	case TimeoutDefault:
		return "default"
	case TimeoutPattern:
		return "pattern"
	case TimeoutDevice:
		return "device"
	}
	return "unknown"
}

// Touch is one activity report, the unit of TouchBatch.
type Touch struct {
	ID string
	At time.Time
	// Timeout, when non-zero, sets the device's timeout (TimeoutPattern);
	// ingest uses it for per-topic timeouts. Zero keeps the current one. A
	// device with its own timeout (SetTimeout) keeps that one and returns
	// to this one on ClearTimeout.
	Timeout time.Duration
}

// Counts are fleet totals.
type Counts struct {
	Total, Online, Offline int
}
