package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/wire"
)

// Controller applies the API's device controls (Config.Controller): a
// device's own timeout and decommission. The daemon's stores the timeout
// in Redis and hands both to the engine, or in a cluster to the Router,
// which forwards them to the owner.
type Controller interface {
	// SetTimeout gives device id its own timeout d (in [engine.MinTimeout,
	// engine.MaxTimeout]), or with d == 0 drops it, returning the device
	// to its pattern's timeout or the default. The device must be known
	// (engine.ErrNotFound) unless another node owns it (forwarded). When
	// it returns nil the override is stored: it survives a restart.
	SetTimeout(id string, d time.Duration) (forwarded bool, err error)
	// Decommission forgets device id (engine.Decommission): known on this
	// node (engine.ErrNotFound otherwise) or forwarded to its owner.
	Decommission(id string, at time.Time) (forwarded bool, err error)
}

// EngineController is the Controller of an engine alone, for a server
// embedded without stores: the controls are applied at once and not
// stored anywhere (the daemon's stores the timeout in Redis first).
func EngineController(e *engine.Engine) Controller { return engineController{e} }

type engineController struct{ e *engine.Engine }

func (c engineController) SetTimeout(id string, d time.Duration) (bool, error) {
	if d == 0 {
		return false, c.e.ClearTimeout(id)
	}
	return false, c.e.SetTimeout(id, d)
}

func (c engineController) Decommission(id string, at time.Time) (bool, error) {
	return false, c.e.Decommission(id, at)
}

// ErrHeld: a Controller took the control but applies it later, once this
// node has rebuilt the device's partition (a cluster member crashed):
// answered 202 with "forwarded": false.
var ErrHeld = errors.New("api: held until the device's partition is rebuilt")

// TimeoutRequest is the body of PUT /v1/devices/{id}/timeout, and one
// item of POST /v1/devices:batchSetTimeout, where a null TimeoutSeconds
// drops the override.
type TimeoutRequest struct {
	ID             string   `json:"id,omitempty"`
	TimeoutSeconds *float64 `json:"timeout_seconds"`
}

// ControlForwarded answers a device control with 202 in a cluster when
// another node owns the device: the control was sent to it, which applies
// it (and ignores it if it does not know the device by then). Forwarded
// false: this node owns the device but holds its partition's messages
// until a rebuild from Redis is done (ErrHeld), and applies it then.
type ControlForwarded struct {
	ID        string `json:"id"`
	Forwarded bool   `json:"forwarded"`
}

// Decommissioned answers DELETE /v1/devices/{id} with 200.
type Decommissioned struct {
	ID      string `json:"id"`
	Removed bool   `json:"removed"`
}

// ControlBatchResult answers the batch controls: how many were applied
// here or forwarded (Accepted counts both), and why the others were not.
type ControlBatchResult struct {
	Accepted  int             `json:"accepted"`
	Forwarded int             `json:"forwarded"`
	Rejected  []ControlReject `json:"rejected"`
}

// ControlReject is one refused item of a batch control; Reason is
// invalid_id, invalid_timeout or not_found.
type ControlReject struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
}

// Outcomes of one device control, a label of presence_api_controls_total.
const (
	ctlApplied = iota
	ctlForwarded
	ctlNotFound
	ctlInvalid
	numCtlResults
)

var ctlResultNames = [numCtlResults]string{"applied", "forwarded", "not_found", "invalid"}

// Device controls, the other label.
const (
	ctlSetTimeout = iota
	ctlClearTimeout
	ctlDecommission
	numCtls
)

var ctlNames = [numCtls]string{"set_timeout", "clear_timeout", "decommission"}

type controlMetrics [numCtls][numCtlResults]*metrics.Counter

func newControlMetrics(set *metrics.Set) *controlMetrics {
	var m controlMetrics
	for c := range numCtls {
		for r := range numCtlResults {
			m[c][r] = set.NewCounter(`presence_api_controls_total{control="` + ctlNames[c] + `",result="` + ctlResultNames[r] + `"}`)
		}
	}
	return &m
}

// mountControls mounts the device controls (Config.Controller set).
func (s *Server) mountControls() {
	s.ctl = newControlMetrics(s.m.set)
	s.HandleWrite("PUT /v1/devices/{id}/timeout", http.HandlerFunc(s.putTimeout))
	s.HandleWrite("DELETE /v1/devices/{id}/timeout", http.HandlerFunc(s.deleteTimeout))
	s.HandleWrite("POST /v1/devices:batchSetTimeout", http.HandlerFunc(s.batchSetTimeout))
	s.HandleWrite("DELETE /v1/devices/{id}", http.HandlerFunc(s.decommission))
	s.HandleWrite("POST /v1/devices:batchDecommission", http.HandlerFunc(s.batchDecommission))
}

// maxControlBody bounds the body of a single-device control.
const maxControlBody = 1 << 10

// putTimeout serves PUT /v1/devices/{id}/timeout.
func (s *Server) putTimeout(w http.ResponseWriter, r *http.Request) {
	id, ok := s.pathID(w, r)
	if !ok {
		return
	}
	body, rerr := readBody(http.MaxBytesReader(w, r.Body, maxControlBody), nil, r.ContentLength, maxControlBody)
	var d time.Duration
	if rerr == nil {
		d, rerr = decodeTimeout(body)
	}
	if rerr != nil {
		s.reject(w, r, rerr.code, rerr.why, rerr.msg)
		return
	}
	s.applyTimeout(w, r, id, d)
}

// deleteTimeout serves DELETE /v1/devices/{id}/timeout.
func (s *Server) deleteTimeout(w http.ResponseWriter, r *http.Request) {
	if id, ok := s.pathID(w, r); ok {
		s.applyTimeout(w, r, id, 0)
	}
}

func (s *Server) applyTimeout(w http.ResponseWriter, r *http.Request, id string, d time.Duration) {
	c := ctlSetTimeout
	if d == 0 {
		c = ctlClearTimeout
	}
	forwarded, err := s.cfg.Controller.SetTimeout(id, d)
	if !s.controlError(w, r, c, id, err) {
		s.controlDone(w, c, id, forwarded)
	}
}

// controlHeld answers a control taken for later (ErrHeld): 202.
func (s *Server) controlHeld(w http.ResponseWriter, c int, id string) {
	s.ctl[c][ctlForwarded].Inc()
	b, _ := json.Marshal(ControlForwarded{ID: id})
	wire.WriteJSON(w, http.StatusAccepted, append(b, '\n'))
}

// decommission serves DELETE /v1/devices/{id}.
func (s *Server) decommission(w http.ResponseWriter, r *http.Request) {
	id, ok := s.pathID(w, r)
	if !ok {
		return
	}
	forwarded, err := s.cfg.Controller.Decommission(id, time.Now())
	if !s.controlError(w, r, ctlDecommission, id, err) {
		s.controlDone(w, ctlDecommission, id, forwarded)
	}
}

// pathID reads and checks the {id} of a control's path.
func (s *Server) pathID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := r.PathValue("id")
	if !engine.ValidID(id) {
		s.reject(w, r, http.StatusBadRequest, reasonInvalidID, "invalid device id "+wire.Quote(id, 64)+invalidIDMsg)
		return "", false
	}
	return id, true
}

// controlError answers a control's error, if any, and reports whether it
// did.
func (s *Server) controlError(w http.ResponseWriter, r *http.Request, c int, id string, err error) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, ErrHeld):
		s.controlHeld(w, c, id)
	case errors.Is(err, engine.ErrNotFound):
		s.ctl[c][ctlNotFound].Inc()
		wire.WriteError(w, http.StatusNotFound, "device "+wire.Quote(id, 64)+" not found")
	case errors.Is(err, engine.ErrInvalidID):
		s.ctl[c][ctlInvalid].Inc()
		s.reject(w, r, http.StatusBadRequest, reasonInvalidID, "invalid device id "+wire.Quote(id, 64)+invalidIDMsg)
	case errors.Is(err, engine.ErrInvalidTimeout):
		s.ctl[c][ctlInvalid].Inc()
		s.reject(w, r, http.StatusBadRequest, reasonInvalidBody, "invalid body: "+timeoutRange)
	case errors.Is(err, ErrUnavailable):
		w.Header().Set("Retry-After", "1")
		wire.WriteError(w, http.StatusServiceUnavailable, err.Error())
	default:
		s.fail(w, r, err)
	}
	return true
}

// controlDone answers an applied control: the device as GET answers it
// (200), {"id","removed":true} for a decommission, or 202 when forwarded.
func (s *Server) controlDone(w http.ResponseWriter, c int, id string, forwarded bool) {
	var b []byte
	code := http.StatusOK
	switch {
	case forwarded:
		s.ctl[c][ctlForwarded].Inc()
		b, _ = json.Marshal(ControlForwarded{ID: id, Forwarded: true})
		code = http.StatusAccepted
	case c == ctlDecommission:
		s.ctl[c][ctlApplied].Inc()
		b, _ = json.Marshal(Decommissioned{ID: id, Removed: true})
	default:
		s.ctl[c][ctlApplied].Inc()
		d, err := s.store.Device(id)
		if err != nil { // decommissioned meanwhile
			b, _ = json.Marshal(ControlForwarded{ID: id})
			code = http.StatusAccepted
			break
		}
		b = appendDevice(make([]byte, 0, 224), &d)
	}
	wire.WriteJSON(w, code, append(b, '\n'))
}

// timeoutRange explains a valid timeout_seconds.
var timeoutRange = "timeout_seconds must be a whole number of seconds from " +
	strconv.Itoa(int(engine.MinTimeout.Seconds())) + " to " + strconv.Itoa(int(engine.MaxTimeout.Seconds())) + " (7 days)"

// decodeTimeout reads exactly {"timeout_seconds": N}.
func decodeTimeout(body []byte) (time.Duration, *requestError) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil || raw == nil {
		return 0, invalidBody(`want {"timeout_seconds": N}`)
	}
	for k := range raw {
		if k != "timeout_seconds" {
			return 0, invalidBody("unknown field %s; the only field is \"timeout_seconds\"", wire.Quote(k, 64))
		}
	}
	v, ok := raw["timeout_seconds"]
	if !ok {
		return 0, invalidBody(`missing field "timeout_seconds" (DELETE the timeout to drop it)`)
	}
	var sec float64
	if err := json.Unmarshal(v, &sec); err != nil {
		return 0, invalidBody("timeout_seconds %s: %s", wire.Quote(string(v), 64), timeoutRange)
	}
	d, ok := engine.TimeoutFromSeconds(sec)
	if !ok {
		return 0, invalidBody("timeout_seconds %s: %s", wire.Quote(string(v), 64), timeoutRange)
	}
	return d, nil
}

// batchControl reads a batch control's body: an object with exactly one
// field, list, an array of at most MaxBatchIDs items, each decoded by item.
func (s *Server) batchControl(w http.ResponseWriter, r *http.Request, list string, item func(json.RawMessage) *requestError) bool {
	limit := s.cfg.MaxBodyBytes
	body, rerr := readBody(http.MaxBytesReader(w, r.Body, limit), nil, r.ContentLength, limit)
	if rerr == nil {
		rerr = decodeList(body, list, s.cfg.MaxBatchIDs, item)
	}
	if rerr != nil {
		s.reject(w, r, rerr.code, rerr.why, rerr.msg)
		return false
	}
	return true
}

func decodeList(body []byte, list string, maxItems int, item func(json.RawMessage) *requestError) *requestError {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil || raw == nil {
		return invalidBody("want {%q: [...]}", list)
	}
	for k := range raw {
		if k != list {
			return invalidBody("unknown field %s; the only field is %q", wire.Quote(k, 64), list)
		}
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw[list], &items); err != nil || items == nil {
		return invalidBody("%q must be an array", list)
	}
	if len(items) > maxItems {
		return &requestError{http.StatusRequestEntityTooLarge, reasonTooManyIDs,
			fmt.Sprintf("%d items in one request, at most %d: split the batch", len(items), maxItems)}
	}
	for _, it := range items {
		if err := item(it); err != nil {
			return err
		}
	}
	return nil
}

// batchSetTimeout serves POST /v1/devices:batchSetTimeout:
// {"timeouts": [{"id": "a", "timeout_seconds": 600}, {"id": "b", "timeout_seconds": null}]}.
// A null timeout drops the device's own. A malformed body is refused whole
// (400); items with an invalid id or timeout, or an unknown device, are
// listed in rejected and the others applied.
func (s *Server) batchSetTimeout(w http.ResponseWriter, r *http.Request) {
	var reqs []TimeoutRequest
	ok := s.batchControl(w, r, "timeouts", func(raw json.RawMessage) *requestError {
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(raw, &fields); err != nil || fields == nil {
			return invalidBody(`each timeout is {"id": "...", "timeout_seconds": N or null}`)
		}
		var req TimeoutRequest
		for k, v := range fields {
			switch k {
			case "id":
				if err := json.Unmarshal(v, &req.ID); err != nil {
					return invalidBody("id %s: want a string", wire.Quote(string(v), 64))
				}
			case "timeout_seconds":
				if err := json.Unmarshal(v, &req.TimeoutSeconds); err != nil {
					return invalidBody("timeout_seconds %s: want a number or null", wire.Quote(string(v), 64))
				}
			default:
				return invalidBody("unknown field %s in a timeout; its fields are \"id\" and \"timeout_seconds\"", wire.Quote(k, 64))
			}
		}
		if _, ok := fields["timeout_seconds"]; !ok {
			return invalidBody(`a timeout without "timeout_seconds" (null drops the device's own)`)
		}
		reqs = append(reqs, req)
		return nil
	})
	if !ok {
		return
	}
	res := ControlBatchResult{Rejected: []ControlReject{}}
	for i, req := range reqs {
		c, d := ctlClearTimeout, time.Duration(0)
		if req.TimeoutSeconds != nil {
			c = ctlSetTimeout
			var valid bool
			if d, valid = engine.TimeoutFromSeconds(*req.TimeoutSeconds); !valid {
				s.ctl[c][ctlInvalid].Inc()
				res.Rejected = append(res.Rejected, ControlReject{req.ID, "invalid_timeout"})
				continue
			}
		}
		if !engine.ValidID(req.ID) {
			s.ctl[c][ctlInvalid].Inc()
			res.Rejected = append(res.Rejected, ControlReject{req.ID, "invalid_id"})
			continue
		}
		forwarded, err := s.cfg.Controller.SetTimeout(req.ID, d)
		if !s.batchOutcome(w, r, &res, c, req.ID, forwarded, err, i, len(reqs)) {
			return
		}
	}
	s.writeBatchResult(w, &res)
}

// batchDecommission serves POST /v1/devices:batchDecommission:
// {"ids": ["a", "b"]}, answered as batchSetTimeout is.
func (s *Server) batchDecommission(w http.ResponseWriter, r *http.Request) {
	var ids []string
	ok := s.batchControl(w, r, "ids", func(raw json.RawMessage) *requestError {
		var id string
		if err := json.Unmarshal(raw, &id); err != nil {
			return invalidBody("id %s: want a string", wire.Quote(string(raw), 64))
		}
		ids = append(ids, id)
		return nil
	})
	if !ok {
		return
	}
	res := ControlBatchResult{Rejected: []ControlReject{}}
	now := time.Now()
	for i, id := range ids {
		if !engine.ValidID(id) {
			s.ctl[ctlDecommission][ctlInvalid].Inc()
			res.Rejected = append(res.Rejected, ControlReject{id, "invalid_id"})
			continue
		}
		forwarded, err := s.cfg.Controller.Decommission(id, now)
		if !s.batchOutcome(w, r, &res, ctlDecommission, id, forwarded, err, i, len(ids)) {
			return
		}
	}
	s.writeBatchResult(w, &res)
}

// batchOutcome adds one item's outcome to res. An error that is not the
// item's own (the stores or the node unavailable) ends the batch with that
// error and false: the items before it were applied, those after were not.
func (s *Server) batchOutcome(w http.ResponseWriter, r *http.Request, res *ControlBatchResult, c int, id string,
	forwarded bool, err error, i, n int) bool {
	switch {
	case err == nil && forwarded:
		s.ctl[c][ctlForwarded].Inc()
		res.Accepted++
		res.Forwarded++
	case errors.Is(err, ErrHeld): // taken, applied after the rebuild
		s.ctl[c][ctlForwarded].Inc()
		res.Accepted++
	case err == nil:
		s.ctl[c][ctlApplied].Inc()
		res.Accepted++
	case errors.Is(err, engine.ErrNotFound):
		s.ctl[c][ctlNotFound].Inc()
		res.Rejected = append(res.Rejected, ControlReject{id, "not_found"})
	case errors.Is(err, engine.ErrInvalidID):
		s.ctl[c][ctlInvalid].Inc()
		res.Rejected = append(res.Rejected, ControlReject{id, "invalid_id"})
	case errors.Is(err, engine.ErrInvalidTimeout):
		s.ctl[c][ctlInvalid].Inc()
		res.Rejected = append(res.Rejected, ControlReject{id, "invalid_timeout"})
	default:
		err = fmt.Errorf("item %d of %d (the %d before it were taken, none after): %w", i+1, n, i, err)
		if errors.Is(err, ErrUnavailable) {
			w.Header().Set("Retry-After", "1")
			wire.WriteError(w, http.StatusServiceUnavailable, err.Error())
		} else {
			s.fail(w, r, err)
		}
		return false
	}
	return true
}

func (s *Server) writeBatchResult(w http.ResponseWriter, res *ControlBatchResult) {
	var b bytes.Buffer
	_ = json.NewEncoder(&b).Encode(res)
	wire.WriteJSON(w, http.StatusOK, b.Bytes())
}
