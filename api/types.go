package api

import "github.com/presence-dev/presence/engine"

// TimeLayout is the format of every time the API returns: UTC, microseconds,
// explicit offset, e.g. "2025-12-14T10:30:45.123456+00:00". It is the Redis
// contract's device:lastseen format, which Python's datetime.fromisoformat
// reads back. (Applied to a UTC time, the layout's "-07:00" prints "+00:00".)
const TimeLayout = "2006-01-02T15:04:05.000000-07:00"

// The types below document the JSON the API returns; Go clients may decode
// into them. The server encodes by hand (no reflection on the hot path);
// tests check both agree.

// Device is one device's state (GET /v1/devices/{id}, and each entry of
// BatchGetResponse.Devices).
type Device struct {
	ID string `json:"id"`
	// Status is "online" or "offline".
	Status string `json:"status"`
	// LastSeen is the time of the device's newest message (TimeLayout).
	LastSeen string `json:"last_seen"`
	// Since is when the current status began (TimeLayout): the first
	// message of this online period, or, for an offline device, its deadline
	// (last_seen + timeout) or the time of its Last Will.
	Since string `json:"since"`
	// TimeoutSeconds is how long the device may stay silent before it is
	// offline.
	TimeoutSeconds float64 `json:"timeout_seconds"`
	// TimeoutSource is where the timeout comes from: "default" (the
	// daemon's -timeout), "pattern" (the timeout of the topic pattern its
	// messages match) or "device" (its own, PUT /v1/devices/{id}/timeout).
	TimeoutSource string `json:"timeout_source,omitempty"`
	// Flapping is true while the device flaps: it changed status more than
	// the detector's -flapping-changes times within -flapping-window and
	// has not been stable for that window since. Absent otherwise.
	Flapping bool `json:"flapping,omitempty"`
}

// BatchGetRequest is the body of POST /v1/devices:batchGet.
type BatchGetRequest struct {
	IDs []string `json:"ids"`
}

// BatchGetResponse answers POST /v1/devices:batchGet. Every distinct id of
// the request lands in exactly one list, in request order; a repeated id is
// answered once. The three lists are always present, possibly empty.
type BatchGetResponse struct {
	// Devices are the known devices.
	Devices []Device `json:"devices"`
	// Missing are valid ids this node has never seen.
	Missing []string `json:"missing"`
	// Invalid are ids that can never name a device (see engine.ValidID);
	// they do not fail the batch.
	Invalid []string `json:"invalid"`
	// Unavailable, in a cluster, are ids whose owner did not answer in
	// time (absent when every owner answered); Partial names those owners.
	Unavailable []string `json:"unavailable,omitempty"`
	Partial
}

// Stats answers GET /v1/stats.
type Stats struct {
	Total   int `json:"total"`
	Online  int `json:"online"`
	Offline int `json:"offline"`
	// Nodes, in a cluster, is each answering node's share, by name; the
	// totals are their sums. Absent on a single node and with scope=local.
	Nodes []NodeCounts `json:"nodes,omitempty"`
	Partial
	// Engine holds this node's engine counters when the Store provides
	// them (StatsStore); absent otherwise.
	Engine *EngineStats `json:"engine,omitempty"`
}

// EngineStats are engine.Stats: counters since the engine started, except
// Queued, Resyncing and WheelEntries, which are current sizes.
type EngineStats struct {
	Touches            uint64 `json:"touches"`
	Rejected           uint64 `json:"rejected"`
	Stale              uint64 `json:"stale"`
	OnlineTransitions  uint64 `json:"online_transitions"`
	OfflineTransitions uint64 `json:"offline_transitions"`
	Delivered          uint64 `json:"delivered"`
	Queued             int    `json:"queued"`
	Coalesced          uint64 `json:"coalesced"`
	Collapsed          uint64 `json:"collapsed"`
	Resyncing          int    `json:"resyncing"`
	WheelEntries       int    `json:"wheel_entries"`
}

func engineStats(s engine.Stats) *EngineStats {
	return &EngineStats{
		Touches:            s.Touches,
		Rejected:           s.Rejected,
		Stale:              s.Stale,
		OnlineTransitions:  s.OnlineTransitions,
		OfflineTransitions: s.OfflineTransitions,
		Delivered:          s.Delivered,
		Queued:             s.Queued,
		Coalesced:          s.Coalesced,
		Collapsed:          s.Collapsed,
		Resyncing:          s.Resyncing,
		WheelEntries:       s.WheelEntries,
	}
}

// Error is the body of every error response.
type Error struct {
	Error string `json:"error"`
}

// Readiness answers GET /readyz: {"status":"ready"} with 200, or with 503
// Status "not ready", the failing checks and an Error like every error
// answer's.
type Readiness struct {
	// Status is "ready" or "not ready".
	Status string `json:"status"`
	// Reasons name the failing checks (NotReadyError.Check, or
	// "unspecified"): short fixed names, such as "recovery" or "ingest".
	Reasons []string `json:"reasons,omitempty"`
	// Error is "not ready: " and the reasons or, for a request with the API
	// token (Config.Token), why: the readiness error itself.
	Error string `json:"error,omitempty"`
}
