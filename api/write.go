package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/wire"
)

// Writer applies the API's explicit statuses (Config.Writer). The daemon
// passes its ingest stage, which hands them to the engine, or in a cluster
// to the Router, which forwards to the owner.
type Writer interface {
	// SetStatus applies status s of device id given at at with cause
	// engine.CauseAPI, as a status message is applied: offline needs a
	// known device (engine.ErrNotFound), online makes one known.
	// forwarded reports that it was sent to the device's owner, another
	// node. An error wrapping ErrUnavailable means writes cannot be taken
	// now (starting, shutting down): answered 503 with Retry-After.
	SetStatus(id string, s engine.Status, at time.Time, cause engine.Cause) (forwarded bool, err error)
}

// ErrUnavailable: a Writer cannot take writes now.
var ErrUnavailable = errors.New("api: writes unavailable")

// StatusRequest is the body of POST /v1/devices/{id}/status.
type StatusRequest struct {
	// Status is "online" or "offline".
	Status string `json:"status"`
}

// StatusForwarded answers POST /v1/devices/{id}/status with 202 in a
// cluster when another node owns the device: the status was sent to it.
type StatusForwarded struct {
	ID        string `json:"id"`
	Status    string `json:"status"`
	Forwarded bool   `json:"forwarded"`
}

// setStatus serves POST /v1/devices/{id}/status: 200 with the device as
// GET answers it, 202 when forwarded to the owner, 404 for an offline of
// a device never seen.
func (s *Server) setStatus(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	id := r.PathValue("id")
	if !engine.ValidID(id) {
		s.reject(w, r, http.StatusBadRequest, reasonInvalidID, "invalid device id "+wire.Quote(id, 64)+invalidIDMsg)
		return
	}
	body, rerr := readBody(http.MaxBytesReader(w, r.Body, 1<<10), nil, r.ContentLength, 1<<10)
	var req StatusRequest
	if rerr == nil {
		rerr = decodeStatus(body, &req)
	}
	if rerr != nil {
		s.reject(w, r, rerr.code, rerr.why, rerr.msg)
		return
	}
	st := engine.ParseStatus(req.Status)
	forwarded, err := s.cfg.Writer.SetStatus(id, st, now, engine.CauseAPI)
	switch {
	case errors.Is(err, engine.ErrNotFound):
		wire.WriteError(w, http.StatusNotFound, "device "+wire.Quote(id, 64)+" not found: only a known device can be set offline")
		return
	case errors.Is(err, engine.ErrInvalidID):
		s.reject(w, r, http.StatusBadRequest, reasonInvalidID, "invalid device id "+wire.Quote(id, 64)+invalidIDMsg)
		return
	case errors.Is(err, ErrUnavailable):
		w.Header().Set("Retry-After", "1")
		wire.WriteError(w, http.StatusServiceUnavailable, err.Error())
		return
	case err != nil:
		s.fail(w, r, err)
		return
	}
	d, err := s.store.Device(id)
	if forwarded || err != nil { // the owner applies it
		b, _ := json.Marshal(StatusForwarded{ID: id, Status: st.String(), Forwarded: forwarded})
		wire.WriteJSON(w, http.StatusAccepted, append(b, '\n'))
		return
	}
	b := appendDevice(make([]byte, 0, 192), &d)
	wire.WriteJSON(w, http.StatusOK, append(b, '\n'))
}

// decodeStatus reads exactly {"status": "online"|"offline"}.
func decodeStatus(body []byte, req *StatusRequest) *requestError {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil || raw == nil {
		return invalidBody(`want {"status": "online"} or {"status": "offline"}`)
	}
	for k := range raw {
		if k != "status" {
			return invalidBody("unknown field %s; the only field is \"status\"", wire.Quote(k, 64))
		}
	}
	v, ok := raw["status"]
	if !ok {
		return invalidBody(`missing field "status"`)
	}
	if err := json.Unmarshal(v, &req.Status); err != nil || engine.ParseStatus(req.Status) == engine.StatusUnknown {
		return invalidBody(`status %s: want "online" or "offline"`, wire.Quote(string(v), 64))
	}
	return nil
}
