package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/wire"
)

// HTTP touches: POST /v1/touches, for gateways that do not speak MQTT.
// Each touch is a message heard now, as an MQTT message is: stamped with
// the receive time, validated as MQTT input is, handed to the same Handler
// (in a cluster the Router, which forwards it to the owner, with
// Config.ReadsAll too: no other node heard it) and counted in the same
// metrics (received with conn="http", dropped by reason, touches and
// batches). The request handler hands its touches over itself, in batches
// of Config.BatchSize, so its answer says what the Handler took; it does
// so only while the Ingester runs (Start to Close), the stage of the
// daemon whose Handler is ready, and Close waits for it.

// TouchRequest is the body of POST /v1/touches: one or both lists.
type TouchRequest struct {
	// IDs are devices heard from now, each keeping its timeout.
	IDs []string `json:"ids,omitempty"`
	// Touches are devices heard from now, each with an optional timeout.
	Touches []HTTPTouch `json:"touches,omitempty"`
}

// HTTPTouch is one entry of TouchRequest.Touches.
type HTTPTouch struct {
	ID string `json:"id"`
	// TimeoutSeconds, when set, is the device's timeout from this message
	// on, as a topic pattern's timeout is (1 to 604800, fractions allowed);
	// absent or 0 keeps the device's timeout.
	TimeoutSeconds float64 `json:"timeout_seconds,omitempty"`
}

// TouchResponse answers POST /v1/touches with 200. A request that ingest
// cannot take now (starting or shutting down) is answered 503 with
// Retry-After, nothing of it taken.
type TouchResponse struct {
	// Accepted is how many touches the engine (or the owners' queues)
	// took.
	Accepted int `json:"accepted"`
	// Rejected are the touches refused as invalid, in request order;
	// always present, possibly empty. Touches the engine refused beyond
	// these (a full shard) are in neither list: see
	// presence_ingest_touches_rejected_total.
	Rejected []RejectedTouch `json:"rejected"`
}

// RejectedTouch is a touch refused as invalid, and why: a drop reason,
// invalid_id or invalid_timeout. Do not send it again. An id is quoted up
// to maxEchoedID bytes.
type RejectedTouch struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
}

// maxEchoedID is how much of a rejected id an answer repeats.
const maxEchoedID = 2 * engine.MaxIDLen

// Limits of one POST /v1/touches request.
const (
	MaxHTTPTouches   = 10000   // touches a request (ids and touches together)
	MaxHTTPBodyBytes = 4 << 20 // bytes of body
)

// requestReason is why a whole request was refused, the reason label of
// presence_ingest_http_requests_rejected_total.
type requestReason uint8

const (
	requestInvalidBody requestReason = iota
	requestBodyTooLarge
	requestTooMany
	numRequestReasons
)

var requestReasonNames = [numRequestReasons]string{"invalid_body", "body_too_large", "too_many_touches"}

// TouchesHandler serves POST /v1/touches. Mount it behind the API token:
// it writes.
func (in *Ingester) TouchesHandler() http.Handler { return http.HandlerFunc(in.serveTouches) }

func (in *Ingester) serveTouches(w http.ResponseWriter, r *http.Request) {
	now := in.clock()
	req, code, why, err := decodeTouches(http.MaxBytesReader(w, r.Body, MaxHTTPBodyBytes))
	if err != nil {
		in.m.httpRejected[why].Inc()
		if ok, sup := in.requestLog.AllowAt(why, now); ok {
			in.log.Warn("ingest: HTTP touches refused", "reason", requestReasonNames[why], "error", err, "suppressed", sup)
		}
		wire.WriteError(w, code, err.Error())
		return
	}
	if err := in.enterHTTP(); err != nil {
		w.Header().Set("Retry-After", "1")
		wire.WriteError(w, http.StatusServiceUnavailable, err.Error()+": nothing taken, send again")
		return
	}
	defer in.http.Done()
	resp := TouchResponse{Rejected: []RejectedTouch{}}
	batch := make([]engine.Touch, 0, min(len(req.IDs)+len(req.Touches), in.cfg.BatchSize))
	add := func(id string, timeout time.Duration) {
		if r := in.validHTTP(id, now, timeout); r != reasonNone {
			resp.Rejected = append(resp.Rejected, RejectedTouch{ID: wire.Truncate(id, maxEchoedID), Reason: r.String()})
			return
		}
		if batch = append(batch, engine.Touch{ID: id, At: now, Timeout: timeout}); len(batch) == cap(batch) {
			resp.Accepted += in.handOver(batch)
			batch = batch[:0]
		}
	}
	for _, id := range req.IDs {
		add(id, 0)
	}
	for _, t := range req.Touches {
		add(t.ID, timeoutOf(t.TimeoutSeconds))
	}
	resp.Accepted += in.handOver(batch)
	body, _ := json.Marshal(resp) // plain strings and ints: cannot fail
	wire.WriteJSON(w, http.StatusOK, body)
}

// Submitter is a Handler that tells touches only this node received
// (HTTP touches) from those every node may have read: a cluster Router
// with Config.ReadsAll forwards them all the same. HTTP touches go to
// SubmitBatch when the Handler has it.
type Submitter interface {
	SubmitBatch(batch []engine.Touch) (rejected int)
}

// handOver gives batch to the Handler, counted as an MQTT batch is, and
// returns how many it took.
func (in *Ingester) handOver(batch []engine.Touch) int {
	if len(batch) == 0 {
		return 0
	}
	var rejected int
	if s, ok := in.h.(Submitter); ok {
		rejected = s.SubmitBatch(batch)
	} else {
		rejected = in.h.TouchBatch(batch)
	}
	in.m.batches.Inc()
	in.m.touches.Add(len(batch))
	in.m.batchLen.Update(float64(len(batch)))
	if rejected > 0 {
		in.m.rejected.Add(rejected)
	}
	return len(batch) - rejected
}

// ErrNotStarted: HTTP input before Start (the daemon is still starting).
var ErrNotStarted = errors.New("ingest: not started yet")

// enterHTTP lets an HTTP request hand input over while the Ingester runs;
// the caller calls in.http.Done when it is done. ErrNotStarted before
// Start, ErrClosed from Close on.
func (in *Ingester) enterHTTP() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	switch {
	case in.closed:
		return ErrClosed
	case !in.started:
		return ErrNotStarted
	}
	in.http.Add(1)
	return nil
}

// SetStatus applies an explicit status given through the API
// (POST /v1/devices/{id}/status) while the Ingester runs, as a status
// message is applied: with the Handler's SetStatus (the engine's, or the
// Router's, which forwards to the owner). It refuses what an MQTT message
// could not carry (an invalid or reserved id: ErrInvalidID) and, outside
// Start to Close, answers ErrNotStarted or ErrClosed.
func (in *Ingester) SetStatus(id string, s engine.Status, at time.Time, cause engine.Cause) error {
	sh, ok := in.h.(StatusHandler)
	switch {
	case !ok:
		return errors.New("ingest: the Handler takes no explicit status")
	case !engine.ValidID(id) || strings.HasPrefix(id, ProbePrefix):
		return ErrInvalidID
	}
	if err := in.enterHTTP(); err != nil {
		return err
	}
	defer in.http.Done()
	return sh.SetStatus(id, s, at, cause)
}

// WhileRunning calls fn while the Ingester runs (after Start, before
// Close, which waits for it) and returns its error, or ErrNotStarted or
// ErrClosed without calling it: the API's device controls (a device's own
// timeout, decommission) are taken when messages are, never during
// restart recovery or after the handoff.
func (in *Ingester) WhileRunning(fn func() error) error {
	if err := in.enterHTTP(); err != nil {
		return err
	}
	defer in.http.Done()
	return fn()
}

// StatusHandler is a Handler that takes explicit statuses (SetStatus):
// *engine.Engine and the cluster Router.
type StatusHandler interface {
	SetStatus(id string, s engine.Status, at time.Time, cause engine.Cause) error
}

// invalidTimeout is timeoutOf's answer for a timeout no device may have.
const invalidTimeout time.Duration = math.MinInt64

// timeoutOf converts timeout_seconds: 0 is 0 (keep the device's); a whole
// number of seconds in the engine's range is that timeout; anything else
// is invalidTimeout. Whole seconds bound the distinct timeouts clients
// can make the engine hold (it keeps at most 16,384, for good).
func timeoutOf(sec float64) time.Duration {
	if sec == 0 {
		return 0
	}
	d, ok := engine.TimeoutFromSeconds(sec)
	if !ok {
		return invalidTimeout
	}
	return d
}

// validHTTP validates one message that did not come over MQTT, counting it
// as an MQTT message is counted: received, or dropped by reason.
func (in *Ingester) validHTTP(id string, now time.Time, timeout time.Duration) reason {
	in.m.receivedHTTP.Inc()
	r := reasonNone
	switch {
	case !engine.ValidID(id) || strings.HasPrefix(id, ProbePrefix):
		r = reasonInvalidID
	case timeout == invalidTimeout:
		r = reasonInvalidTimeout
	default:
		return r
	}
	in.m.dropped[r].Inc()
	if ok, sup := in.dropLog.AllowAt(r, now); ok {
		in.log.Warn("ingest: HTTP message dropped", "reason", r.String(), "id", wire.Quote(id, 64), "suppressed", sup)
	}
	return r
}

// decodeTouches reads a TouchRequest: exactly one JSON object with only
// the documented fields (matched case-sensitively), at most MaxHTTPTouches
// touches.
func decodeTouches(body io.Reader) (TouchRequest, int, requestReason, error) {
	var req TouchRequest
	raw, err := io.ReadAll(body)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return req, http.StatusRequestEntityTooLarge, requestBodyTooLarge,
				fmt.Errorf("body too large: at most %d bytes; split the batch", tooLarge.Limit)
		}
		return req, http.StatusBadRequest, requestInvalidBody, fmt.Errorf("invalid body: reading: %v", err)
	}
	if err := checkFieldNames(raw); err != nil {
		return req, http.StatusBadRequest, requestInvalidBody, err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, http.StatusBadRequest, requestInvalidBody, fmt.Errorf(
			`invalid body: %v; want {"ids": ["id", ...]} and/or {"touches": [{"id": "id", "timeout_seconds": 60}, ...]}`, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return req, http.StatusBadRequest, requestInvalidBody, errors.New("invalid body: data after the JSON object")
	}
	if n := len(req.IDs) + len(req.Touches); n > MaxHTTPTouches {
		return req, http.StatusRequestEntityTooLarge, requestTooMany,
			fmt.Errorf("too many touches: %d, at most %d a request; split the batch", n, MaxHTTPTouches)
	}
	return req, 0, 0, nil
}

// checkFieldNames refuses object keys that encoding/json would match
// case-insensitively to a field ("IDS", "Touches"): the fields are
// matched exactly, as in every other body of the API.
func checkFieldNames(raw []byte) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	var stack []bool // per open container: true for an object
	key := false     // the next string token is an object key
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return nil // syntax errors are reported by the decoding proper
		}
		switch v := tok.(type) {
		case json.Delim:
			switch v {
			case '{':
				stack = append(stack, true)
				key = true
				continue
			case '[':
				stack = append(stack, false)
			default:
				stack = stack[:len(stack)-1]
			}
		case string:
			if key {
				switch v {
				case "ids", "touches", "id", "timeout_seconds":
				default:
					return fmt.Errorf("invalid body: unknown field %s", wire.Quote(v, 64))
				}
				key = false
				continue
			}
		}
		// After a value inside an object, the next string is a key again.
		key = len(stack) > 0 && stack[len(stack)-1]
	}
}
